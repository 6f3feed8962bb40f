"""Fused bidirectional decayed linear attention (simple_gla, RetNet, GLA): both scans in one kernel.

Computes, for q, k [B, T, H, K], v [B, T, H, V] and log decays gf, gb [B, T, H] (<= 0)::

    o_t = scale * sum_{s <= t} exp(sum_{r=s+1..t} gf_r) (q_t . k_s) v_s      (forward scan)
        + scale * sum_{s >= t} exp(sum_{r=t..s-1} gb_r) (q_t . k_s) v_s      (backward scan)

which is exactly what the two-call path computes (``simple_gla`` on [x, flip(x)] batched,
then ``merge``: the backward scan runs over the flipped sequence with decay gb), so the
diagonal s = t is counted once in each direction, as in ViG and fla_mm's ``merge``.

One program per (batch*head, direction) sweeps the chunks of its direction with the [K, V]
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

With scalar decay, from 4096 tokens (``LONG_TOKENS``) each sweep is cut into
``LONG_SEGMENTS`` runs of chunks, one program each, after a small kernel has summed every
segment's local state (per key channel for GLA): more programs for the GPU at the cost of
one extra pass over k, v (and q, do). It is exact (GPU-tested at 6 segments, uneven on
purpose) and measured faster there. GLA's forward is cut the same way (``GLA_FWD_SEGMENTS``);
its split backward, which already has twice the programs, measured fastest with one segment
at every length. ``SEGMENTS`` overrides the count.

Precision: 16-bit inputs take their dots on tensor cores with fp32 accumulation; where an
operand is fp32 (the states, and in the backward everything behind dq and dk) the dot is
TF32. The backward keeps its states' operands in fp32 for the gate gradient
(:func:`_state_step`).

Block sizes are fixed (no autotuning), so the first call compiles two kernels and nothing else.
The kernels also run under ``TRITON_INTERPRET=1`` on CPU tensors, which is how CI checks them.
"""
import torch
import triton
import triton.language as tl

CHUNK = 64        # tokens per chunk
GLA_STEP = 16     # per-key-channel decay, exact fallback: tokens per [BC, BC, BK] step
GLA_SAFE = 60.0   # ... taken by chunks that decay by more than exp(-GLA_SAFE) in a channel


@triton.jit
def _chunk_ptrs(base, i_b, i_h, pos, T, H, D: tl.constexpr, BD: tl.constexpr):
    """Pointers and mask of a [BT, BD] tile of a contiguous [B, T, H, D] tensor."""
    cols = tl.arange(0, BD)
    ptrs = base + ((i_b * T + pos[:, None]) * H + i_h) * D + cols[None, :]
    mask = (pos[:, None] >= 0) & (pos[:, None] < T) & (cols[None, :] < D)
    return ptrs, mask


@triton.jit
def _sweep_pos(i, i_dir, NT, BT: tl.constexpr):
    """Token positions of chunk i of a sweep; direction 1 walks chunks and tokens backwards."""
    ar = tl.arange(0, BT)
    c = i + i_dir * (NT - 1 - 2 * i)
    return c * BT + ar + i_dir * (BT - 1 - 2 * ar)


@triton.jit
def _load_tile(base, i_b, i_h, pos, T, H, D: tl.constexpr, BD: tl.constexpr):
    """A [BT, BD] tile (zeros outside the sequence and the head dim) and its mask."""
    ptrs, mask = _chunk_ptrs(base, i_b, i_h, pos, T, H, D, BD)
    return tl.load(ptrs, mask=mask, other=0.), mask


@triton.jit
def _own_decay(p_g, mask):
    """A chunk's log decays for the sweep's own scan, in sweep order: C_t sums them up to and
    including t (key s reaches query t, s <= t, decayed by C_t - C_s); and their total."""
    b_g = tl.load(p_g, mask=mask, other=0.).to(tl.float32)
    return tl.cumsum(b_g, 0), tl.sum(b_g, 0)


@triton.jit
def _other_decay(p_g, mask):
    """The same for the opposite scan, whose order is reversed: E_t sums them before t (key s
    reaches query t, t <= s, decayed by E_s - E_t); and their total."""
    b_g = tl.load(p_g, mask=mask, other=0.).to(tl.float32)
    return tl.cumsum(b_g, 0) - b_g, tl.sum(b_g, 0)


@triton.jit
def _kv_tile(base, BK: tl.constexpr, BV: tl.constexpr):
    return base + tl.arange(0, BK)[:, None] * BV + tl.arange(0, BV)[None, :]


@triton.jit
def _state_step(S, decay, x, y, F32: tl.constexpr, PRECISION: tl.constexpr):
    """The sweep's state update S * decay + x^T y (x: decayed keys, or queries for an adjoint
    state, in fp32; y: values or output gradients). The forward rounds x to y's dtype. A
    backward that computes the gate gradient keeps both in fp32 (F32; TF32 dots for 16-bit
    inputs; RetNet's fixed decay needs none and keeps bf16 states). The gate gradient is a
    sum over the sequence of q.dq - k.dk whose pair terms cancel except near the token, but the
    dq side and the dk side round differently, and with bf16 states that rounding grew with the
    length. Measured on an H200 (bf16 GLA, 16384 tokens, max error / max |dg|): bf16 states
    1.8e-2, fp32 states 4.8e-3 (FLA's two calls 2.3e-3) for 9% more time; 'tf32x3' dots 1e-5
    for 83% more."""
    if F32:
        return S * decay + tl.dot(tl.trans(x), y.to(tl.float32), input_precision=PRECISION)
    return S * decay + tl.dot(tl.trans(x.to(y.dtype)), y, input_precision=PRECISION)


@triton.jit
def _segment_start(S, seg_S, seg_G, row, i_seg, NSEG, BK: tl.constexpr, BV: tl.constexpr):
    """State entering segment i_seg: the local states of the segments before it, decayed."""
    for j in range(0, i_seg):
        S = S * tl.exp(tl.load(seg_G + row * NSEG + j)) + \
            tl.load(_kv_tile(seg_S + (row * NSEG + j) * BK * BV, BK, BV))
    return S


