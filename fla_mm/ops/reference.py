"""Pure-PyTorch chunked references for the CPU path.

They compute the same causal recurrences as FLA's Triton kernels, chunk by chunk, so that
16k-token sequences stay tractable on a CPU. Layout everywhere: [B, T, H, D].
"""
import torch


def chunk_decay_attn_ref(q, k, v, g=None, scale=None, chunk_size=16):
    """o_t = sum_{s<=t} (q_t * exp(G_t - G_s)) . k_s  v_s with G the cumsum of the log decay g.

    ``g`` is a natural-log decay (<= 0) of shape [B, T, H, K] (per key channel, GLA),
    [B, T, H] (scalar per head, simple_gla / RetNet), or None (plain linear attention).
    Inside a chunk the decay is applied as exp(G_t - G_s) with s <= t, never as a product
    of exp(G_t) and exp(-G_s), so nothing overflows however strong the decay; across
    chunks a [K, V] state is carried. Computed in fp32, returned in the input dtype.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    scale = K ** -0.5 if scale is None else scale
    dtype = q.dtype
    if g is None:
        g = q.new_zeros(B, T, H, 1)
    elif g.dim() == 3:
        g = g.unsqueeze(-1)
    pad = (-T) % C
    n = (T + pad) // C

    def chunks(x):  # [B, T, H, D] -> [B, H, n, C, D] in fp32, zero-padded at the end
        x = torch.nn.functional.pad(x.float(), (0, 0, 0, 0, 0, pad))
        return x.reshape(B, n, C, H, -1).permute(0, 3, 1, 2, 4)

    q, k, v, g = chunks(q) * scale, chunks(k), chunks(v), chunks(g)
    b = g.cumsum(3)                                            # [B, H, n, C, K or 1]
    mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    diff = (b.unsqueeze(4) - b.unsqueeze(3)).masked_fill(~mask[:, :, None], float('-inf'))
    if b.shape[-1] == 1:                                       # scalar decay: one matmul
        attn = (q @ k.transpose(-1, -2)) * diff.squeeze(-1).exp()
    else:
        attn = torch.einsum('bhnik,bhnjk,bhnijk->bhnij', q, k, diff.exp())
    o = attn @ v
    last = b[:, :, :, -1:]                                     # [B, H, n, 1, K or 1]
    update = ((last - b).exp() * k).transpose(-1, -2) @ v      # [B, H, n, K, V]
    decay = last.transpose(-1, -2).exp()                       # [B, H, n, K or 1, 1]
    state, states = q.new_zeros(B, H, K, V), []
    for i in range(n):
        states.append(state)
        state = state * decay[:, :, i] + update[:, :, i]
    o = o + (q * b.exp()) @ torch.stack(states, 2)
    o = o.permute(0, 2, 3, 1, 4).reshape(B, n * C, H, V)[:, :T]
    return o.to(dtype)


def naive_recurrent_decay_attn(q, k, v, g=None, scale=None):
    """Token-by-token form of :func:`chunk_decay_attn_ref`, used only to test it."""
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    state = q.new_zeros(B, H, K, v.shape[-1], dtype=torch.float32)
    outs = []
    for t in range(T):
        if g is not None:
            decay = g[:, t].float().exp()
            state = state * (decay[..., None] if g.dim() == 4 else decay[..., None, None])
        state = state + k[:, t].float()[..., None] * v[:, t].float()[..., None, :]
        outs.append((q[:, t].float()[..., None] * scale * state).sum(-2))
    return torch.stack(outs, 1).to(q.dtype)
