"""Chunk-parallel kernels for both decay families, a scalar log decay per head and token
(simple_gla, RetNet) and one per key channel (GLA): the ``form='chunked'`` variant of
:class:`~.config.FusedBiConfig`.

The sweep kernels (``scalar.py``, ``gla.py``) give one program a whole direction's run of
chunks, so a pass has (batch x head) x 2 x segments programs, few at a backbone's shapes
(6 (batch x head) pairs at FLAPyramid-T's stride-4 stage with mmseg's batch of 2). Here every
pass is three launches, the first and last parallel over (chunk, batch x head):

1. :func:`_chunk_state_kernel`: each chunk's local state of each direction, its keys decayed
   to the chunk's end in that direction's sweep (sum_s exp(E_s) k_s v_s^T), and its total log
   decay C_last; the backward also sums the adjoint state of the chunk's queries
   (sum_t exp(C_t) q_t do_t^T), whose decay runs from the chunk's start.
2. :func:`_chunk_scan_kernel`: a short pass over the chunk states only (one [K, V] update
   per chunk, split over element blocks; groups of chunks as parallel scans), replacing each
   local state in place by the state that enters the chunk: S_in[i+1] = exp(C_last[i])
   S_in[i] + S_loc[i] in sweep order, and for the adjoint the same recurrence in reversed
   chunk order.
3. :func:`_chunk_fwd_kernel` / :func:`_chunk_bwd_kernel`: each direction's own part of the
   chunk (causal in its sweep order) plus the incoming state's contribution,
   o += exp(C_t) q_t S_in; the backward's dq from S_in, its dk, dv from the adjoint state,
   and the gate gradient of each scan direction on the chunk: suffix sums (in that sweep) of
   q.dq - k.dk over its own tokens plus the share of all later tokens, one product of two
   states (:func:`_gate_grad_after`), so no scan over the whole sequence follows.

A program of the state, output and gradient kernels holds one chunk's tokens in token order
and does both directions on them: direction 1's chunk i of its sweep is chunk NT - 1 - i of
the sequence (``common._sweep_pos``: it walks chunks and tokens backwards, its first chunk the
partial one), so both directions' chunks cover the same tokens, and in token order direction
1's causal mask is the transposed one and its cumulative decays run from the chunk's end.
The tiles are loaded once for both, and the two directions' parts of o, dq, dk, dv are summed
in fp32 and stored once, with no pair buffers and no adds after the kernels.

Per key channel the state update is diag(exp(C_last)) S + K~^T V (the pass decays each state
row by its channel's total), and the chunk's own part is the sweep's: the tensor-core form
where every channel decays by less than exp(-SAFE) in the chunk, GLA's exact 16-token steps
(reused from ``gla.py``) elsewhere; its output and backward kernels keep one program per
direction (in d's sweep order, their pieces summed after them, as the sweep's are), the
backward the sweep's split into a dq program and a dk, dv program per chunk.

States are fp32, a [K, V] per chunk, (batch x head) and direction: the price of the
parallelism is their memory traffic (per direction V / 32 times k's bytes in bf16, written
once, read and rewritten by the pass, read once more) and one more read of k and v (and q,
do) by the state kernel. Their offsets are 64-bit (the backward's buffer passes 2^31
elements at B*H = 48, 65536 tokens and d = 128). One chunk (T <= 64) has no states to pass
on: the output kernel alone runs, from zeros.

With a scalar decay the kernels can apply RetNet's rotary embeddings themselves (ROTARY):
a program rotates the one q, k it loads at each direction's positions and rotates that
direction's dq, dk back, so no rotated copies of q and k (two per direction) are made
around the op, and its backward needs no rotary gradient either.
"""
import triton
import triton.language as tl

from .common import (_chunk_ptrs, _kv_tile, _load_tile, _other_decay, _own_decay, _rotary_angles,
                     _rotate, _state_step, _sweep_pos)
from .gla import (_chunk_dA, _dg_piece, _gla_bwd_other_step_exact, _gla_bwd_own_step_exact,
                  _gla_fwd_step_exact)