@triton.jit
def _bi_seg_state_kernel(q, k, v, g, do, seg_S, seg_G, seg_dH, seg_E, T, H, sg_d, sg_b, sg_t,
                         sg_h, CPS, NSEG, K: tl.constexpr, V: tl.constexpr,
                         BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                         PRECISION: tl.constexpr, BACKWARD: tl.constexpr):
    """Segments: the sweep of one direction is cut into NSEG runs of CPS chunks, one program
    each, for parallelism. This kernel sums each segment's own contribution to the state
    (and, for the backward, to the other scan's adjoint state) from zero, with the segment's
    total log decay; the sweep kernels start segment j from the decayed sum over j' < j."""
    i_bh, i_dir, i_seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    i_oth = 1 - i_dir
    row = i_dir * (tl.num_programs(0)) + i_bh
    NT = tl.cdiv(T, BT)
    S = tl.zeros([BK, BV], dtype=tl.float32)
    dH = tl.zeros([BK, BV], dtype=tl.float32)
    G = tl.sum(tl.zeros([BT], dtype=tl.float32), 0)
    Eg = tl.sum(tl.zeros([BT], dtype=tl.float32), 0)
    for i in range(i_seg * CPS, tl.minimum(i_seg * CPS + CPS, NT)):
        pos = _sweep_pos(i, i_dir, NT, BT)
        b_k, m_k = _load_tile(k, i_b, i_h, pos, T, H, K, BK)
        b_v, m_v = _load_tile(v, i_b, i_h, pos, T, H, V, BV)
        m_t = (pos >= 0) & (pos < T)
        p_g = g + i_b * sg_b + pos * sg_t + i_h * sg_h
        C, C_last = _own_decay(p_g + i_dir * sg_d, m_t)
        S = _state_step(S, tl.exp(C_last), b_k * tl.exp(C_last - C)[:, None], b_v,
                        BACKWARD, PRECISION)
        G += C_last
        if BACKWARD:
            b_q, _ = _load_tile(q, i_b, i_h, pos, T, H, K, BK)
            b_do, _ = _load_tile(do, i_b, i_h, pos, T, H, V, BV)
            E, E_tot = _other_decay(p_g + i_oth * sg_d, m_t)
            dH = _state_step(dH, tl.exp(E_tot), b_q * tl.exp(E_tot - E)[:, None], b_do,
                             True, PRECISION)
            Eg += E_tot
    tl.store(_kv_tile(seg_S + (row * NSEG + i_seg) * BK * BV, BK, BV), S)
    tl.store(seg_G + row * NSEG + i_seg, G)
    if BACKWARD:
        tl.store(_kv_tile(seg_dH + (row * NSEG + i_seg) * BK * BV, BK, BV), dH)
        tl.store(seg_E + row * NSEG + i_seg, Eg)


@triton.jit
def _bi_fwd_kernel(q, k, v, g, o, seg_S, seg_G, scale, T, H, sg_d, sg_b, sg_t, sg_h, CPS, NSEG,
                   K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                   BV: tl.constexpr, PRECISION: tl.constexpr, SEGMENTED: tl.constexpr):
    i_bh, i_dir, i_seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)
    ar = tl.arange(0, BT)
    causal = ar[:, None] >= ar[None, :]          # in sweep order: key s not after query t
    o_dir = o + i_dir * (tl.num_programs(0) // H) * T * H * V
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if SEGMENTED:
        S = _segment_start(S, seg_S, seg_G, i_dir * tl.num_programs(0) + i_bh, i_seg, NSEG,
                           BK, BV)
    for i in range(i_seg * CPS, tl.minimum(i_seg * CPS + CPS, NT)):
        pos = _sweep_pos(i, i_dir, NT, BT)
        b_q, m_k = _load_tile(q, i_b, i_h, pos, T, H, K, BK)
        b_k, _ = _load_tile(k, i_b, i_h, pos, T, H, K, BK)
        b_v, m_v = _load_tile(v, i_b, i_h, pos, T, H, V, BV)
        m_t = (pos >= 0) & (pos < T)
        C, C_last = _own_decay(g + i_dir * sg_d + i_b * sg_b + pos * sg_t + i_h * sg_h, m_t)
        A = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION)
        A = A * tl.exp(tl.where(causal, C[:, None] - C[None, :], float('-inf')))
        b_o = tl.dot(A.to(b_v.dtype), b_v, input_precision=PRECISION)
        b_o += tl.dot((b_q * tl.exp(C)[:, None]).to(b_q.dtype), S.to(b_q.dtype),
                      input_precision=PRECISION)
        p_o, _ = _chunk_ptrs(o_dir, i_b, i_h, pos, T, H, V, BV)
        tl.store(p_o, (b_o * scale).to(p_o.dtype.element_ty), mask=m_v)
        S = _state_step(S, tl.exp(C_last), b_k * tl.exp(C_last - C)[:, None], b_v,
                        False, PRECISION)


