"""The token-mixing ops: one function per mixer family, one layout ([B, T, H, D]), two backends.

Each op takes what a mixer has after its projections, feature maps and gate activations and
runs only the recurrence. On CUDA tensors it runs a Triton kernel (FLA's ``chunk_*``, or
fla_mm's own where FLA has none that fits); on CPU, or with ``FLA_MM_BACKEND=reference``, the
chunked PyTorch reference of :mod:`.reference`, which has the same math. Nothing outside this
package knows which ran: layers call ``ops.<family>`` and never look at the device.

The files:

- ``families.py``: the public ops (:data:`OPS` maps a mixer family to its op), backend choice,
  errors that name the family and the kernel that failed, and the fallbacks where FLA 0.6.0
  cannot train a case.
- ``fla_calls.py``: FLA's kernel calls by name, run directly in eager and, under
  ``torch.compile``, through one opaque custom op (``fla_mm::fla_forward``, with a backward
  that recomputes the call), so that a block traces without the graph breaks of FLA's
  compiler-disabled ops.
- ``reference.py``: the chunked references (a Python loop over chunks, batched matmuls inside)
  and token-by-token forms they are tested against.
- ``fused_bi/``: fla_mm's own kernel, both scans of the decay families (GLA, simple GLA,
  RetNet) in one call (:func:`bi_decay_attn`), beside ``naive.py``, its token-by-token
  specification; the variant is chosen by a :class:`~.fused_bi.FusedBiConfig` passed in.
- ``fla_configs.py``: FLA's autotuned kernel configs, measured per GPU model and shipped.
- ``rotary.py``: rotary position embedding, which the mixers apply and the fused bi-scan's
  kernels apply to their tiles.

Rules of this room: a family's op is one function here plus its reference; a kernel of
fla_mm's own lives in a package of its own beside a ``naive.py`` with the same math, is
chosen by an explicit config argument (never by module globals patched from outside), and
must pass the same exactness tests against the reference on CPU (Triton interpreter) and GPU.
Nothing here imports mmcv, mmseg or mmdet, or any other part of fla_mm.
"""
from .families import (BACKENDS, BI_FUSED_FAMILIES, BI_KERNELS, OPS, KernelError, abc, backend,
                       bi_decay_attn, delta_rule, fla_available, gated_delta_rule, gla, gsa,
                       hgrn, l2norm, linear_attn, retnet, retnet_decay, rwkv6, rwkv7,
                       simple_gla, softmax_attn, triton_bwd_broken, triton_bwd_broken_for)
from .rotary import ROTARY_BASE, rotary, rotary_table

__all__ = ['BACKENDS', 'BI_FUSED_FAMILIES', 'BI_KERNELS', 'OPS', 'KernelError', 'abc', 'backend',
           'bi_decay_attn', 'delta_rule', 'fla_available', 'gated_delta_rule', 'gla', 'gsa',
           'hgrn', 'l2norm', 'linear_attn', 'retnet', 'retnet_decay', 'rotary', 'ROTARY_BASE',
           'rotary_table', 'rwkv6', 'rwkv7', 'simple_gla', 'softmax_attn', 'triton_bwd_broken',
           'triton_bwd_broken_for']