@triton.jit
def _chunk_tiles(q, k, v, g, i, i_bh, i_dir, T, H, sg_d, sg_b, sg_t, sg_h,
                 K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                 BV: tl.constexpr):
    """Chunk i of direction i_dir's sweep, per key channel: its token positions (sweep order),
    q, k, v tiles, the masks of a K-wide and a V-wide tile, and its cumulative log decays C
    [BT, BK] and their total [BK] in the sweep's own scan."""
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)
    pos = _sweep_pos(i, i_dir, NT, BT)
    b_q, m_k = _load_tile(q, i_b, i_h, pos, T, H, K, BK)
    b_k, _ = _load_tile(k, i_b, i_h, pos, T, H, K, BK)
    b_v, m_v = _load_tile(v, i_b, i_h, pos, T, H, V, BV)
    p_g = g + i_dir * sg_d + i_b * sg_b + i_h * sg_h
    C, C_last = _own_decay(p_g + pos[:, None] * sg_t + tl.arange(0, BK)[None, :], m_k)
    return pos, b_q, b_k, b_v, m_k, m_v, C, C_last


@triton.jit
def _direction_qk(q, k, rot, b_q, b_k, d: tl.constexpr, sq_d, i_b, i_h, pos, T, H,
                  K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, PAIRED: tl.constexpr,
                  ROTARY: tl.constexpr, NEED_Q: tl.constexpr = True):
    """Direction d's q, k on a chunk in token order, from the tiles ``b_q``, ``b_k`` loaded
    for direction 0 (PAIRED: direction 1 has its own, loaded here at sq_d) and, with ROTARY,
    rotated at the positions along d's scanned sequence by the table of cos and sin ``rot``,
    rounded to their dtype as ``ops.rotary`` rounds them; also the cos and sin (ROTARY off:
    placeholders), which turn dq, dk back. NEED_Q False: q is neither loaded nor rotated
    (``b_q`` is returned as it came)."""
    if PAIRED:
        if d == 1:
            if NEED_Q:
                b_q, _ = _load_tile(q + sq_d, i_b, i_h, pos, T, H, K, BK)
            b_k, _ = _load_tile(k + sq_d, i_b, i_h, pos, T, H, K, BK)
    cos, sin = 1., 0.
    if ROTARY:
        cos, sin = _rotary_angles(rot, pos, d, T, BK)
        if NEED_Q:
            b_q = _rotate(b_q, cos, sin, BT, BK).to(b_q.dtype)
        b_k = _rotate(b_k, cos, sin, BT, BK).to(b_k.dtype)
    return b_q, b_k, cos, sin


@triton.jit
def _direction_decay(g, d: tl.constexpr, i_b, i_h, pos, T, sg_d, sg_b, sg_t, sg_h,
                     m_k, BK: tl.constexpr, PER_CHANNEL: tl.constexpr):
    """Direction d's log decays on a chunk in token order, cumulative in d's sweep order: C_t
    sums them from the chunk's start in that sweep up to and including t (direction 1 sweeps
    backwards: the sums run from the chunk's last token), so key s reaches query t decayed
    by C_t - C_s; their total; and E_s, the sum of those after s in the sweep (key s's decay
    to the chunk's end), summed on its own rather than taken as total - C_s, which would
    cancel two large sums where a chunk decays strongly. [BT] and a scalar, per key channel
    [BT, BK] and [BK]."""
    p_g = g + d * sg_d + i_b * sg_b + i_h * sg_h
    if PER_CHANNEL:
        b_g = tl.load(p_g + pos[:, None] * sg_t + tl.arange(0, BK)[None, :], mask=m_k, other=0.)
    else:
        b_g = tl.load(p_g + pos * sg_t, mask=(pos >= 0) & (pos < T), other=0.)
    b_g = b_g.to(tl.float32)
    C = tl.cumsum(b_g, 0, reverse=d == 1)
    return C, tl.sum(b_g, 0), tl.cumsum(b_g, 0, reverse=d == 0) - b_g


@triton.jit
def _in_sweep(d: tl.constexpr, BT: tl.constexpr):
    """[t, s] pairs of a chunk in token order where key s is not after query t in direction
    d's sweep (s <= t forward, s >= t backward)."""
    ar = tl.arange(0, BT)
    if d == 0:
        return ar[:, None] >= ar[None, :]
    return ar[:, None] <= ar[None, :]


@triton.jit
def _state_row(d: tl.constexpr, c, i_bh):
    """Row of the chunk-state buffers of direction d's sweep chunk on the tokens of chunk c
    (direction 1 numbers the chunks from the sequence's end)."""
    NT = tl.num_programs(0)
    return ((d * tl.num_programs(1) + i_bh) * NT + c + d * (NT - 1 - 2 * c)).to(tl.int64)


