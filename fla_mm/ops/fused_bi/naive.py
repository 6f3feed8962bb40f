"""The fused kernels' function written as its definition: both scans token by token in plain
PyTorch, differentiable by autograd. The specification the kernels are tested against, under
the interpreter on CPU and on a GPU; a Python loop over tokens, so only for short sequences."""
import torch


def _scan(q, k, v, g, order, scale):
    """One scan direction: a [K, V] state per batch and head visits the tokens in ``order``;
    at each token it first decays by exp(g_t) (one factor per head, or one per key channel),
    then takes k_t v_t^T, and q_t reads it, own token included and undecayed."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    out = [None] * T
    for t in order:
        decay = g[:, t].exp()
        S = (decay[..., None] if g.dim() == 4 else decay[..., None, None]) * S
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        out[t] = scale * torch.einsum('bhk,bhkv->bhv', q[:, t], S)
    return torch.stack(out, 1)


def naive_bi_decay_attn(q, k, v, gf, gb=None, scale=None, stacked=False, qb=None, kb=None):
    """What :func:`fused_bi_decay_attn` computes, with the same arguments::

        o_t = scale * sum_{s <= t} exp(gf_{s+1} + ... + gf_t) (q_t . k_s) v_s    (forward)
            + scale * sum_{s >= t} exp(gb_t + ... + gb_{s-1}) (q_t . k_s) v_s    (backward)

    The forward scan visits t = 0 .. T-1 and decays by gf, the backward scan visits
    t = T-1 .. 0 and decays by gb; the diagonal s = t is in both sums, undecayed. Log decays
    [B, T, H] (one per head) or [B, T, H, K] (per key channel), ``gb=None`` meaning ``gf``;
    ``stacked=True``: ``gf`` is [B, T, 2, H(, K)], forward first. ``qb`` / ``kb``: the
    backward scan's own q / k (None: q / k). Computed in fp32 (fp64 when q is fp64), returned
    in q's dtype.
    """
    if stacked:
        gf, gb = gf[:, :, 0], gf[:, :, 1]
    gb = gf if gb is None else gb
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = q.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    qb, kb = q if qb is None else qb, k if kb is None else kb
    q, k, v, gf, gb, qb, kb = (x.to(work) for x in (q, k, v, gf, gb, qb, kb))
    T = q.shape[1]
    o = _scan(q, k, v, gf, range(T), scale) + _scan(qb, kb, v, gb, range(T - 1, -1, -1), scale)
    return o.to(dtype)