@triton.jit
def _bi_bwd_kernel(q, k, v, g, do, dq, dk, dv, dg, dg_tot, seg_S, seg_G, seg_dH, seg_E, scale,
                   T, H, sg_d, sg_b, sg_t, sg_h, CPS, NSEG, K: tl.constexpr, V: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                   PRECISION: tl.constexpr, NEED_DG: tl.constexpr, SEGMENTED: tl.constexpr):
    """Program (bh, d) sweeps in direction d. 'own' = scan direction d (state S, gives its
    dq); 'other' = the opposite scan, whose adjoint state dH runs the same way (gives its dk,
    dv). Outputs are [2, B, T, H, *] by the scan direction they belong to. The gate gradient
    of scan d is sum over the tokens its decay reaches of (q.dq - k.dk): dg holds, per scan
    direction, [the running sum of q.dq before t in its own sweep | the running sum of k.dk up
    to t in the other program's sweep] ([2, 2, B, T, H]) and dg_tot the total of q.dq
    ([2, B, H]), so dg = dg_tot - dg[:, 0] - dg[:, 1] with no scan left to do. The dots
    behind dq and dk take fp32 operands (TF32 for 16-bit inputs): dq and dk cancel in
    q.dq - k.dk, and summed over 16k tokens bf16 operand rounding would show. With segments
    (SEGMENTED) dg holds the per-token q.dq and k.dk instead and the sums are taken after."""
    i_bh, i_dir, i_seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    i_oth = 1 - i_dir
    B = tl.num_programs(0) // H
    NT = tl.cdiv(T, BT)
    ar = tl.arange(0, BT)
    causal = ar[:, None] >= ar[None, :]          # [t, s]: s not after t, in sweep order
    anti = ar[:, None] <= ar[None, :]            # [t, s]: s not before t
    S = tl.zeros([BK, BV], dtype=tl.float32)
    dH = tl.zeros([BK, BV], dtype=tl.float32)
    if SEGMENTED:
        row = i_dir * tl.num_programs(0) + i_bh
        S = _segment_start(S, seg_S, seg_G, row, i_seg, NSEG, BK, BV)
        dH = _segment_start(dH, seg_dH, seg_E, row, i_seg, NSEG, BK, BV)
    run_q = tl.sum(tl.zeros([BT], dtype=tl.float32), 0)     # running sums of q.dq, k.dk
    run_k = tl.sum(tl.zeros([BT], dtype=tl.float32), 0)
    for i in range(i_seg * CPS, tl.minimum(i_seg * CPS + CPS, NT)):
        pos = _sweep_pos(i, i_dir, NT, BT)
        b_q, m_k = _load_tile(q, i_b, i_h, pos, T, H, K, BK)
        b_k, _ = _load_tile(k, i_b, i_h, pos, T, H, K, BK)
        b_v, m_v = _load_tile(v, i_b, i_h, pos, T, H, V, BV)
        b_do, _ = _load_tile(do, i_b, i_h, pos, T, H, V, BV)
        qf, kf = b_q.to(tl.float32), b_k.to(tl.float32)
        m_t = (pos >= 0) & (pos < T)
        p_g = g + i_b * sg_b + pos * sg_t + i_h * sg_h
        C, C_last = _own_decay(p_g + i_dir * sg_d, m_t)
        E, E_tot = _other_decay(p_g + i_oth * sg_d, m_t)

        A = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION)     # q_t . k_s
        dA = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)   # do_t . v_s
        # own scan: dq
        M = tl.exp(tl.where(causal, C[:, None] - C[None, :], float('-inf')))
        b_dq = tl.dot(dA * M, kf, input_precision=PRECISION)
        b_dq += tl.exp(C)[:, None] * tl.dot(b_do.to(tl.float32), tl.trans(S),
                                            input_precision=PRECISION)
        b_dq *= scale
        p_dq, _ = _chunk_ptrs(dq + i_dir * B * T * H * K, i_b, i_h, pos, T, H, K, BK)
        tl.store(p_dq, b_dq.to(p_dq.dtype.element_ty), mask=m_k)
        S = _state_step(S, tl.exp(C_last), b_k * tl.exp(C_last - C)[:, None], b_v,
                        NEED_DG, PRECISION)
        # other scan: dk, dv
        N = tl.exp(tl.where(anti, E[None, :] - E[:, None], float('-inf')))
        b_dk = tl.dot(tl.trans(dA * N), qf, input_precision=PRECISION)
        b_dk += tl.exp(E)[:, None] * tl.dot(b_v.to(tl.float32), tl.trans(dH),
                                            input_precision=PRECISION)
        b_dk *= scale
        b_dv = tl.dot(tl.trans(A * N).to(b_do.dtype), b_do, input_precision=PRECISION)
        b_dv += tl.exp(E)[:, None] * tl.dot(b_k, dH.to(b_k.dtype), input_precision=PRECISION)
        b_dv *= scale
        p_dk, _ = _chunk_ptrs(dk + i_oth * B * T * H * K, i_b, i_h, pos, T, H, K, BK)
        p_dv, _ = _chunk_ptrs(dv + i_oth * B * T * H * V, i_b, i_h, pos, T, H, V, BV)
        tl.store(p_dk, b_dk.to(p_dk.dtype.element_ty), mask=m_k)
        tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), mask=m_v)
        dH = _state_step(dH, tl.exp(E_tot), b_q * tl.exp(E_tot - E)[:, None], b_do,
                         NEED_DG, PRECISION)
        if NEED_DG:
            p_dg = dg + (i_b * T + pos) * H + i_h
            a = tl.sum(qf * b_dq, 1)
            b = tl.sum(kf * b_dk, 1)
            if SEGMENTED:
                tl.store(p_dg + (i_dir * 2) * B * T * H, a, mask=m_t)
                tl.store(p_dg + (i_oth * 2 + 1) * B * T * H, b, mask=m_t)
            else:
                tl.store(p_dg + (i_dir * 2) * B * T * H, run_q + tl.cumsum(a, 0) - a, mask=m_t)
                tl.store(p_dg + (i_oth * 2 + 1) * B * T * H, run_k + tl.cumsum(b, 0), mask=m_t)
            run_q += tl.sum(a, 0)
            run_k += tl.sum(b, 0)
    if NEED_DG and not SEGMENTED:
        tl.store(dg_tot + (i_dir * B + i_b) * H + i_h, run_q)


@triton.jit
def _gla_segment_start(S, seg_S, seg_G, row, i_seg, NSEG, BK: tl.constexpr, BV: tl.constexpr):
    """:func:`_segment_start` with per-key-channel total log decays seg_G [.., NSEG, BK]."""
    ck = tl.arange(0, BK)
    for j in range(0, i_seg):
        S = S * tl.exp(tl.load(seg_G + (row * NSEG + j) * BK + ck))[:, None] + \
            tl.load(_kv_tile(seg_S + (row * NSEG + j) * BK * BV, BK, BV))
    return S