@triton.jit
def _chunk_state_kernel(q, k, v, g, do, S, G, rot, T, H, sg_d, sg_b, sg_t, sg_h, sq_d,
                        K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                        BV: tl.constexpr, PRECISION: tl.constexpr, F32: tl.constexpr,
                        BACKWARD: tl.constexpr, PER_CHANNEL: tl.constexpr,
                        PAIRED: tl.constexpr, ROTARY: tl.constexpr):
    """Program (chunk c, bh), both directions: the chunk's local state of each direction d
    into S[0, d, bh, i] (i: the chunk's index in d's sweep) and its total log decay into
    G[d, bh, i] (G[d, bh, i, :] per key channel); with BACKWARD also the adjoint state of its
    queries and output gradients into S[1, d, bh, i]. The chunk's tiles are loaded once for
    both (PAIRED: each direction its own q, k). F32: fp32 operands for the state's dot (the
    gate gradient needs them, see ``common._state_step``); the adjoint state always has them.
    Every decay factor is exp of a partial sum within the chunk (<= 1), so per key channel no
    chunk needs GLA's exact steps here."""
    c, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    pos = c * BT + tl.arange(0, BT)
    b_k, m_k = _load_tile(k, i_b, i_h, pos, T, H, K, BK)
    b_v, _ = _load_tile(v, i_b, i_h, pos, T, H, V, BV)
    b_q = b_k                                     # (the forward's states need no queries)
    if BACKWARD:
        b_q, _ = _load_tile(q, i_b, i_h, pos, T, H, K, BK)
        b_do, _ = _load_tile(do, i_b, i_h, pos, T, H, V, BV)
    zero = tl.zeros([BK, BV], dtype=tl.float32)
    rows = 2 * tl.num_programs(1) * tl.num_programs(0).to(tl.int64)
    for d in tl.static_range(2):
        row = _state_row(d, c, i_bh)
        q_d, k_d, cos, sin = _direction_qk(q, k, rot, b_q, b_k, d, sq_d, i_b, i_h, pos, T, H,
                                           K, BT, BK, PAIRED, ROTARY, BACKWARD)
        C, C_last, E = _direction_decay(g, d, i_b, i_h, pos, T, sg_d, sg_b, sg_t, sg_h, m_k,
                                        BK, PER_CHANNEL)
        if PER_CHANNEL:
            to_end, from_start = tl.exp(E), tl.exp(C)
            tl.store(G + row * BK + tl.arange(0, BK), C_last)
        else:
            to_end, from_start = tl.exp(E)[:, None], tl.exp(C)[:, None]
            tl.store(G + row, C_last)
        tl.store(_kv_tile(S + row * BK * BV, BK, BV),
                 _state_step(zero, 1.0, k_d * to_end, b_v, F32, PRECISION))
        if BACKWARD:
            tl.store(_kv_tile(S + (rows + row) * BK * BV, BK, BV),
                     _state_step(zero, 1.0, q_d * from_start, b_do, True, PRECISION))


