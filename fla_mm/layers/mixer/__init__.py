"""Token mixers: scan -> FLA op -> merge, one registered class per family.

Each family is a :class:`TokenMixer` subclass in the module of its group (``decay``: GLA,
simple GLA, RetNet; ``linear_attn``; ``attention``: softmax, BitNet; ``delta``: DeltaNet,
Gated DeltaNet; ``hgrn``: HGRN, HGRN2; ``rwkv``: RWKV6, RWKV7; ``slots``: GSA, ABC; ``vig``:
ViG's GLA). Its parameters are named and shaped as the corresponding ``fla.layers`` module,
so a mixer built with that module's options has its state_dict keys and shapes, and with
``scan='uni'`` computes the same function, up to what the class's ``note`` says. What holds
for every family:

- Projections and per-token gates are computed once per token in raster order, then q/k/v and
  gates are scanned to [D*B, L, ...] so that ONE op call handles all directions, and the op
  outputs are merged (summed over directions) before the output norm / gate / o_proj.
- Short convolutions (``use_short_conv``) and rotary embeddings act on the scanned sequences,
  so each direction sees its own causal neighbourhood and positions.
- Decays are computed in fp32 and stay fp32 under autocast.
- No KV cache, attention mask or cu_seqlens: images are dense.

Adding a family: its op in :mod:`fla_mm.ops` (kernel entry + CPU reference), and one class
here with ``@register_mixer``; :data:`FAMILIES` and every config then know it.
"""
from . import attention, decay, delta, hgrn, linear_attn, rwkv, slots, vig  # noqa: F401  (register)
from .base import FAMILIES, MIXERS, TokenMixer, check_family, heads, register_mixer

__all__ = ['FAMILIES', 'MIXERS', 'TokenMixer', 'check_family', 'heads', 'register_mixer']
