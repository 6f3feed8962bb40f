"""Pure-PyTorch chunked references for the CPU path, plus token-by-token forms to test them.

They compute the same causal recurrences as FLA's Triton kernels, chunk by chunk: everything
inside a chunk is batched matmuls, only the [K, V] state is carried by a Python loop over
chunks, so that 16k-token sequences stay tractable on a CPU. Layout everywhere: [B, T, H, D].
Decays are natural-log (<= 0) and are always applied as exp(G_t - G_s) with s <= t, never as
exp(G_t) * exp(-G_s), so nothing overflows however strong the decay. Computed in fp32 (or
fp64 when given fp64), returned in the input dtype.
"""
import torch
import torch.nn.functional as F


def _work_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _chunker(T, C, dtype):
    """[B, T, H, D] -> [B, H, n, C, D], zero-padded at the end, and its inverse."""
    pad = (-T) % C
    n = (T + pad) // C

    def split(x):
        B, _, H = x.shape[:3]
        x = F.pad(x.to(dtype), (0, 0, 0, 0, 0, pad))
        return x.reshape(B, n, C, H, -1).permute(0, 3, 1, 2, 4)

    def join(x):
        B, H = x.shape[:2]
        return x.permute(0, 2, 3, 1, 4).reshape(B, n * C, H, -1)[:, :T]

    return split, join, n


def _pairwise_decay(bi, bj, strict=False):
    """exp(bi_t - bj_s) masked to s <= t (s < t if strict): [..., C, C, D]."""
    C = bi.shape[-2]
    mask = torch.ones(C, C, dtype=torch.bool, device=bi.device).tril(-1 if strict else 0)
    diff = (bi.unsqueeze(-2) - bj.unsqueeze(-3)).masked_fill(~mask[:, :, None], float('-inf'))
    return diff.exp()


def chunk_linear_ref(q, k, v, gk=None, gv=None, scale=None, bonus=None, chunk_size=16):
    """o_t = sum_{s<=t} (q_t * exp(Gk_t - Gk_s)) . k_s  (v_s * exp(Gv_t - Gv_s)).

    ``gk`` decays the key side: [B, T, H, K] (GLA), [B, T, H] (simple_gla / RetNet) or None.
    ``gv`` [B, T, H, V] decays the value side (the slot pass of GSA / ABC); at most one of
    them is given. ``bonus`` [H, K] switches to RWKV6's form: the sum runs over s < t with
    the query decayed only to t - 1, and the current token enters as (q_t * u . k_t) v_t.
    """
    assert gk is None or gv is None
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    scale = K ** -0.5 if scale is None else scale
    dtype, wd = q.dtype, _work_dtype(q)
    split, join, n = _chunker(T, C, wd)
    q, k, v = split(q) * scale, split(k), split(v)
    if gk is not None and gk.dim() == 3:
        gk = gk.unsqueeze(-1)
    bk = split(gk).cumsum(3) if gk is not None else None          # [B, H, n, C, K or 1]
    bv = split(gv).cumsum(3) if gv is not None else None          # [B, H, n, C, V]
    rwkv = bonus is not None
    bq = bk - split(gk) if rwkv else bk                           # exclusive for RWKV6

    if bk is None:
        attn = (q @ k.transpose(-1, -2)).masked_fill(
            ~torch.ones(C, C, dtype=torch.bool, device=q.device).tril(-1 if rwkv else 0), 0)
        o = attn @ v if bv is None else torch.einsum(
            'bhnij,bhnijv,bhnjv->bhniv', attn, _pairwise_decay(bv, bv), v)
    elif bk.shape[-1] == 1:
        attn = (q @ k.transpose(-1, -2)) * _pairwise_decay(bq, bk, rwkv).squeeze(-1)
        o = attn @ v
    else:
        attn = torch.einsum('bhnik,bhnjk,bhnijk->bhnij', q, k, _pairwise_decay(bq, bk, rwkv))
        o = attn @ v
    if rwkv:
        o = o + (q * bonus.to(wd)[None, :, None, None] * k).sum(-1, keepdim=True) * v

    zero = q.new_zeros(1, 1, n, 1, 1)
    last_k = bk[:, :, :, -1:] if bk is not None else zero          # [B, H, n, 1, K or 1]
    last_v = bv[:, :, :, -1:] if bv is not None else zero          # [B, H, n, 1, V]
    kk = k * (last_k - bk).exp() if bk is not None else k
    vv = v * (last_v - bv).exp() if bv is not None else v
    update = kk.transpose(-1, -2) @ vv                               # [B, H, n, K, V]
    decay = (last_k.transpose(-1, -2) + last_v).exp()                # [B, H, n, K|1, V|1]
    state, states = q.new_zeros(B, H, K, V), []
    for i in range(n):
        states.append(state)
        state = state * decay[:, :, i] + update[:, :, i]
    qd = q * bq.exp() if bk is not None else q
    inter = qd @ torch.stack(states, 2)
    if bv is not None:
        inter = inter * bv.exp()
    return join(o + inter).to(dtype)