@triton.jit
def _decay_then_add(a1, b1, a2, b2):
    """Two steps of the recurrence x -> a x + b, (a1, b1) first: x -> a2 (a1 x + b1) + b2."""
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _scan_tile(S, G, base, row, n, rev, NT, offs, SIZE: tl.constexpr, CHANNELS: tl.constexpr,
               BV: tl.constexpr, GROUP: tl.constexpr, BLOCK: tl.constexpr):
    """Pointers, local states and decays of the chunks at positions ``n`` (in the kind's
    order) of one row, as [GROUP, BLOCK] tiles; positions past the row are the identity step
    (decay 1, state 0)."""
    valid = (n >= 0) & (n < NT)
    i = n + rev * (NT - 1 - 2 * n)           # chunk index, in the kind's order
    ptrs = base[None, :] + i[:, None] * SIZE
    local = tl.load(ptrs, mask=valid[:, None], other=0.)
    if CHANNELS > 0:
        decay = tl.exp(tl.load(G + (row * NT + i)[:, None] * CHANNELS + (offs // BV)[None, :],
                               mask=valid[:, None], other=0.))
    else:
        decay = tl.exp(tl.load(G + row * NT + i, mask=valid, other=0.))[:, None] + \
            tl.zeros([GROUP, BLOCK], dtype=tl.float32)
    return ptrs, valid, local, decay


@triton.jit
def _chunk_scan_kernel(S, G, NT, ROWS, SIZE: tl.constexpr, BLOCK: tl.constexpr,
                       GROUP: tl.constexpr, CHANNELS: tl.constexpr, BV: tl.constexpr):
    """Program (row, element block, kind): the chunk states S[kind, row, :] of one (direction,
    batch x head) row, replaced in place by the states entering each chunk. Kind 0 (states of
    the keys) runs in sweep order, kind 1 (adjoint states of the queries) in reversed chunk
    order; both decay by the chunks' total log decays G[row, :] (CHANNELS 0: one per head)
    or G[row, :, :] (per key channel, CHANNELS of them: state element e is in channel
    e // BV). Elementwise, so a state is split over programs at will (BLOCK elements each).

    The chunks are taken GROUP at a time as one tile (``FusedBiConfig.scan_group``), so a row
    of NT chunks waits on NT / GROUP round trips to memory, and each group is a parallel scan
    (``tl.associative_scan`` of the steps x -> decay x + local, which keeps their order),
    log2(GROUP) levels deep: the state entering chunk n of a group is the scan of the group's
    steps shifted by one chunk, applied to the state entering the group. It measured several
    times faster than walking each group one chunk at a time (docs/benchmarks.md)."""
    row, i_blk, rev = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs = i_blk * BLOCK + tl.arange(0, BLOCK)
    base = S + ((rev * ROWS + row) * NT).to(tl.int64) * SIZE + offs
    rows = tl.arange(0, GROUP)
    carry = tl.zeros([BLOCK], dtype=tl.float32)
    for n0 in range(0, NT, GROUP):
        n = n0 + rows
        ptrs, valid, local, decay = _scan_tile(S, G, base, row, n, rev, NT, offs, SIZE,
                                               CHANNELS, BV, GROUP, BLOCK)
        # the steps of chunks n - 1 (the group's first row: the identity)
        prev = tl.where(rows > 0, n - 1, -1)
        _, _, prev_local, prev_decay = _scan_tile(S, G, base, row, prev, rev, NT, offs, SIZE,
                                                  CHANNELS, BV, GROUP, BLOCK)
        a, b = tl.associative_scan((prev_decay, prev_local), 0, _decay_then_add)
        entering = a * carry[None, :] + b
        tl.store(ptrs, entering, mask=valid[:, None])
        # the state leaving the group: its last row's step (a sum picks the row, so no
        # reduction needs the steps' order)
        carry = tl.sum(tl.where(rows[:, None] == GROUP - 1, decay * entering + local, 0.), 0)


@triton.jit
def _gate_grad_after(S, row, i, dH_in, BK: tl.constexpr, BV: tl.constexpr):
    """The gate gradient's share from beyond chunk i of a sweep, per key channel [BK] (to be
    summed over channels for a scalar decay, and times ``scale``).

    The gradient of a log decay g_t is the sum of q_u.dq_u - k_u.dk_u over the tokens u from t
    to the sweep's end: pairs (key s, query u) with s before t <= u are the ones g_t decays.
    For the tokens past the chunk that sum is the product of the state leaving the chunk
    (S[0] of chunk i + 1) and the adjoint state entering it from those tokens (``dH_in``,
    S[1] of chunk i): sum over elements of S_out * dH_in, one row per key channel. So each
    chunk's gate gradient is this plus a suffix sum over its own tokens, with no pass over the
    whole sequence. The sweep's last chunk has nothing past it: zero."""
    NT = tl.num_programs(0)
    m = (tl.zeros([BK, BV], dtype=tl.int32) + i + 1) < NT
    S_out = tl.load(_kv_tile(S + (row + 1) * BK * BV, BK, BV), mask=m, other=0.)
    return tl.sum(S_out * dH_in, 1)


@triton.jit
def _chunk_fwd_kernel(q, k, v, g, o, S, rot, scale, T, H, sg_d, sg_b, sg_t, sg_h, sq_d,
                      K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                      BV: tl.constexpr, PRECISION: tl.constexpr, PAIRED: tl.constexpr,
                      ROTARY: tl.constexpr):
    """Program (chunk c, bh): the output on the chunk's tokens, both directions' parts summed
    in fp32 and stored once into o [B, T, H, V] (ROTARY: of q and k rotated along each
    direction's sequence, see :func:`_direction_qk`)."""
    c, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    pos = c * BT + tl.arange(0, BT)
    b_q, m_k = _load_tile(q, i_b, i_h, pos, T, H, K, BK)
    b_k, _ = _load_tile(k, i_b, i_h, pos, T, H, K, BK)
    b_v, m_v = _load_tile(v, i_b, i_h, pos, T, H, V, BV)
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    for d in tl.static_range(2):
        q_d, k_d, cos, sin = _direction_qk(q, k, rot, b_q, b_k, d, sq_d, i_b, i_h, pos, T, H,
                                           K, BT, BK, PAIRED, ROTARY)
        C, C_tot, E = _direction_decay(g, d, i_b, i_h, pos, T, sg_d, sg_b, sg_t, sg_h, m_k,
                                       BK, False)
        S_in = tl.load(_kv_tile(S + _state_row(d, c, i_bh) * BK * BV, BK, BV))
        A = tl.dot(q_d, tl.trans(k_d), input_precision=PRECISION)
        A = A * tl.exp(tl.where(_in_sweep(d, BT), C[:, None] - C[None, :], float('-inf')))
        b_o += tl.dot(A.to(b_v.dtype), b_v, input_precision=PRECISION)
        b_o += tl.dot((q_d * tl.exp(C)[:, None]).to(q_d.dtype), S_in.to(q_d.dtype),
                      input_precision=PRECISION)
    p_o, _ = _chunk_ptrs(o, i_b, i_h, pos, T, H, V, BV)
    tl.store(p_o, (b_o * scale).to(p_o.dtype.element_ty), mask=m_v)


@triton.jit
def _chunk_bwd_kernel(q, k, v, g, do, dq, dk, dv, dg, S, rot, scale, T, H, sg_d, sg_b, sg_t,
                      sg_h, sq_d, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr,
                      NEED_DG: tl.constexpr, PAIRED: tl.constexpr, ROTARY: tl.constexpr):
    """Program (chunk c, bh): the gradients on the chunk's tokens, both scan directions'
    pieces of dq, dk, dv summed in fp32 and stored once (PAIRED: dq, dk of each direction's
    own q, k into [d] of [2, B, T, H, K]) and, with NEED_DG, the gradient of each direction's
    log decays on the chunk into dg[d] ([2, B, T, H] fp32), whole: see
    :func:`_gate_grad_after`. Direction d's state entering the chunk (S[0]) gives its dq, the
    adjoint state entering it from the chunks after it in d's sweep (S[1]) its dk and dv. As
    in the sweep, the dots behind dq and dk take fp32 operands (TF32 for 16-bit inputs): they
    cancel in q.dq - k.dk. ROTARY: q and k are rotated along d's sequence on loading
    (:func:`_direction_qk`), and d's dq, dk are rotated back before they are summed, so both
    directions' pieces are gradients of the one unrotated q, k."""
    c, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    B = tl.num_programs(1) // H
    rows = 2 * tl.num_programs(1) * tl.num_programs(0).to(tl.int64)
    pos = c * BT + tl.arange(0, BT)
    b_q, m_k = _load_tile(q, i_b, i_h, pos, T, H, K, BK)
    b_k, _ = _load_tile(k, i_b, i_h, pos, T, H, K, BK)
    b_v, m_v = _load_tile(v, i_b, i_h, pos, T, H, V, BV)
    b_do, _ = _load_tile(do, i_b, i_h, pos, T, H, V, BV)
    dof, vf = b_do.to(tl.float32), b_v.to(tl.float32)
    DV = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)      # do_t . v_s
    sum_dq = tl.zeros([BT, BK], dtype=tl.float32)
    sum_dk = tl.zeros([BT, BK], dtype=tl.float32)
    sum_dv = tl.zeros([BT, BV], dtype=tl.float32)
    for d in tl.static_range(2):
        q_d, k_d, cos, sin = _direction_qk(q, k, rot, b_q, b_k, d, sq_d, i_b, i_h, pos, T, H,
                                           K, BT, BK, PAIRED, ROTARY)
        C, C_tot, E = _direction_decay(g, d, i_b, i_h, pos, T, sg_d, sg_b, sg_t, sg_h, m_k,
                                       BK, False)
        row = _state_row(d, c, i_bh)
        S_in = tl.load(_kv_tile(S + row * BK * BV, BK, BV))
        dH_in = tl.load(_kv_tile(S + (rows + row) * BK * BV, BK, BV))
        qf, kf = q_d.to(tl.float32), k_d.to(tl.float32)
        M = tl.exp(tl.where(_in_sweep(d, BT), C[:, None] - C[None, :], float('-inf')))
        A = tl.dot(q_d, tl.trans(k_d), input_precision=PRECISION) * M    # decayed q_t . k_s
        dA = DV * M                                                      # decayed do_t . v_s
        to_end = tl.exp(E)[:, None]                  # key s to the chunk's end in d's sweep
        b_dq = tl.dot(dA, kf, input_precision=PRECISION)
        b_dq += tl.exp(C)[:, None] * tl.dot(dof, tl.trans(S_in), input_precision=PRECISION)
        b_dq *= scale
        b_dk = tl.dot(tl.trans(dA), qf, input_precision=PRECISION)
        b_dk += to_end * tl.dot(vf, tl.trans(dH_in), input_precision=PRECISION)
        b_dk *= scale
        b_dv = tl.dot(tl.trans(A).to(b_do.dtype), b_do, input_precision=PRECISION)
        b_dv += to_end * tl.dot(k_d, dH_in.to(k_d.dtype), input_precision=PRECISION)
        sum_dv += b_dv * scale
        if NEED_DG:
            # q.dq - k.dk, summed over the tokens from t to the end of d's sweep: from the
            # chunk's last token forward, from its first backward
            x = tl.sum(qf * b_dq, 1) - tl.sum(kf * b_dk, 1)
            after = tl.sum(_gate_grad_after(S, row, c + d * (tl.num_programs(0) - 1 - 2 * c),
                                            dH_in, BK, BV), 0) * scale
            tl.store(dg + d * B * T * H + (i_b * T + pos) * H + i_h,
                     after + tl.cumsum(x, 0, reverse=d == 0), mask=(pos >= 0) & (pos < T))
        if ROTARY:
            b_dq, b_dk = _rotate(b_dq, cos, -sin, BT, BK), _rotate(b_dk, cos, -sin, BT, BK)
        if PAIRED:
            p_dq, _ = _chunk_ptrs(dq + d * B * T * H * K, i_b, i_h, pos, T, H, K, BK)
            p_dk, _ = _chunk_ptrs(dk + d * B * T * H * K, i_b, i_h, pos, T, H, K, BK)
            tl.store(p_dq, b_dq.to(p_dq.dtype.element_ty), mask=m_k)
            tl.store(p_dk, b_dk.to(p_dk.dtype.element_ty), mask=m_k)
        else:
            sum_dq += b_dq
            sum_dk += b_dk
    if not PAIRED:
        p_dq, _ = _chunk_ptrs(dq, i_b, i_h, pos, T, H, K, BK)
        p_dk, _ = _chunk_ptrs(dk, i_b, i_h, pos, T, H, K, BK)
        tl.store(p_dq, sum_dq.to(p_dq.dtype.element_ty), mask=m_k)
        tl.store(p_dk, sum_dk.to(p_dk.dtype.element_ty), mask=m_k)
    p_dv, _ = _chunk_ptrs(dv, i_b, i_h, pos, T, H, V, BV)
    tl.store(p_dv, sum_dv.to(p_dv.dtype.element_ty), mask=m_v)


