"""Family ops: FLA kernel on CUDA, chunked reference elsewhere."""
import functools
import math

import torch
import torch.nn.functional as F

from .reference import chunk_decay_attn_ref


@functools.lru_cache(None)
def fla_available():
    """FLA's kernels need a CUDA device and an importable fla + triton."""
    if not torch.cuda.is_available():
        return False
    try:
        import fla.ops  # noqa: F401
    except Exception:  # pragma: no cover - depends on the machine
        return False
    return True


def _use_kernel(x):
    return x.is_cuda and fla_available()


def gla(q, k, v, g, scale=None):
    """Gated linear attention, per-key-channel log decay ``g`` [B, T, H, K]."""
    if _use_kernel(q):
        from fla.ops.gla import chunk_gla
        return chunk_gla(q, k, v, g, scale=scale)[0]
    return chunk_decay_attn_ref(q, k, v, g, scale)


def simple_gla(q, k, v, g, scale=None):
    """Scalar-decay linear attention (Mamba2/SSD form), log decay ``g`` [B, T, H]."""
    if _use_kernel(q):
        from fla.ops.simple_gla import chunk_simple_gla
        return chunk_simple_gla(q, k, v, g, scale=scale)[0]
    return chunk_decay_attn_ref(q, k, v, g, scale)


def retnet_decay(num_heads, device=None):
    """RetNet's fixed per-head log decay log(1 - 2^(-5 - h))."""
    h = torch.arange(num_heads, dtype=torch.float32, device=device)
    return torch.log1p(-torch.pow(2.0, -5.0 - h))


def retnet(q, k, v, scale=None):
    """Retention: simple_gla with a fixed per-head decay."""
    B, T, H, _ = q.shape
    if _use_kernel(q):
        from fla.ops.retention import chunk_retention
        return chunk_retention(q, k, v, scale=scale)[0]
    g = retnet_decay(H, q.device).expand(B, T, H)
    return chunk_decay_attn_ref(q, k, v, g, scale)


def linear_attn(q, k, v, scale=None):
    """Linear attention without decay or normaliser."""
    if _use_kernel(q):
        from fla.ops.linear_attn import chunk_linear_attn
        return chunk_linear_attn(q, k, v, scale=scale, normalize=False)[0]
    return chunk_decay_attn_ref(q, k, v, None, scale)


def softmax_attn(q, k, v, scale=None):
    """Full (non-causal) softmax attention through SDPA: the baseline family."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       scale=scale)
    return o.transpose(1, 2)


OPS = dict(gla=gla, simple_gla=simple_gla, retnet=retnet, linear_attn=linear_attn,
           transformer=softmax_attn)
