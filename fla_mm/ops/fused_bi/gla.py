"""Kernels for a log decay per key channel (GLA): forward, the split backward (dq in one
program, dk and dv in another), the segment-state pass, and the exact 16-token steps that
chunks decaying past exp(-SAFE) take instead of the tensor-core form."""
import triton
import triton.language as tl

from .common import (_chunk_ptrs, _kv_tile, _load_tile, _other_decay, _own_decay, _state_step,
                     _sweep_pos)


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
            for j in range(NS):     # a loop, not inlined copies: compiles faster, spills less
                pos_j = _sweep_pos(i * NS + j, i_dir, NT * NS, BC)
                S = _gla_fwd_step_exact(q, k, v, g, o_dir, S, scale, pos_j, i_b, i_h, i_dir, T,
                                        H, sg_d, sg_b, sg_t, sg_h, K, V, BC, BK, BV, PRECISION)


# ---- GLA backward: dq of the own scan and dk, dv of the other scan in separate programs,
# each carrying one [BK, BV] state. One program carrying both (as the scalar-decay backward
# does) ran out of registers and spilled (ptxas -v, `tools/benchmark.py compile`); split, it
# is faster (docs/benchmarks.md, the fused bidirectional kernel).

@triton.jit
def _dg_piece(dg, x, run, slot, pos, m_k, i_b, i_h, B, T, H, K: tl.constexpr,
              BK: tl.constexpr, EXCLUSIVE: tl.constexpr, SEGMENTED: tl.constexpr):
    """A chunk's per-token q.dq (slot 2 * direction, EXCLUSIVE running sums) or k.dk (slot
    2 * direction + 1, inclusive) pieces of the gate gradient; raw with segments. The slot's
    offset is 64-bit: four slots of [B, T, H, K] pass 2^31 elements at B*H = 96, 65536 tokens
    and d = 128."""
    p, _ = _chunk_ptrs(dg + slot.to(tl.int64) * B * T * H * K, i_b, i_h, pos, T, H, K, BK)
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