@triton.jit
def _chunk_gla_fwd_kernel(q, k, v, g, o, S, scale, T, H, sg_d, sg_b, sg_t, sg_h, sq_d,
                          K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                          BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr,
                          SAFE: tl.constexpr):
    """:func:`_chunk_fwd_kernel` with per-key-channel decays g [2, B, T, H, K] (GLA). As in
    the sweep (``gla._bi_gla_fwd_kernel``), a chunk whose channels all decay by less than
    exp(-SAFE) takes the tensor-core form (q exp(C)) (k exp(-C))^T masked; any other chunk
    goes in BC-token exact steps (``gla._gla_fwd_step_exact``) from its entering state."""
    i, i_bh, i_dir = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q, k = q + i_dir * sq_d, k + i_dir * sq_d       # direction i_dir's (sq_d 0: shared)
    row = ((i_dir * tl.num_programs(1) + i_bh) * tl.num_programs(0) + i).to(tl.int64)
    pos, b_q, b_k, b_v, m_k, m_v, C, C_last = _chunk_tiles(
        q, k, v, g, i, i_bh, i_dir, T, H, sg_d, sg_b, sg_t, sg_h, K, V, BT, BK, BV)
    S_in = tl.load(_kv_tile(S + row * BK * BV, BK, BV))
    o_dir = o + i_dir * (tl.num_programs(1) // H) * T * H * V
    if tl.min(C_last, 0) > -SAFE:
        ar = tl.arange(0, BT)
        b_qg = (b_q * tl.exp(C)).to(b_q.dtype)
        A = tl.dot(b_qg, tl.trans((b_k * tl.exp(-C)).to(b_k.dtype)), input_precision=PRECISION)
        A = tl.where(ar[:, None] >= ar[None, :], A, 0.)
        b_o = tl.dot(A.to(b_v.dtype), b_v, input_precision=PRECISION)
        b_o += tl.dot(b_qg, S_in.to(b_q.dtype), input_precision=PRECISION)
        p_o, _ = _chunk_ptrs(o_dir, i_bh // H, i_bh % H, pos, T, H, V, BV)
        tl.store(p_o, (b_o * scale).to(p_o.dtype.element_ty), mask=m_v)
    else:
        NS: tl.constexpr = BT // BC
        NT = tl.num_programs(0)
        for j in range(NS):
            pos_j = _sweep_pos(i * NS + j, i_dir, NT * NS, BC)
            S_in = _gla_fwd_step_exact(q, k, v, g, o_dir, S_in, scale, pos_j, i_bh // H,
                                       i_bh % H, i_dir, T, H, sg_d, sg_b, sg_t, sg_h, K, V, BC,
                                       BK, BV, PRECISION)


@triton.jit
def _chunk_gla_bwd_kernel(q, k, v, g, do, dq, dk, dv, dg, Cq, S, scale, T, H, sg_d, sg_b,
                          sg_t, sg_h, sq_d, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                          BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                          PRECISION: tl.constexpr, NEED_DG: tl.constexpr, SAFE: tl.constexpr):
    """:func:`_chunk_bwd_kernel` with per-key-channel decays (GLA), split as the sweep's
    backward is (``gla._bi_gla_bwd_kernel``: one [BK, BV] state per program): axis 2 is
    2 * part + d. Part 0 gives dq of scan d on chunk i from the state entering it (S[0]);
    part 1 gives dk, dv of scan d from the adjoint state entering it from the later chunks
    (S[1]), walking the chunk in the opposite sweep's token order, which is the sweep's 'other
    scan' of direction 1 - d. Chunks decaying past exp(-SAFE) go in the sweep's exact BC-token
    steps; elsewhere the diagonal s = t is added outside the factorised dots, as in the sweep.

    The gate gradient of scan d on the chunk, after[i] (:func:`_gate_grad_after`) plus suffix
    sums of q.dq - k.dk over the chunk's tokens, leaves in three pieces, as each part can sum
    in its own walking order: part 0 the exclusive prefix sums of q.dq (dg slot 2d, [2, 2, B,
    T, H, K] fp32) and their total (Cq[d, bh, i, :]), part 1 the suffix sums of k.dk less
    after[i] (slot 2d + 1); :func:`_chunk_gate_grad_kernel` adds them up."""
    i, i_bh, i_pd = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_part, i_dir = i_pd // 2, i_pd % 2
    q, k = q + i_dir * sq_d, k + i_dir * sq_d       # direction i_dir's (sq_d 0: shared)
    i_b, i_h = i_bh // H, i_bh % H
    B = tl.num_programs(1) // H
    NT = tl.num_programs(0)
    NS: tl.constexpr = BT // BC
    rows = 2 * tl.num_programs(1) * NT.to(tl.int64)
    row = ((i_dir * tl.num_programs(1) + i_bh) * NT + i).to(tl.int64)
    ar = tl.arange(0, BT)
    ck = tl.arange(0, BK)
    diag = ar[:, None] == ar[None, :]
    run = tl.zeros([BK], dtype=tl.float32)        # the gate gradient's running sums
    if i_part == 0:
        S_in = tl.load(_kv_tile(S + row * BK * BV, BK, BV))
        pos = _sweep_pos(i, i_dir, NT, BT)
        b_q, m_k = _load_tile(q, i_b, i_h, pos, T, H, K, BK)
        p_g = g + i_dir * sg_d + i_b * sg_b + pos[:, None] * sg_t + i_h * sg_h + ck[None, :]
        C, C_last = _own_decay(p_g, m_k)
        if tl.min(C_last, 0) > -SAFE:
            b_k, b_v, _, b_do, dA, dA_diag = _chunk_dA(k, v, do, i_b, i_h, pos, T, H, diag, K,
                                                       V, BK, BV, PRECISION)
            kf = b_k.to(tl.float32)
            b_dq = tl.dot(tl.where(ar[:, None] > ar[None, :], dA, 0.), kf * tl.exp(-C),
                          input_precision=PRECISION)
            b_dq += tl.dot(b_do.to(tl.float32), tl.trans(S_in), input_precision=PRECISION)
            b_dq = (b_dq * tl.exp(C) + dA_diag[:, None] * kf) * scale
            p_dq, _ = _chunk_ptrs(dq + i_dir * B * T * H * K, i_b, i_h, pos, T, H, K, BK)
            tl.store(p_dq, b_dq.to(p_dq.dtype.element_ty), mask=m_k)
            if NEED_DG:
                a = b_q.to(tl.float32) * b_dq
                _dg_piece(dg, a, run, 2 * i_dir, pos, m_k, i_b, i_h, B, T, H, K, BK, True,
                          False)
                run += tl.sum(a, 0)
        else:
            for j in range(NS):
                S_in, run = _gla_bwd_own_step_exact(
                    q, k, v, g, do, dq, dg, S_in, run, scale,
                    _sweep_pos(i * NS + j, i_dir, NT * NS, BC), i_b, i_h, i_dir, B, T, H, sg_d,
                    sg_b, sg_t, sg_h, K, V, BC, BK, BV, PRECISION, NEED_DG, False)
        if NEED_DG:
            tl.store(Cq + row * BK + ck, run)
    else:
        i_opp = 1 - i_dir                        # the chunk's tokens in the opposite order
        dH_in = tl.load(_kv_tile(S + (rows + row) * BK * BV, BK, BV))
        if NEED_DG:
            run -= _gate_grad_after(S, row, i, dH_in, BK, BV) * scale
        pos = _sweep_pos(NT - 1 - i, i_opp, NT, BT)
        b_q, m_k = _load_tile(q, i_b, i_h, pos, T, H, K, BK)
        p_g = g + i_dir * sg_d + i_b * sg_b + pos[:, None] * sg_t + i_h * sg_h + ck[None, :]
        E, E_tot = _other_decay(p_g, m_k)        # E_s: decay from s to the chunk's end
        if tl.min(E_tot, 0) > -SAFE:
            b_k, b_v, m_v, b_do, dA, dA_diag = _chunk_dA(k, v, do, i_b, i_h, pos, T, H, diag,
                                                         K, V, BK, BV, PRECISION)
            qf = b_q.to(tl.float32)
            q_hat = qf * tl.exp(-E)
            b_dk = tl.dot(tl.trans(tl.where(ar[:, None] < ar[None, :], dA, 0.)), q_hat,
                          input_precision=PRECISION)
            b_dk += tl.dot(b_v.to(tl.float32), tl.trans(dH_in), input_precision=PRECISION)
            b_dk = (b_dk * tl.exp(E) + dA_diag[:, None] * qf) * scale
            b_ke = (b_k * tl.exp(E)).to(b_k.dtype)
            A = tl.dot(q_hat.to(b_q.dtype), tl.trans(b_ke), input_precision=PRECISION)
            b_dv = tl.dot(tl.trans(tl.where(ar[:, None] <= ar[None, :], A, 0.)).to(b_do.dtype),
                          b_do, input_precision=PRECISION)
            b_dv = (b_dv + tl.dot(b_ke, dH_in.to(b_k.dtype), input_precision=PRECISION)) * scale
            p_dk, _ = _chunk_ptrs(dk + i_dir * B * T * H * K, i_b, i_h, pos, T, H, K, BK)
            p_dv, _ = _chunk_ptrs(dv + i_dir * B * T * H * V, i_b, i_h, pos, T, H, V, BV)
            tl.store(p_dk, b_dk.to(p_dk.dtype.element_ty), mask=m_k)
            tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), mask=m_v)
            if NEED_DG:
                _dg_piece(dg, b_k.to(tl.float32) * b_dk, run, 2 * i_dir + 1, pos, m_k, i_b, i_h,
                          B, T, H, K, BK, False, False)
        else:
            for j in range(NS):
                dH_in, run = _gla_bwd_other_step_exact(
                    q, k, v, g, do, dk, dv, dg, dH_in, run, scale,
                    _sweep_pos((NT - 1 - i) * NS + j, i_opp, NT * NS, BC), i_b, i_h, i_opp, B,
                    T, H, sg_d, sg_b, sg_t, sg_h, K, V, BC, BK, BV, PRECISION, NEED_DG, False)