def chunk_decay_attn_ref(q, k, v, g=None, scale=None, chunk_size=16):
    """Key-side decay form of :func:`chunk_linear_ref` (GLA, simple_gla, RetNet, linear)."""
    return chunk_linear_ref(q, k, v, gk=g, scale=scale, chunk_size=chunk_size)


def chunk_delta_rule_ref(q, k, v, beta, g=None, scale=None, chunk_size=32):
    """(Gated) delta rule, S_t = exp(g_t) (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T, o_t = S_t^T q_t.

    UT transform per chunk: writing S_t = exp(g_t) S_{t-1} + k_t u_t^T, the pseudo-values
    solve (I + A) U = diag(b) (V - diag(exp G) K S_0) with A_ts = b_t exp(G_t - G_s) k_t.k_s
    for s < t, i.e. U = U0 - W S_0 with U0 = T diag(b) V, W = T diag(b exp G) K and
    T = (I + A)^-1 (one batched unit-triangular solve for all chunks). The loop over chunks
    only does U = U0 - W S, O += (exp G Q) S + P U, S = exp G_C S + (exp(G_C - G) K)^T U.
    ``g`` [B, T, H] is the scalar log decay (None: plain delta rule), ``beta`` [B, T, H].
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    scale = K ** -0.5 if scale is None else scale
    dtype, wd = q.dtype, _work_dtype(q)
    split, join, n = _chunker(T, C, wd)
    q, k, v = split(q) * scale, split(k), split(v)
    beta = split(beta.unsqueeze(-1))                                # [B, H, n, C, 1]
    b = split(g.unsqueeze(-1)).cumsum(3) if g is not None else torch.zeros_like(beta)
    causal = _pairwise_decay(b, b).squeeze(-1)                      # exp(G_t - G_s), s <= t
    eye = torch.eye(C, dtype=wd, device=q.device)
    A = (beta * (k @ k.transpose(-1, -2)) * causal).tril(-1)
    u0 = torch.linalg.solve_triangular(eye + A, beta * v, upper=False, unitriangular=True)
    w = torch.linalg.solve_triangular(eye + A, beta * b.exp() * k, upper=False,
                                      unitriangular=True)
    P = (q @ k.transpose(-1, -2)) * causal
    qg = q * b.exp()
    last = b[:, :, :, -1:]                                          # [B, H, n, 1, 1]
    kd = k * (last - b).exp()
    state, outs = q.new_zeros(B, H, K, V), []
    for i in range(n):
        u = u0[:, :, i] - w[:, :, i] @ state
        outs.append(qg[:, :, i] @ state + P[:, :, i] @ u)
        state = state * last[:, :, i].exp() + kd[:, :, i].transpose(-1, -2) @ u
    return join(torch.stack(outs, 2)).to(dtype)


def chunk_dplr_ref(q, k, v, a, b, gk, scale=1.0, chunk_size=16):
    """Diagonal-plus-low-rank recurrence (RWKV7, FLA's ``dplr`` convention), [K, V] state:

    S_t = diag(exp(gk_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T,   o_t = S_t^T (scale q_t).

    Per chunk, with G the inclusive and Gx the exclusive cumsum of gk, the rank-1 reads
    z_t = a_t^T S_{t-1} solve (I - A_ab) Z = (a exp Gx) S_0 + A_ak V, where
    A_xy[t, s] = sum_c x_tc y_sc exp(Gx_t - G_s)_c for s < t. Then
    O = (q exp G) S_0 + A_qb Z + A_qk V (s <= t, exponent G_t - G_s) and
    S_C = exp(G_C) S_0 + (b exp(G_C - G))^T Z + (k exp(G_C - G))^T V.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    dtype, wd = q.dtype, _work_dtype(q)
    split, join, n = _chunker(T, C, wd)
    q, k, v, a, b, g = split(q) * scale, split(k), split(v), split(a), split(b), split(gk)
    G = g.cumsum(3)
    Gx = G - g
    strict = _pairwise_decay(Gx, G, strict=True)                    # [B, H, n, C, C, K]
    incl = _pairwise_decay(G, G)
    A_ab = torch.einsum('bhnik,bhnjk,bhnijk->bhnij', a, b, strict)
    A_ak = torch.einsum('bhnik,bhnjk,bhnijk->bhnij', a, k, strict)
    A_qb = torch.einsum('bhnik,bhnjk,bhnijk->bhnij', q, b, incl)
    A_qk = torch.einsum('bhnik,bhnjk,bhnijk->bhnij', q, k, incl)
    eye = torch.eye(C, dtype=wd, device=q.device)
    Tinv_rhs_v = torch.linalg.solve_triangular(eye - A_ab, A_ak @ v, upper=False,
                                               unitriangular=True)
    Tinv_ag = torch.linalg.solve_triangular(eye - A_ab, a * Gx.exp(), upper=False,
                                            unitriangular=True)
    qg = q * G.exp()
    last = G[:, :, :, -1:]
    bd, kd = b * (last - G).exp(), k * (last - G).exp()
    decay = last.transpose(-1, -2).exp()                             # [B, H, n, K, 1]
    intra = A_qk @ v
    state, outs = q.new_zeros(B, H, K, V), []
    for i in range(n):
        z = Tinv_ag[:, :, i] @ state + Tinv_rhs_v[:, :, i]
        outs.append(qg[:, :, i] @ state + A_qb[:, :, i] @ z + intra[:, :, i])
        state = (state * decay[:, :, i] + bd[:, :, i].transpose(-1, -2) @ z
                 + kd[:, :, i].transpose(-1, -2) @ v[:, :, i])
    return join(torch.stack(outs, 2)).to(dtype)


def chunk_hgrn_ref(x, g, chunk_size=16):
    """Element-wise linear recurrence h_t = exp(g_t) h_{t-1} + x_t (HGRN), x, g [B, T, D]."""
    B, T, D = x.shape
    C = chunk_size
    dtype, wd = x.dtype, _work_dtype(x)
    split, join, n = _chunker(T, C, wd)
    xs, gs = split(x.unsqueeze(2)), split(g.unsqueeze(2))            # [B, 1, n, C, D]
    G = gs.cumsum(3)
    h = torch.einsum('bhnijd,bhnjd->bhnid', _pairwise_decay(G, G), xs)
    state, outs = x.new_zeros(B, 1, 1, D, dtype=wd), []
    for i in range(n):
        outs.append(h[:, :, i] + G[:, :, i].exp() * state)
        state = outs[-1][:, :, -1:]
    return join(torch.stack(outs, 2)).squeeze(2).to(dtype)


def chunk_slot_attn_ref(q, k, v, s, g, scale=None, chunk_size=16):
    """GSA / ABC: two linear-attention passes through M slots sharing the slot decay ``g``.

    ok = sum_s (q_t . k_s) exp(G_t - G_s) * s_s   (decay on the slot side)
    o  = sum_s (softmax(ok_t) * exp(G_t - G_s)) . s_s  v_s   (decay on the key side, scale 1)
    """
    ok = chunk_linear_ref(q, k, s, gv=g, scale=scale, chunk_size=chunk_size)
    qv = ok.float().softmax(-1).to(_work_dtype(q))
    return chunk_linear_ref(qv, s, v, gk=g, scale=1.0, chunk_size=chunk_size).to(q.dtype)


def abc_slots(s):
    """ABC's slot write strengths and decays from slot logits: a running softmax over time."""
    z = s.float().logcumsumexp(1)
    g = torch.cat([z[:, :1], z[:, :-1]], 1) - z
    return torch.exp(s.float() - z), g


# ---- token-by-token forms, used only by the tests -------------------------------------------

def naive_recurrent_decay_attn(q, k, v, g=None, scale=None):
    """Token-by-token form of :func:`chunk_decay_attn_ref`."""
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    wd = _work_dtype(q)
    state = q.new_zeros(B, H, K, v.shape[-1], dtype=wd)
    outs = []
    for t in range(T):
        if g is not None:
            decay = g[:, t].to(wd).exp()
            state = state * (decay[..., None] if g.dim() == 4 else decay[..., None, None])
        state = state + k[:, t].to(wd)[..., None] * v[:, t].to(wd)[..., None, :]
        outs.append((q[:, t].to(wd)[..., None] * scale * state).sum(-2))
    return torch.stack(outs, 1).to(q.dtype)


def naive_recurrent_dplr(q, k, v, a, b, gk, scale=1.0):
    """Token-by-token form of :func:`chunk_dplr_ref` (RWKV7 with a = -kk, b = kk * a)."""
    B, T, H, K = q.shape
    wd = _work_dtype(q)
    q, k, v, a, b, gk = (x.to(wd) for x in (q, k, v, a, b, gk))
    S = q.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        z = (a[:, t, :, :, None] * S).sum(-2, keepdim=True)           # a_t^T S_{t-1}
        S = S * gk[:, t].exp()[..., None] + b[:, t, :, :, None] * z \
            + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append((q[:, t, :, :, None] * scale * S).sum(-2))
    return torch.stack(outs, 1)


def naive_recurrent_hgrn(x, g):
    h, outs = torch.zeros_like(x[:, 0]), []
    for t in range(x.shape[1]):
        h = g[:, t].exp() * h + x[:, t]
        outs.append(h)
    return torch.stack(outs, 1)


def naive_recurrent_rwkv6(r, k, v, w, u, scale=1.0):
    """S_t = diag(exp w_t) S_{t-1} + k_t v_t^T,  o_t = r_t^T (S_{t-1} + diag(u) k_t v_t^T)."""
    B, T, H, K = r.shape
    wd = _work_dtype(r)
    r, k, v, w, u = (x.to(wd) for x in (r, k, v, w, u))
    S = r.new_zeros(B, H, K, v.shape[-1])
    outs = []
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append((r[:, t, :, :, None] * scale * (S + u[..., None] * kv)).sum(-2))
        S = S * w[:, t].exp()[..., None] + kv
    return torch.stack(outs, 1)
