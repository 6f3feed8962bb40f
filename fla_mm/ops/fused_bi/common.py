"""Triton helpers that the scalar-decay and the per-key-channel kernels share: tile pointers
and loads in sweep order, the chunk's cumulative log decays of either scan, the state update."""
import triton
import triton.language as tl


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
    dq side and the dk side round differently, and with bf16 states that rounding grows with
    the length (about as sqrt(L)). fp32 states keep the bf16 gate gradient at the level of
    FLA's two-call path for a small cost in time; 'tf32x3' dots would make it nearly exact at
    a large one (errors and times: docs/benchmarks.md, gate-gradient precision)."""
    if F32:
        return S * decay + tl.dot(tl.trans(x), y.to(tl.float32), input_precision=PRECISION)
    return S * decay + tl.dot(tl.trans(x.to(y.dtype)), y, input_precision=PRECISION)


@triton.jit
def _rotary_angles(rot, pos, i_dir, T, BK: tl.constexpr):
    """cos and sin [BT, BK // 2] of the rotary angles of the tokens at ``pos``, at their
    positions along direction i_dir's scanned sequence (t forward, T - 1 - t backward), read
    from the table ``rot`` [2, T, BK // 2] (cos, sin by position: ``ops.rotary``'s values, so
    the rotation is the one made in PyTorch; one table serves both directions)."""
    p = tl.where(i_dir == 0, pos, T - 1 - pos)
    m = ((pos >= 0) & (pos < T))[:, None]
    offs = p[:, None] * (BK // 2) + tl.arange(0, BK // 2)[None, :]
    return (tl.load(rot + offs, mask=m, other=1.),
            tl.load(rot + T * (BK // 2) + offs, mask=m, other=0.))


@triton.jit
def _rotate(x, cos, sin, BT: tl.constexpr, BK: tl.constexpr):
    """Non-interleaved rotary embedding of a [BT, BK] tile (``ops.rotary``): halves (x1, x2)
    -> (x1 cos - x2 sin, x2 cos + x1 sin), in fp32. With -sin it is the inverse rotation,
    which takes a gradient back to the unrotated q or k."""
    halves = tl.permute(tl.reshape(x.to(tl.float32), [BT, 2, BK // 2]), (0, 2, 1))
    x1, x2 = tl.split(halves)
    y = tl.join(x1 * cos - x2 * sin, x2 * cos + x1 * sin)
    return tl.reshape(tl.permute(y, (0, 2, 1)), [BT, BK])