@triton.jit
def _bi_gla_seg_state_kernel(q, k, v, g, do, seg_S, seg_G, seg_dH, seg_E, T, H, sg_d, sg_b,
                             sg_t, sg_h, CPS, NSEG, K: tl.constexpr, V: tl.constexpr,
                             BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                             PRECISION: tl.constexpr, BACKWARD: tl.constexpr):
    """:func:`_bi_seg_state_kernel` with per-key-channel decays: each segment's local state
    (and adjoint state) from zero and its total log decay per key channel. Every decay
    factor here is exp of a partial sum within the chunk (<= 1), so no chunk needs the
    exact steps."""
    i_bh, i_dir, i_seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    i_oth = 1 - i_dir
    row = i_dir * (tl.num_programs(0)) + i_bh
    NT = tl.cdiv(T, BT)
    ck = tl.arange(0, BK)
    S = tl.zeros([BK, BV], dtype=tl.float32)
    dH = tl.zeros([BK, BV], dtype=tl.float32)
    G = tl.zeros([BK], dtype=tl.float32)
    Eg = tl.zeros([BK], dtype=tl.float32)
    for i in range(i_seg * CPS, tl.minimum(i_seg * CPS + CPS, NT)):
        pos = _sweep_pos(i, i_dir, NT, BT)
        b_k, m_k = _load_tile(k, i_b, i_h, pos, T, H, K, BK)
        b_v, _ = _load_tile(v, i_b, i_h, pos, T, H, V, BV)
        p_g = g + i_b * sg_b + pos[:, None] * sg_t + i_h * sg_h + ck[None, :]
        C, C_last = _own_decay(p_g + i_dir * sg_d, m_k)
        S = _state_step(S, tl.exp(C_last)[:, None], b_k * tl.exp(C_last[None, :] - C), b_v,
                        BACKWARD, PRECISION)
        G += C_last
        if BACKWARD:
            b_q, _ = _load_tile(q, i_b, i_h, pos, T, H, K, BK)
            b_do, _ = _load_tile(do, i_b, i_h, pos, T, H, V, BV)
            E, E_tot = _other_decay(p_g + i_oth * sg_d, m_k)
            dH = _state_step(dH, tl.exp(E_tot)[:, None], b_q * tl.exp(E_tot[None, :] - E), b_do,
                             True, PRECISION)
            Eg += E_tot
    tl.store(_kv_tile(seg_S + (row * NSEG + i_seg) * BK * BV, BK, BV), S)
    tl.store(seg_G + (row * NSEG + i_seg) * BK + ck, G)
    if BACKWARD:
        tl.store(_kv_tile(seg_dH + (row * NSEG + i_seg) * BK * BV, BK, BV), dH)
        tl.store(seg_E + (row * NSEG + i_seg) * BK + ck, Eg)


@triton.jit
def _gla_fwd_step_exact(q, k, v, g, o_dir, S, scale, pos, i_b, i_h, i_dir, T, H, sg_d, sg_b,
                        sg_t, sg_h, K: tl.constexpr, V: tl.constexpr, BC: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr):
    """One BC-token step of a GLA sweep, exact for any decay: the intra-chunk scores sum
    q_tc k_sc exp(C_tc - C_sc) over channels as a [BC, BC, BK] tensor."""
    ar = tl.arange(0, BC)
    ck = tl.arange(0, BK)
    causal = ar[:, None] >= ar[None, :]
    b_q, m_k = _load_tile(q, i_b, i_h, pos, T, H, K, BK)
    b_k, _ = _load_tile(k, i_b, i_h, pos, T, H, K, BK)
    b_v, m_v = _load_tile(v, i_b, i_h, pos, T, H, V, BV)
    p_g = g + i_dir * sg_d + i_b * sg_b + pos[:, None] * sg_t + i_h * sg_h + ck[None, :]
    C, C_last = _own_decay(p_g, m_k)
    D = tl.where(causal[:, :, None], C[:, None, :] - C[None, :, :], float('-inf'))
    A = tl.sum(b_q.to(tl.float32)[:, None, :] * b_k.to(tl.float32)[None, :, :] * tl.exp(D), 2)
    b_o = tl.dot(A.to(b_v.dtype), b_v, input_precision=PRECISION)
    b_o += tl.dot((b_q * tl.exp(C)).to(b_q.dtype), S.to(b_q.dtype), input_precision=PRECISION)
    p_o, _ = _chunk_ptrs(o_dir, i_b, i_h, pos, T, H, V, BV)
    tl.store(p_o, (b_o * scale).to(p_o.dtype.element_ty), mask=m_v)
    return _state_step(S, tl.exp(C_last)[:, None], b_k * tl.exp(C_last[None, :] - C), b_v,
                       False, PRECISION)


@triton.jit
def _bi_gla_fwd_kernel(q, k, v, g, o, seg_S, seg_G, scale, T, H, sg_d, sg_b, sg_t, sg_h, CPS,
                       NSEG, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                       BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       PRECISION: tl.constexpr, SAFE: tl.constexpr, SEGMENTED: tl.constexpr):
    """:func:`_bi_fwd_kernel` with per-key-channel decays g [2, B, T, H, K] (GLA).

    A chunk whose channels all decay by less than exp(-SAFE) in total takes the tensor-core
    form, scores = (q * exp(C)) (k * exp(-C))^T masked (exp(-C) <= exp(SAFE) cannot
    overflow); any other chunk is done in BC-token steps by :func:`_gla_fwd_step_exact`."""
    i_bh, i_dir, i_seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_b, i_h = i_bh // H, i_bh % H
    NT = tl.cdiv(T, BT)
    NS: tl.constexpr = BT // BC
    ar = tl.arange(0, BT)
    ck = tl.arange(0, BK)
    causal = ar[:, None] >= ar[None, :]
    o_dir = o + i_dir * (tl.num_programs(0) // H) * T * H * V
    S = tl.zeros([BK, BV], dtype=tl.float32)
    if SEGMENTED:
        S = _gla_segment_start(S, seg_S, seg_G, i_dir * tl.num_programs(0) + i_bh, i_seg, NSEG,
                               BK, BV)
    for i in range(i_seg * CPS, tl.minimum(i_seg * CPS + CPS, NT)):
        pos = _sweep_pos(i, i_dir, NT, BT)
        b_q, m_k = _load_tile(q, i_b, i_h, pos, T, H, K, BK)
        p_g = g + i_dir * sg_d + i_b * sg_b + pos[:, None] * sg_t + i_h * sg_h + ck[None, :]
        C, C_last = _own_decay(p_g, m_k)                        # [BT, BK], [BK]
        if tl.min(C_last, 0) > -SAFE:
            b_k, _ = _load_tile(k, i_b, i_h, pos, T, H, K, BK)
            b_v, m_v = _load_tile(v, i_b, i_h, pos, T, H, V, BV)
            b_qg = (b_q * tl.exp(C)).to(b_q.dtype)
            A = tl.dot(b_qg, tl.trans((b_k * tl.exp(-C)).to(b_k.dtype)),
                       input_precision=PRECISION)
            A = tl.where(causal, A, 0.)
            b_o = tl.dot(A.to(b_v.dtype), b_v, input_precision=PRECISION)
            b_o += tl.dot(b_qg, S.to(b_q.dtype), input_precision=PRECISION)
            p_o, _ = _chunk_ptrs(o_dir, i_b, i_h, pos, T, H, V, BV)
            tl.store(p_o, (b_o * scale).to(p_o.dtype.element_ty), mask=m_v)
            S = _state_step(S, tl.exp(C_last)[:, None], b_k * tl.exp(C_last[None, :] - C), b_v,
                            False, PRECISION)
        else:
            for j in range(NS):     # a loop, not inlined copies: 3x faster compile, fewer spills
                pos_j = _sweep_pos(i * NS + j, i_dir, NT * NS, BC)
                S = _gla_fwd_step_exact(q, k, v, g, o_dir, S, scale, pos_j, i_b, i_h, i_dir, T,
                                        H, sg_d, sg_b, sg_t, sg_h, K, V, BC, BK, BV, PRECISION)


# ---- GLA backward: dq of the own scan and dk, dv of the other scan in separate programs,
# each carrying one [BK, BV] state. One program carrying both (as the scalar-decay backward
# does) used all 255 registers and spilled 10-11 KB per thread (ptxas -v, `tools/benchmark.py
# compile`); split, GLA's forward+backward ran 1.3x faster at 4096 and 16384 tokens on an
# H200 (README).

@triton.jit
def _dg_piece(dg, x, run, slot, pos, m_k, i_b, i_h, B, T, H, K: tl.constexpr,
              BK: tl.constexpr, EXCLUSIVE: tl.constexpr, SEGMENTED: tl.constexpr):
    """A chunk's per-token q.dq (slot 2 * direction, EXCLUSIVE running sums) or k.dk (slot
    2 * direction + 1, inclusive) pieces of the gate gradient; raw with segments."""
    p, _ = _chunk_ptrs(dg + slot * B * T * H * K, i_b, i_h, pos, T, H, K, BK)
    if SEGMENTED:
        tl.store(p, x, mask=m_k)
    elif EXCLUSIVE:
        tl.store(p, run[None, :] + tl.cumsum(x, 0) - x, mask=m_k)
    else:
        tl.store(p, run[None, :] + tl.cumsum(x, 0), mask=m_k)


@triton.jit
def _chunk_dA(k, v, do, i_b, i_h, pos, T, H, diag, K: tl.constexpr, V: tl.constexpr,
              BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr):
    """A chunk's k, v, do tiles (v's mask), dA = do v^T and its diagonal: what both parts of
    the GLA backward read first."""
    b_k, _ = _load_tile(k, i_b, i_h, pos, T, H, K, BK)
    b_v, m_v = _load_tile(v, i_b, i_h, pos, T, H, V, BV)
    b_do, _ = _load_tile(do, i_b, i_h, pos, T, H, V, BV)
    dA = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)
    return b_k, b_v, m_v, b_do, dA, tl.sum(tl.where(diag, dA, 0.), 1)


