"""Kernels for a scalar log decay per head and token (simple_gla, RetNet): forward, backward
(one program carries both states of its direction) and the segment-state pass."""
import triton
import triton.language as tl

from .common import (_chunk_ptrs, _kv_tile, _load_tile, _other_decay, _own_decay, _state_step,
                     _sweep_pos)


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
