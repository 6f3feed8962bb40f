"""Rotary position embedding, non-interleaved (``fla.modules.RotaryEmbedding``): the one
definition that the mixers apply in PyTorch and that the fused bi-scan's kernels apply to
their tiles (from the same table of cos and sin, so by the same factors)."""
import torch

ROTARY_BASE = 10000.0     # FLA's default (RetNet's)


def rotary_inv_freq(dim, base=ROTARY_BASE, device=None):
    """The inverse frequencies base^(-2i / dim), i < dim / 2, fp32 [dim / 2]."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))


def rotary_table(length, dim, base=ROTARY_BASE, device=None):
    """cos and sin of the rotary angles at positions 0..length-1, fp32 [2, length, dim / 2]:
    what :func:`rotary` multiplies by, and what the fused bi-scan's kernels read. Elementwise
    products (no matmul-like op that autocast would run in 16 bits), so fp32 under AMP too."""
    positions = torch.arange(length, device=device, dtype=torch.float32)
    f = positions[:, None] * rotary_inv_freq(dim, base, device)[None, :]
    return torch.stack([f.cos(), f.sin()])


def rotary(x, base=ROTARY_BASE, reverse=False):
    """Rotary embedding at positions 0..L-1 along x's dim 1 ([B, L, H, D]); ``reverse``: at
    L-1..0, the positions of the reversed sequence (a backward scan's own, without flipping
    x: equal to flip(rotary(flip(x)))). Computed in fp32, returned in x's dtype."""
    table = rotary_table(x.shape[1], x.shape[-1], base, x.device)
    return _rotated(x, table.flip(1) if reverse else table)


def _rotated(x, table):
    """x [B, L, H, D] rotated by ``table`` [2, L, D / 2] (cos, sin of each row's angles)."""
    cos, sin = table[0, :, None], table[1, :, None]                # [L, 1, D/2]
    x1, x2 = x.float().chunk(2, -1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


def rotated_pairs(q, k, qb, kb, base):
    """Both scan directions' rotated q, k: (q, k) at positions 0..L-1 and (qb, kb) at the
    reversed sequence's, from one table; for a bi-scan asked to rotate (``rotary_base``). A
    caller that also hands its own qb / kb asks for two things at once, an error."""
    if qb is not None or kb is not None:
        raise ValueError('bi-scan: pass either rotary_base or the backward scan\'s own qb / kb, '
                         'not both')
    table = rotary_table(q.shape[1], q.shape[-1], base, q.device)
    back = table.flip(1)
    return _rotated(q, table), _rotated(k, table), _rotated(q, back), _rotated(k, back)