@triton.jit
def _chunk_gate_grad_kernel(dg, Cq, out, T, H, K: tl.constexpr, BT: tl.constexpr,
                            BK: tl.constexpr):
    """Program (chunk i, bh, direction d): the gate gradient of scan d on the chunk,
    Cq[d, bh, i] - dg[d, 0] - dg[d, 1] on its tokens (the pieces of
    :func:`_chunk_gla_bwd_kernel`), into out[d] ([2, B, T, H, K] fp32)."""
    i, i_bh, i_dir = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    B = tl.num_programs(1) // H
    row = ((i_dir * tl.num_programs(1) + i_bh) * tl.num_programs(0) + i).to(tl.int64)
    pos = _sweep_pos(i, i_dir, tl.num_programs(0), BT)
    total = tl.load(Cq + row * BK + tl.arange(0, BK))
    slot = 2 * i_dir.to(tl.int64)                # (64-bit: see gla._dg_piece)
    prefix_q, m_k = _load_tile(dg + slot * B * T * H * K, i_b, i_h, pos, T, H, K, BK)
    suffix_k, _ = _load_tile(dg + (slot + 1) * B * T * H * K, i_b, i_h, pos, T, H, K, BK)
    p_out, _ = _chunk_ptrs(out + i_dir * B * T * H * K, i_b, i_h, pos, T, H, K, BK)
    tl.store(p_out, total[None, :] - prefix_q - suffix_k, mask=m_k)