@triton.jit
def _gla_bwd_own_step_exact(q, k, v, g, do, dq, dg, S, run_q, scale, pos, i_b, i_h, i_dir, B,
                            T, H, sg_d, sg_b, sg_t, sg_h, K: tl.constexpr, V: tl.constexpr,
                            BC: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                            PRECISION: tl.constexpr, NEED_DG: tl.constexpr,
                            SEGMENTED: tl.constexpr):
    """One BC-token step of the dq sweep, exact for any decay ([BC, BC, BK])."""
    ar = tl.arange(0, BC)
    ck = tl.arange(0, BK)
    causal = ar[:, None] >= ar[None, :]
    b_q, m_k = _load_tile(q, i_b, i_h, pos, T, H, K, BK)
    b_k, _ = _load_tile(k, i_b, i_h, pos, T, H, K, BK)
    b_v, _ = _load_tile(v, i_b, i_h, pos, T, H, V, BV)
    b_do, _ = _load_tile(do, i_b, i_h, pos, T, H, V, BV)
    p_g = g + i_dir * sg_d + i_b * sg_b + pos[:, None] * sg_t + i_h * sg_h + ck[None, :]
    C, C_last = _own_decay(p_g, m_k)
    kf = b_k.to(tl.float32)
    dA = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)
    M = tl.exp(tl.where(causal[:, :, None], C[:, None, :] - C[None, :, :], float('-inf')))
    b_dq = tl.sum(dA[:, :, None] * kf[None, :, :] * M, 1)
    b_dq += tl.exp(C) * tl.dot(b_do.to(tl.float32), tl.trans(S), input_precision=PRECISION)
    b_dq *= scale
    p_dq, _ = _chunk_ptrs(dq + i_dir * B * T * H * K, i_b, i_h, pos, T, H, K, BK)
    tl.store(p_dq, b_dq.to(p_dq.dtype.element_ty), mask=m_k)
    S = _state_step(S, tl.exp(C_last)[:, None], b_k * tl.exp(C_last[None, :] - C), b_v,
                    NEED_DG, PRECISION)
    if NEED_DG:
        a = b_q.to(tl.float32) * b_dq
        _dg_piece(dg, a, run_q, 2 * i_dir, pos, m_k, i_b, i_h, B, T, H, K, BK, True, SEGMENTED)
        run_q += tl.sum(a, 0)
    return S, run_q


