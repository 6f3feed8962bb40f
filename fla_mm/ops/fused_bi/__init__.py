"""Fused bidirectional decayed linear attention (simple_gla, RetNet, GLA): both scans in one kernel.

Computes, for q, k [B, T, H, K], v [B, T, H, V] and log decays gf, gb [B, T, H] (<= 0)::

    o_t = scale * sum_{s <= t} exp(sum_{r=s+1..t} gf_r) (q_t . k_s) v_s      (forward scan)
        + scale * sum_{s >= t} exp(sum_{r=t..s-1} gb_r) (q_t . k_s) v_s      (backward scan)

which is exactly what the two-call path computes (``simple_gla`` on [x, flip(x)] batched,
then ``merge``: the backward scan runs over the flipped sequence with decay gb), so the
diagonal s = t is counted once in each direction, as in ViG and fla_mm's ``merge``.

The files:

- ``naive.py``: that formula token by token in PyTorch (:func:`naive_bi_decay_attn`), the
  specification the kernels are tested against.
- ``common.py``: Triton helpers both kernel families share (tiles in sweep order, the chunk's
  cumulative decays of either scan, the state update).
- ``scalar.py``: the kernels for a scalar decay per head (simple_gla, RetNet).
- ``gla.py``: the kernels for a decay per key channel (GLA).
- ``chunked.py``: the chunk-parallel form of both families (``FusedBiConfig.form='chunked'``):
  per-chunk parts and states in parallel over (chunk, batch*head), both directions of a
  chunk in one program (a scalar decay's outputs and gradients summed there), a short pass
  over the chunk states (groups of chunks as parallel scans), then the states' contribution
  in parallel.
- ``launch.py``: block sizes, launch options, segments per sweep, and the forward and
  backward passes that launch the kernels (with fake twins: same allocations, no kernels).
- ``op.py``: the passes as custom ops ``fla_mm::fused_bi_fwd`` / ``fla_mm::fused_bi_bwd``
  (fake and autograd registrations, so ``torch.compile`` traces through them without a graph
  break and Inductor never compiles the kernels itself), and :func:`fused_bi_decay_attn`.
- ``config.py``: :class:`FusedBiConfig`, the kernel variant (segment counts, warps, stages)
  passed in by the caller; every variant computes the same function.

With ``qb`` / ``kb`` the backward scan has its own queries and keys (RetNet's rotary positions
count along each scanned sequence, so the two directions' q, k differ); they reach the op as
one [2, B, T, H, K] pair each, which the chunked kernels read through a direction stride
and the sweep cannot (its programs need both directions' q and k): such a call runs the
chunked form at every shape.

Which form runs is the config's ``form``: by default ('auto') the chunked form, for both decay
kinds, at up to 96 (batch x head) sequences of 1024 tokens or more, where the sweep has too
few programs to fill the GPU (every stage of FLAPyramid-T at batch 2 and 8 but the last at
512², and at batch 8 the last at 1024²), and the sweep elsewhere
(:meth:`FusedBiConfig.runs_chunked`).

The sweep form: one program per (batch*head, direction) sweeps the chunks of its direction with the [K, V]
state in registers: q, k, v and g are read once per direction, no state is stored, no flip is
materialised (the reversed program loads its chunks in reversed token order). The backward
kernel has the same shape: the program that sweeps left to right carries the forward
state (for dq of the forward scan) and the adjoint state of the backward scan (for its dk, dv),
the other program the mirror image, so each gradient piece is written once. The two
directions' pieces are summed afterwards (plain adds, deterministic). The gate gradient
comes from the identity dG_t = q_t . dq_t - k_t . dk_t per direction and a cumsum. For GLA
the two states of a backward program are split over two programs (dq; dk and dv), which keeps
the kernel inside the register file.

Per-key-channel decay (GLA): a 64-token chunk whose channels all decay by less than
exp(-GLA_SAFE) computes its scores on tensor cores as (q e^C)(k e^-C)^T, masked (e^-C <=
e^GLA_SAFE cannot overflow fp32/bf16); any other chunk goes in exact 16-token steps whose
scores are a [16, 16, K] tensor. The branch is per chunk, inside the kernel.

Segments (:class:`FusedBiConfig`): with scalar decay, from ``long_tokens`` (4096) each sweep
is cut into ``long_segments`` runs of chunks, one program each, after a small kernel has
summed every segment's local state (per key channel for GLA): more programs for the GPU at
the cost of one extra pass over k, v (and q, do). It is exact (GPU-tested at 6 segments,
uneven on purpose) and faster at those lengths. GLA's forward is cut the same way
(``gla_fwd_segments``); its split backward, which already has twice the programs, is fastest
with one segment at every length (timings: docs/benchmarks.md). ``segments`` forces the count.

Precision: 16-bit inputs take their dots on tensor cores with fp32 accumulation; where an
operand is fp32 (the states, and in the backward everything behind dq and dk) the dot is
TF32. The backward keeps its states' operands in fp32 for the gate gradient
(``common._state_step``).

Block sizes are fixed (no autotuning), so the first call compiles two kernels and nothing else.
The kernels also run under ``TRITON_INTERPRET=1`` on CPU tensors, which is how CI checks them.
"""
from .config import DEFAULT_CONFIG, FusedBiConfig
from .launch import CHUNK, GLA_SAFE, GLA_STEP
from .op import fused_bi_decay_attn
from .naive import naive_bi_decay_attn

__all__ = ['CHUNK', 'DEFAULT_CONFIG', 'GLA_SAFE', 'GLA_STEP', 'FusedBiConfig',
           'fused_bi_decay_attn', 'naive_bi_decay_attn']