@triton.jit
def _gla_bwd_other_step_exact(q, k, v, g, do, dk, dv, dg, dH, run_k, scale, pos, i_b, i_h,
                              i_dir, B, T, H, sg_d, sg_b, sg_t, sg_h, K: tl.constexpr,
                              V: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
                              BV: tl.constexpr, PRECISION: tl.constexpr, NEED_DG: tl.constexpr,
                              SEGMENTED: tl.constexpr):
    """One BC-token step of the dk, dv sweep (of the other scan), exact for any decay."""
    i_oth = 1 - i_dir
    ar = tl.arange(0, BC)
    ck = tl.arange(0, BK)
    anti = ar[:, None] <= ar[None, :]
    b_q, m_k = _load_tile(q, i_b, i_h, pos, T, H, K, BK)
    b_k, _ = _load_tile(k, i_b, i_h, pos, T, H, K, BK)
    b_v, m_v = _load_tile(v, i_b, i_h, pos, T, H, V, BV)
    b_do, _ = _load_tile(do, i_b, i_h, pos, T, H, V, BV)
    p_g = g + i_oth * sg_d + i_b * sg_b + pos[:, None] * sg_t + i_h * sg_h + ck[None, :]
    E, E_tot = _other_decay(p_g, m_k)
    qf, kf = b_q.to(tl.float32), b_k.to(tl.float32)
    dA = tl.dot(b_do, tl.trans(b_v), input_precision=PRECISION)
    N = tl.exp(tl.where(anti[:, :, None], E[None, :, :] - E[:, None, :], float('-inf')))
    b_dk = tl.sum(dA[:, :, None] * qf[:, None, :] * N, 0)
    b_dk += tl.exp(E) * tl.dot(b_v.to(tl.float32), tl.trans(dH), input_precision=PRECISION)
    b_dk *= scale
    A = tl.sum(qf[:, None, :] * kf[None, :, :] * N, 2)
    b_dv = tl.dot(tl.trans(A).to(b_do.dtype), b_do, input_precision=PRECISION)
    b_dv += tl.dot((b_k * tl.exp(E)).to(b_k.dtype), dH.to(b_k.dtype), input_precision=PRECISION)
    b_dv *= scale
    p_dk, _ = _chunk_ptrs(dk + i_oth * B * T * H * K, i_b, i_h, pos, T, H, K, BK)
    p_dv, _ = _chunk_ptrs(dv + i_oth * B * T * H * V, i_b, i_h, pos, T, H, V, BV)
    tl.store(p_dk, b_dk.to(p_dk.dtype.element_ty), mask=m_k)
    tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), mask=m_v)
    dH = _state_step(dH, tl.exp(E_tot)[:, None], b_q * tl.exp(E_tot[None, :] - E), b_do,
                     NEED_DG, PRECISION)
    if NEED_DG:
        b = kf * b_dk
        _dg_piece(dg, b, run_k, 2 * i_oth + 1, pos, m_k, i_b, i_h, B, T, H, K, BK, False,
                  SEGMENTED)
        run_k += tl.sum(b, 0)
    return dH, run_k


@triton.jit
def _bi_gla_bwd_kernel(q, k, v, g, do, dq, dk, dv, dg, dg_tot, seg_S, seg_G, seg_dH, seg_E,
                       scale, T, H, sg_d, sg_b, sg_t, sg_h, CPS, NSEG, K: tl.constexpr,
                       V: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
                       BV: tl.constexpr, PRECISION: tl.constexpr, NEED_DG: tl.constexpr,
                       SAFE: tl.constexpr, SEGMENTED: tl.constexpr):
    """:func:`_bi_bwd_kernel` for per-key-channel decays, as twice the programs: axis 1 is
    2 * part + direction; part 0 sweeps with the own scan's state S and writes dq, part 1
    with the other scan's adjoint state dH and writes dk, dv. dg is [2, 2, B, T, H, K] and
    dg_tot [2, B, H, K]; chunks that decay past exp(-SAFE) go in BC-token exact steps."""
    i_bh, i_pd, i_seg = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    i_part, i_dir = i_pd // 2, i_pd % 2
    i_b, i_h = i_bh // H, i_bh % H
    i_oth = 1 - i_dir
    B = tl.num_programs(0) // H
    NT = tl.cdiv(T, BT)
    NS: tl.constexpr = BT // BC
    ar = tl.arange(0, BT)
    ck = tl.arange(0, BK)
    diag = ar[:, None] == ar[None, :]
    row = i_dir * tl.num_programs(0) + i_bh
    if i_part == 0:
        strict = ar[:, None] > ar[None, :]            # [t, s]: s before t
        S = tl.zeros([BK, BV], dtype=tl.float32)
        if SEGMENTED:
            S = _gla_segment_start(S, seg_S, seg_G, row, i_seg, NSEG, BK, BV)
        run_q = tl.zeros([BK], dtype=tl.float32)
        for i in range(i_seg * CPS, tl.minimum(i_seg * CPS + CPS, NT)):
            pos = _sweep_pos(i, i_dir, NT, BT)
            b_q, m_k = _load_tile(q, i_b, i_h, pos, T, H, K, BK)
            p_g = g + i_dir * sg_d + i_b * sg_b + pos[:, None] * sg_t + i_h * sg_h + ck[None, :]
            C, C_last = _own_decay(p_g, m_k)
            if tl.min(C_last, 0) > -SAFE:
                b_k, b_v, _, b_do, dA, dA_diag = _chunk_dA(k, v, do, i_b, i_h, pos, T, H, diag,
                                                           K, V, BK, BV, PRECISION)
                kf = b_k.to(tl.float32)
                # dq = exp(C) * ((dA strictly below the diagonal) (k exp(-C)) + do S^T), and the
                # diagonal (s = t, no decay) added exactly: its q.dq and k.dk terms cancel in dg,
                # and TF32 rounding of k exp(-C) would leave ~5e-4 of each behind (at T=1,
                # where the true dg is 0, all of it)
                b_dq = tl.dot(tl.where(strict, dA, 0.), kf * tl.exp(-C),
                              input_precision=PRECISION)
                b_dq += tl.dot(b_do.to(tl.float32), tl.trans(S), input_precision=PRECISION)
                b_dq = (b_dq * tl.exp(C) + dA_diag[:, None] * kf) * scale
                p_dq, _ = _chunk_ptrs(dq + i_dir * B * T * H * K, i_b, i_h, pos, T, H, K, BK)
                tl.store(p_dq, b_dq.to(p_dq.dtype.element_ty), mask=m_k)
                S = _state_step(S, tl.exp(C_last)[:, None], b_k * tl.exp(C_last[None, :] - C), b_v,
                                NEED_DG, PRECISION)
                if NEED_DG:
                    a = b_q.to(tl.float32) * b_dq
                    _dg_piece(dg, a, run_q, 2 * i_dir, pos, m_k, i_b, i_h, B, T, H, K, BK, True,
                              SEGMENTED)
                    run_q += tl.sum(a, 0)
            else:
                for j in range(NS):
                    pos_j = _sweep_pos(i * NS + j, i_dir, NT * NS, BC)
                    S, run_q = _gla_bwd_own_step_exact(
                        q, k, v, g, do, dq, dg, S, run_q, scale, pos_j, i_b, i_h, i_dir, B, T,
                        H, sg_d, sg_b, sg_t, sg_h, K, V, BC, BK, BV, PRECISION, NEED_DG,
                        SEGMENTED)
        if NEED_DG and not SEGMENTED:
            tl.store(dg_tot + ((i_dir * B + i_b) * H + i_h) * K + ck, run_q, mask=ck < K)
    else:
        anti = ar[:, None] <= ar[None, :]
        later = ar[:, None] < ar[None, :]             # [t, s]: s after t
        dH = tl.zeros([BK, BV], dtype=tl.float32)
        if SEGMENTED:
            dH = _gla_segment_start(dH, seg_dH, seg_E, row, i_seg, NSEG, BK, BV)
        run_k = tl.zeros([BK], dtype=tl.float32)
        for i in range(i_seg * CPS, tl.minimum(i_seg * CPS + CPS, NT)):
            pos = _sweep_pos(i, i_dir, NT, BT)
            b_q, m_k = _load_tile(q, i_b, i_h, pos, T, H, K, BK)
            p_g = g + i_oth * sg_d + i_b * sg_b + pos[:, None] * sg_t + i_h * sg_h + ck[None, :]
            E, E_tot = _other_decay(p_g, m_k)
            if tl.min(E_tot, 0) > -SAFE:
                b_k, b_v, m_v, b_do, dA, dA_diag = _chunk_dA(k, v, do, i_b, i_h, pos, T, H,
                                                             diag, K, V, BK, BV, PRECISION)
                qf, kf = b_q.to(tl.float32), b_k.to(tl.float32)
                # other scan: decay exp(E_s - E_t) = exp(E_s) exp(-E_t), t <= s
                q_hat = qf * tl.exp(-E)
                b_dk = tl.dot(tl.trans(tl.where(later, dA, 0.)), q_hat,
                              input_precision=PRECISION)
                b_dk += tl.dot(b_v.to(tl.float32), tl.trans(dH), input_precision=PRECISION)
                b_dk = (b_dk * tl.exp(E) + dA_diag[:, None] * qf) * scale
                b_ke = (b_k * tl.exp(E)).to(b_k.dtype)
                A = tl.dot(q_hat.to(b_q.dtype), tl.trans(b_ke), input_precision=PRECISION)
                A = tl.where(anti, A, 0.)
                b_dv = tl.dot(tl.trans(A).to(b_do.dtype), b_do, input_precision=PRECISION)
                b_dv += tl.dot(b_ke, dH.to(b_k.dtype), input_precision=PRECISION)
                b_dv *= scale
                p_dk, _ = _chunk_ptrs(dk + i_oth * B * T * H * K, i_b, i_h, pos, T, H, K, BK)
                p_dv, _ = _chunk_ptrs(dv + i_oth * B * T * H * V, i_b, i_h, pos, T, H, V, BV)
                tl.store(p_dk, b_dk.to(p_dk.dtype.element_ty), mask=m_k)
                tl.store(p_dv, b_dv.to(p_dv.dtype.element_ty), mask=m_v)
                dH = _state_step(dH, tl.exp(E_tot)[:, None], b_q * tl.exp(E_tot[None, :] - E), b_do,
                                 NEED_DG, PRECISION)
                if NEED_DG:
                    b = kf * b_dk
                    _dg_piece(dg, b, run_k, 2 * i_oth + 1, pos, m_k, i_b, i_h, B, T, H, K, BK,
                              False, SEGMENTED)
                    run_k += tl.sum(b, 0)
            else:
                for j in range(NS):
                    pos_j = _sweep_pos(i * NS + j, i_dir, NT * NS, BC)
                    dH, run_k = _gla_bwd_other_step_exact(
                        q, k, v, g, do, dk, dv, dg, dH, run_k, scale, pos_j, i_b, i_h, i_dir,
                        B, T, H, sg_d, sg_b, sg_t, sg_h, K, V, BC, BK, BV, PRECISION, NEED_DG,
                        SEGMENTED)


def _meta(q, v, per_channel):
    K, V = q.shape[-1], v.shape[-1]
    BK, BV = max(16, triton.next_power_of_2(K)), max(16, triton.next_power_of_2(V))
    if BK > 128 or BV > 128:
        raise ValueError(f'fused bidirectional kernel: head dims up to 128 (got K={K}, V={V})')
    meta = dict(K=K, V=V, BT=CHUNK, BK=BK, BV=BV,
                PRECISION='ieee' if q.dtype == torch.float32 else 'tf32')
    if per_channel:
        meta.update(BC=GLA_STEP, SAFE=GLA_SAFE)
    return meta


# launch configs (fixed: nothing to autotune on a cold machine); head dims > 64 double warps
# (measured on an H200 at B=8, H=6, d=64, bf16: 3 stages halve the forward at 16k tokens)
FWD_CONFIG = dict(num_warps=4, num_stages=3)
BWD_CONFIG = dict(num_warps=4, num_stages=2)


def _config(meta, backward):
    cfg = dict(BWD_CONFIG if backward else FWD_CONFIG)
    if meta['BK'] * meta['BV'] > 64 * 64:
        cfg['num_warps'] = max(cfg['num_warps'], 8)
    return cfg


# Segments per sweep. None (default): as measured on an H200 (B=8, H=6, d=64, bf16,
# forward+backward; README). Scalar decay: one below 4096 tokens, eight from there
# (simple_gla 3.4 against 4.5 ms at 16384, RetNet 2.7 against 3.6). GLA's backward (twice the
# programs already): one at every length (1.09 / 1.91 / 7.54 ms at 1024 / 4096 / 16384 tokens
# against 1.32 / 2.12 / 7.84 with eight). GLA's forward (one program per batch x head x
# direction, 96 on 132 SMs at B=8, H=6): GLA_FWD_SEGMENTS from LONG_TOKENS (7.08 against
# 7.67 ms at 16384, 1.95 against 2.03 at 4096); the passes need not agree, each sums its own
# segment states. An int SEGMENTS forces that many everywhere (tests, tools/benchmark.py
# --fused-segments).
SEGMENTS = None
LONG_TOKENS, LONG_SEGMENTS = 4096, 8
GLA_FWD_SEGMENTS = 8


def _segments(T, BT, per_channel=False, backward=False):
    """(segments, chunks per segment) of one pass over T tokens, no segment empty."""
    NT = triton.cdiv(T, BT)
    if SEGMENTS is not None:
        want = SEGMENTS
    elif per_channel:
        want = GLA_FWD_SEGMENTS if not backward and T >= LONG_TOKENS else 1
    else:
        want = LONG_SEGMENTS if T >= LONG_TOKENS else 1
    n = max(1, min(want, NT))
    cps = triton.cdiv(NT, n)
    return triton.cdiv(NT, cps), cps


def _kernels(meta, per_channel, backward):
    """What one pass (forward or backward) launches: the segment-state kernel and its
    constexprs, the main kernel (whose constexprs are ``meta``) and its programs per
    (batch x head, segment). Used by the autograd function and by
    ``tools/benchmark.py compile``."""
    state = _bi_gla_seg_state_kernel if per_channel else _bi_seg_state_kernel
    state_meta = {n: meta[n] for n in ('K', 'V', 'BT', 'BK', 'BV', 'PRECISION')}
    if not backward:
        return state, state_meta, _bi_gla_fwd_kernel if per_channel else _bi_fwd_kernel, 2
    if per_channel:                       # axis 1: 2 * part + direction
        return state, state_meta, _bi_gla_bwd_kernel, 4
    return state, state_meta, _bi_bwd_kernel, 2


class _FusedBiDecayAttn(torch.autograd.Function):
    """g: [2, B, T, H] (scalar decay) or [2, B, T, H, K] (per key channel), direction first."""

    @staticmethod
    def forward(ctx, q, k, v, g, scale):
        B, T, H, _ = q.shape
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        per_channel = g.dim() == 5
        if per_channel and g.stride(-1) != 1:
            g = g.contiguous()
        meta = _meta(q, v, per_channel)
        o2 = q.new_empty(2, B, T, H, v.shape[-1], dtype=v.dtype)
        nseg, cps = _segments(T, meta['BT'], per_channel)
        seg_S, seg_G = _segment_buffers(q, B * H, nseg, meta)
        state_kernel, seg_meta, kernel, programs = _kernels(meta, per_channel, False)
        if nseg > 1:
            state_kernel[(B * H, 2, nseg - 1)](
                q, k, v, g, q, seg_S, seg_G, seg_S, seg_G, T, H, *g.stride()[:4], cps, nseg,
                **seg_meta, BACKWARD=False, **_config(meta, False))
        kernel[(B * H, programs, nseg)](q, k, v, g, o2, seg_S, seg_G, scale, T, H,
                                        *g.stride()[:4], cps, nseg, **meta,
                                        SEGMENTED=nseg > 1, **_config(meta, False))
        ctx.save_for_backward(q, k, v, g)
        ctx.scale, ctx.meta, ctx.per_channel = scale, meta, per_channel
        return o2[0] + o2[1]

    @staticmethod
    def backward(ctx, do):
        q, k, v, g = ctx.saved_tensors
        B, T, H, K = q.shape
        meta = ctx.meta
        need_dg = ctx.needs_input_grad[3]
        do = do.contiguous()
        dq2, dk2 = q.new_empty(2, *q.shape), k.new_empty(2, *k.shape)
        dv2 = v.new_empty(2, *v.shape)
        state_kernel, seg_meta, kernel, programs = _kernels(meta, ctx.per_channel, True)
        if need_dg:
            dg = q.new_empty(2, 2, *g.shape[1:], dtype=torch.float32)
            dg_tot = q.new_empty(2, B, H, *g.shape[4:], dtype=torch.float32)
        else:
            dg = dg_tot = q.new_empty(1)
        nseg, cps = _segments(T, meta['BT'], ctx.per_channel, backward=True)
        seg_S, seg_G = _segment_buffers(q, B * H, nseg, meta)
        seg_dH, seg_E = _segment_buffers(q, B * H, nseg, meta)
        if nseg > 1:
            state_kernel[(B * H, 2, nseg - 1)](
                q, k, v, g, do, seg_S, seg_G, seg_dH, seg_E, T, H, *g.stride()[:4], cps, nseg,
                **seg_meta, BACKWARD=True, **_config(meta, True))
        kernel[(B * H, programs, nseg)](q, k, v, g, do, dq2, dk2, dv2, dg, dg_tot, seg_S, seg_G,
                                        seg_dH, seg_E, ctx.scale, T, H, *g.stride()[:4], cps,
                                        nseg, **meta, NEED_DG=need_dg,
                                        SEGMENTED=nseg > 1, **_config(meta, True))
        dgrad = None
        if need_dg and nseg == 1:
            # gradient of each direction's log decays: the kernels left the sums (see above)
            # (in g's own layout where it has one: a stacked view's gradient needs no copy)
            dgrad = torch.sub(dg_tot.unsqueeze(2), dg[:, 0], out=torch.empty_like(g))
            dgrad.sub_(dg[:, 1])
        elif need_dg:
            # per-token dG = q.dq - k.dk; forward gates reach every later t (suffix sum),
            # backward gates every earlier t (prefix sum); scanned along a contiguous T axis
            d = (dg[:, 0] - dg[:, 1]).movedim(2, -1).contiguous()
            pre = d.cumsum(-1)
            dgrad = torch.stack([pre[0][..., -1:] - pre[0] + d[0], pre[1]]).movedim(-1, 2)
        # sums in place: no third buffer per gradient at the backward's peak (the pair's
        # storage lives on only until autograd has passed the gradient on)
        return dq2[0].add_(dq2[1]), dk2[0].add_(dk2[1]), dv2[0].add_(dv2[1]), dgrad, None


def _segment_buffers(q, BH, nseg, meta):
    """Per-segment local states [2, BH, nseg, BK, BV] and total log decays [2, BH, nseg]
    (per key channel, [2, BH, nseg, BK], for GLA)."""
    if nseg == 1:
        return q.new_empty(1, dtype=torch.float32), q.new_empty(1, dtype=torch.float32)
    channels = (meta['BK'],) if 'BC' in meta else ()
    return (q.new_empty(2, BH, nseg, meta['BK'], meta['BV'], dtype=torch.float32),
            q.new_empty(2, BH, nseg, *channels, dtype=torch.float32))


def fused_bi_decay_attn(q, k, v, gf, gb=None, scale=None, stacked=False):
    """Both scans of decayed linear attention in one kernel pair (see module docstring).

    ``gf`` / ``gb``: log decays of the forward / backward scan, [B, T, H] (simple_gla, RetNet)
    or [B, T, H, K] (GLA); ``gb=None``: the same tensor. A stride-0 expanded tensor is read
    without being materialised. ``stacked=True``: ``gf`` is [B, T, 2, H(, K)], both directions
    (forward first, ``gb`` None), read through a view: no stacked copy, and its gradient comes
    back in the same layout.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if stacked:
        g = gf.movedim(2, 0)
    elif gb is None or gb is gf:
        g = gf.unsqueeze(0).expand(2, *gf.shape)
    else:
        g = torch.stack([gf, gb])
    return _FusedBiDecayAttn.apply(q, k, v, g, scale)
