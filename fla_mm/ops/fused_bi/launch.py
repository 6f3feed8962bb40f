"""What a call launches: block sizes, launch options and segments per sweep, the kernels of a
pass, and the two passes that run them on real tensors (:func:`run_forward`,
:func:`run_backward`) beside their fake counterparts (the same allocations, no launches), which
``op.py`` registers as the custom ops' implementations."""
import torch
import triton

from .chunked import (_chunk_bwd_kernel, _chunk_fwd_kernel, _chunk_gate_grad_kernel,
                      _chunk_gla_bwd_kernel, _chunk_gla_fwd_kernel, _chunk_scan_kernel,
                      _chunk_state_kernel)
from .config import DEFAULT_CONFIG
from .gla import _bi_gla_bwd_kernel, _bi_gla_fwd_kernel, _bi_gla_seg_state_kernel
from .scalar import _bi_bwd_kernel, _bi_fwd_kernel, _bi_seg_state_kernel

CHUNK = 64        # tokens per chunk
GLA_STEP = 16     # per-key-channel decay, exact fallback: tokens per [BC, BC, BK] step
GLA_SAFE = 60.0   # ... taken by chunks that decay by more than exp(-GLA_SAFE) in a channel


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


def _launch_options(meta, backward, config):
    """num_warps / num_stages of a pass's launches: the config's, with at least 8 warps for
    head dims above 64."""
    if backward:
        options = dict(num_warps=config.bwd_warps, num_stages=config.bwd_stages)
    else:
        options = dict(num_warps=config.fwd_warps, num_stages=config.fwd_stages)
    if meta['BK'] * meta['BV'] > 64 * 64:
        options['num_warps'] = max(options['num_warps'], 8)
    return options


def _segments(T, BT, per_channel=False, backward=False, config=DEFAULT_CONFIG):
    """(segments, chunks per segment) of one pass over T tokens, no segment empty."""
    NT = triton.cdiv(T, BT)
    if config.segments is not None:
        want = config.segments
    elif per_channel:
        want = config.gla_fwd_segments if not backward and T >= config.long_tokens else 1
    else:
        want = config.long_segments if T >= config.long_tokens else 1
    n = max(1, min(want, NT))
    cps = triton.cdiv(NT, n)
    return triton.cdiv(NT, cps), cps


def _kernels(meta, per_channel, backward):
    """What one pass (forward or backward) launches: the segment-state kernel and its
    constexprs, the main kernel (whose constexprs are ``meta``) and its programs per
    (batch x head, segment). Used by the two passes and by
    ``tools/benchmark.py compile``."""
    state = _bi_gla_seg_state_kernel if per_channel else _bi_seg_state_kernel
    state_meta = {n: meta[n] for n in ('K', 'V', 'BT', 'BK', 'BV', 'PRECISION')}
    if not backward:
        return state, state_meta, _bi_gla_fwd_kernel if per_channel else _bi_fwd_kernel, 2
    if per_channel:                       # axis 1: 2 * part + direction
        return state, state_meta, _bi_gla_bwd_kernel, 4
    return state, state_meta, _bi_bwd_kernel, 2


def _prepared(q, k, v, g):
    """The layouts the kernels index: contiguous q, k, v (a no-op where they are, as the
    caller makes them) and, per key channel, gates whose channel stride is 1 (the kernels read
    g's other strides as they are: a stride-0 or stacked view is not materialised)."""
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if g.dim() == 5 and g.stride(-1) != 1:
        g = g.contiguous()
    return q, k, v, g


def _output_pair(v):
    """Both directions' outputs [2, B, T, H, V], summed into the result by :func:`_sum_pair`."""
    return v.new_empty(2, *v.shape)


def _sum_pair(x2):
    return x2[0] + x2[1]


def run_forward(q, k, v, g, scale, config, rot=None):
    """The forward pass: o [B, T, H, V] of q, k [B, T, H, K] (or each direction its own,
    [2, B, T, H, K]: the chunked form only), v [B, T, H, V] and g [2, B, T, H] (scalar decay)
    or [2, B, T, H, K] (per key channel), direction first; ``config`` a
    :class:`FusedBiConfig`. ``rot``: the rotary table [2, T, K / 2] (cos, sin; fp32), which
    the chunked kernels apply to q, k at each direction's own positions (scalar decay, one
    q, k, a power-of-two head dim; :func:`check_rotary`). A fresh tensor, no view of an
    input."""
    q, k, v, g = _prepared(q, k, v, g)
    B, T, H, _ = v.shape
    per_channel = g.dim() == 5
    meta = _meta(q, v, per_channel)
    check_rotary(rot, q, g)
    if _chunked(config, q, rot):
        return _chunked_forward(q, k, v, g, scale, meta, _launch_options(meta, False, config),
                                config, rot)
    o2 = _output_pair(v)
    nseg, cps = _segments(T, meta['BT'], per_channel, config=config)
    seg_S, seg_G = _segment_buffers(q, B * H, nseg, meta)
    state_kernel, seg_meta, kernel, programs = _kernels(meta, per_channel, False)
    options = _launch_options(meta, False, config)
    if nseg > 1:
        state_kernel[(B * H, 2, nseg - 1)](
            q, k, v, g, q, seg_S, seg_G, seg_S, seg_G, T, H, *g.stride()[:4], cps, nseg,
            **seg_meta, BACKWARD=False, **options)
    kernel[(B * H, programs, nseg)](q, k, v, g, o2, seg_S, seg_G, scale, T, H,
                                    *g.stride()[:4], cps, nseg, **meta,
                                    SEGMENTED=nseg > 1, **options)
    return _sum_pair(o2)


def fake_forward(q, k, v, g):
    """What :func:`run_forward` returns, allocated the same way, without running kernels."""
    q, k, v, g = _prepared(q, k, v, g)
    return _sum_pair(_output_pair(v))


def _backward_buffers(q, k, v, g, need_dg):
    """The backward kernel's outputs: both directions' dq, dk, dv [2, ...] and, where the gate
    gradient is asked for, its per-direction pieces dg [2, 2, B, T, H(, K)] and sums dg_tot
    [2, B, H(, K)] (fp32)."""
    B, _, H, _ = q.shape
    dq2, dk2, dv2 = _grad_pairs(q, k, v)
    if need_dg:
        dg = q.new_empty(2, 2, *g.shape[1:], dtype=torch.float32)
        dg_tot = q.new_empty(2, B, H, *g.shape[4:], dtype=torch.float32)
    else:
        dg = dg_tot = q.new_empty(1)
    return dq2, dk2, dv2, dg, dg_tot


def _grad_pairs(q, k, v):
    """Both scan directions' dq, dk, dv [2, ...], summed by :func:`_summed_grads` (per-direction
    q, k [2, B, T, H, K] are their own pair)."""
    pair = (lambda x: x.new_empty(x.shape if x.dim() == 5 else (2, *x.shape)))  # noqa: E731
    return pair(q), pair(k), pair(v)


def _direction_stride(q):
    """Elements between the two directions' q (and k): 0 where they share one [B, T, H, K],
    one direction's size for per-direction q, k [2, B, T, H, K] (the chunked kernels shift
    their q and k by direction x this)."""
    return q.stride(0) if q.dim() == 5 else 0


def _backward_results(g, nseg, need_dg, dq2, dk2, dv2, dg, dg_tot):
    """[dq, dk, dv] and, with ``need_dg``, the gate gradient in g's layout, from the backward
    kernel's buffers."""
    grads = []
    if need_dg and nseg == 1:
        # gradient of each direction's log decays: the kernels left the sums (see above)
        # (in g's own layout where it has one: a stacked view's gradient needs no copy)
        dgrad = torch.sub(dg_tot.unsqueeze(2), dg[:, 0], out=torch.empty_like(g))
        grads = [dgrad.sub_(dg[:, 1])]
    elif need_dg:
        grads = [_gate_grad_of_tokens(dg[:, 0] - dg[:, 1])]
    return _summed_grads(dq2, dk2, dv2) + grads


def _summed_grads(dq2, dk2, dv2, per_direction=False):
    """[dq, dk, dv], both directions' pieces summed in place: no third buffer per gradient at
    the backward's peak (the pair's storage lives on only until autograd has passed the
    gradient on). ``per_direction``: q, k were [2, B, T, H, K], so their gradients stay
    pairs (the buffers have the same shape either way: it cannot be read off them)."""
    if per_direction:
        return [dq2, dk2, dv2[0].add_(dv2[1])]
    return [dq2[0].add_(dq2[1]), dk2[0].add_(dk2[1]), dv2[0].add_(dv2[1])]


def _gate_grad_of_tokens(d):
    """The gate gradient [2, B, T, H(, K)] from the per-token dG = q.dq - k.dk of each scan
    direction (``d``, the same shape, fp32): forward gates reach every later t (suffix sum),
    backward gates every earlier t (prefix sum); scanned along a contiguous T axis. The
    segmented sweep's last step (the chunked form sums within its kernels)."""
    d = d.movedim(2, -1).contiguous()
    pre = d.cumsum(-1)
    return torch.stack([pre[0][..., -1:] - pre[0] + d[0], pre[1]]).movedim(-1, 2)


def run_backward(q, k, v, g, do, scale, config, need_dg, rot=None):
    """The backward pass of :func:`run_forward` for the output gradient ``do``: [dq, dk, dv]
    (dq, dk in q's shape: per direction where q is; with ``rot``, of the unrotated q, k),
    followed by the gradient of g (g's shape; in g's layout where it is dense) if
    ``need_dg`` (else the kernels skip the gate-gradient pieces). Fresh tensors, no views
    of inputs."""
    q, k, v, g = _prepared(q, k, v, g)
    B, T, H, _ = v.shape
    per_channel = g.dim() == 5
    meta = _meta(q, v, per_channel)
    do = do.contiguous()
    check_rotary(rot, q, g)
    if _chunked(config, q, rot):
        return _chunked_backward(q, k, v, g, do, scale, meta,
                                 _launch_options(meta, True, config), need_dg, config, rot)
    buffers = _backward_buffers(q, k, v, g, need_dg)
    dq2, dk2, dv2, dg, dg_tot = buffers
    state_kernel, seg_meta, kernel, programs = _kernels(meta, per_channel, True)
    nseg, cps = _segments(T, meta['BT'], per_channel, backward=True, config=config)
    seg_S, seg_G = _segment_buffers(q, B * H, nseg, meta)
    seg_dH, seg_E = _segment_buffers(q, B * H, nseg, meta)
    options = _launch_options(meta, True, config)
    if nseg > 1:
        state_kernel[(B * H, 2, nseg - 1)](
            q, k, v, g, do, seg_S, seg_G, seg_dH, seg_E, T, H, *g.stride()[:4], cps, nseg,
            **seg_meta, BACKWARD=True, **options)
    kernel[(B * H, programs, nseg)](q, k, v, g, do, dq2, dk2, dv2, dg, dg_tot, seg_S, seg_G,
                                    seg_dH, seg_E, scale, T, H, *g.stride()[:4], cps,
                                    nseg, **meta, NEED_DG=need_dg,
                                    SEGMENTED=nseg > 1, **options)
    return _backward_results(g, nseg, need_dg, *buffers)


def fake_backward(q, k, v, g, config, need_dg, rot=None):
    """What :func:`run_backward` returns (shapes, dtypes, strides), without running kernels."""
    q, k, v, g = _prepared(q, k, v, g)
    if _chunked(config, q, rot):
        buffers = _chunked_backward_buffers(q, k, v, g, need_dg)
        return _chunked_backward_results(g, q.dim() == 5, need_dg, *buffers)
    nseg, _ = _segments(q.shape[1], CHUNK, g.dim() == 5, backward=True, config=config)
    return _backward_results(g, nseg, need_dg, *_backward_buffers(q, k, v, g, need_dg))


def _segment_buffers(q, BH, nseg, meta):
    """Per-segment local states [2, BH, nseg, BK, BV] and total log decays [2, BH, nseg]
    (per key channel, [2, BH, nseg, BK], for GLA)."""
    if nseg == 1:
        return q.new_empty(1, dtype=torch.float32), q.new_empty(1, dtype=torch.float32)
    channels = (meta['BK'],) if 'BC' in meta else ()
    return (q.new_empty(2, BH, nseg, meta['BK'], meta['BV'], dtype=torch.float32),
            q.new_empty(2, BH, nseg, *channels, dtype=torch.float32))


# --- the chunked form (``chunked.py``) -------------------------------------------------------

def _chunked(config, q, rot=None):
    """Whether a pass on q [B, T, H, K] (or per direction, [2, B, T, H, K]) runs the
    chunk-parallel kernels (``chunked.py``) or the sweep (:meth:`FusedBiConfig.runs_chunked`);
    rotary in the kernels (``rot``) makes q, k per direction too."""
    B, T, H, _ = q.shape[-4:]
    return config.runs_chunked(B * H, T, per_direction=q.dim() == 5 or rot is not None)


def rotary_supported(q, per_channel):
    """Whether the chunked kernels can rotate q [B, T, H, K] themselves: a scalar decay (the
    per-key-channel kernels load q, k in more places) and a head dim of 16, 32, 64 or 128
    (the rotation splits a whole tile in halves)."""
    return not per_channel and q.dim() == 4 and q.shape[-1] in (16, 32, 64, 128)


def check_rotary(rot, q, g):
    """ValueError unless ``rot`` is None or a rotary table the kernels can apply."""
    if rot is None:
        return
    if not rotary_supported(q, g.dim() == 5):
        raise ValueError('fused bi-scan: rotary in the kernels needs a scalar decay, one q, k '
                         f'[B, T, H, K] and K in 16, 32, 64, 128 (got q {tuple(q.shape)}, '
                         f'g {tuple(g.shape)})')
    if rot.shape != (2, q.shape[1], q.shape[-1] // 2) or rot.dtype != torch.float32:
        raise ValueError('fused bi-scan: the rotary table is [2, T, K / 2] float32 (cos, sin; '
                         f'got {tuple(rot.shape)} {rot.dtype} for q {tuple(q.shape)})')


def _chunked_kernels(meta, per_channel, backward, f32, config=DEFAULT_CONFIG, rotary=False,
                     paired=False):
    """What a chunked pass launches, each kernel with its constexprs: the chunk-state kernel
    (``f32``: fp32 operands for the keys' states, which the gate gradient needs), the pass
    over the states (``config.scan_group``, ``scan_block``), and the output
    (forward) or gradient (backward) kernel; per key channel with ``f32`` (the gate gradient
    asked for), the backward also the kernel that sums the gate gradient's pieces.
    ``rotary``: the scalar-decay kernels rotate q, k themselves; ``paired``: each direction
    its own q, k ([2, B, T, H, K]). Used by the passes and by ``tools/benchmark.py compile``."""
    BK, BV = meta['BK'], meta['BV']
    state_meta = {n: meta[n] for n in ('K', 'V', 'BT', 'BK', 'BV', 'PRECISION')}
    scan_meta = dict(SIZE=BK * BV, BLOCK=min(config.scan_block, BK * BV),
                     GROUP=config.scan_group, CHANNELS=BK if per_channel else 0, BV=BV)
    if backward:
        main = _chunk_gla_bwd_kernel if per_channel else _chunk_bwd_kernel
        main_meta = dict(meta, NEED_DG=f32)
    else:
        main, main_meta = (_chunk_gla_fwd_kernel if per_channel else _chunk_fwd_kernel), meta
    if not per_channel:
        main_meta = dict(main_meta, PAIRED=paired, ROTARY=rotary)
    kernels = [(_chunk_state_kernel, dict(state_meta, F32=f32, BACKWARD=backward,
                                          PER_CHANNEL=per_channel, PAIRED=paired,
                                          ROTARY=rotary)),
               (_chunk_scan_kernel, scan_meta), (main, main_meta)]
    if backward and per_channel and f32:
        kernels.append((_chunk_gate_grad_kernel, {n: meta[n] for n in ('K', 'BT', 'BK')}))
    return kernels


def _chunk_states(q, k, v, g, do, rot, kernels, options, backward):
    """The state entering every chunk of both directions' sweeps, [1 or 2, 2, B*H, NT, BK,
    BV] fp32 (the keys' states; with ``backward`` also the queries' adjoint states): local
    states in parallel over chunks (a program makes both directions' of its chunk), then the
    pass over them. One chunk: zeros, no launch."""
    (state, state_meta), (scan, scan_meta) = kernels[:2]
    B, T, H, _ = v.shape
    NT = triton.cdiv(T, CHUNK)
    kinds = 2 if backward else 1
    BK, BV = state_meta['BK'], state_meta['BV']
    shape = (kinds, 2, B * H, NT, BK, BV)
    if NT == 1:
        return q.new_zeros(shape, dtype=torch.float32)
    S = q.new_empty(shape, dtype=torch.float32)
    G = q.new_empty(2, B * H, NT, *((BK,) if g.dim() == 5 else ()), dtype=torch.float32)
    state[(NT, B * H)](q, k, v, g, do, S, G, rot, T, H, *g.stride()[:4],
                       _direction_stride(q), **state_meta, **options)
    scan[(2 * B * H, BK * BV // scan_meta['BLOCK'], kinds)](S, G, NT, 2 * B * H, **scan_meta,
                                                            **options)
    return S


def _rot_arg(rot, g):
    """The kernels' ``rot`` pointer: the rotary table, or (ROTARY off, never read) g."""
    return g if rot is None else rot.contiguous()


def _chunked_forward(q, k, v, g, scale, meta, options, config, rot=None):
    """:func:`run_forward` in the chunked form: the chunk states, then the output on every
    chunk (a scalar decay's programs sum both directions' parts; per key channel each
    direction's programs write their own, summed as the sweep's are)."""
    B, T, H, _ = v.shape
    per_channel = g.dim() == 5
    kernels = _chunked_kernels(meta, per_channel, backward=False, f32=False, config=config,
                               rotary=rot is not None, paired=q.dim() == 5)
    rot = _rot_arg(rot, g)
    S = _chunk_states(q, k, v, g, q, rot, kernels, options, backward=False)
    kernel, kernel_meta = kernels[2]
    NT = triton.cdiv(T, CHUNK)
    if not per_channel:
        o = v.new_empty(v.shape)
        kernel[(NT, B * H)](q, k, v, g, o, S, rot, scale, T, H, *g.stride()[:4],
                            _direction_stride(q), **kernel_meta, **options)
        return o
    o2 = _output_pair(v)
    kernel[(NT, B * H, 2)](q, k, v, g, o2, S, scale, T, H, *g.stride()[:4],
                           _direction_stride(q), **kernel_meta, **options)
    return _sum_pair(o2)


def _chunked_backward_buffers(q, k, v, g, need_dg):
    """dq, dk, dv (a scalar decay's kernel sums both directions' pieces into q's, k's and v's
    shapes; per key channel, both scan directions' [2, ...]) and, with ``need_dg``, the gate
    gradient [2, B, T, H(, K)] (fp32)."""
    if g.dim() == 4:
        grads = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
    else:
        grads = _grad_pairs(q, k, v)
    dg = q.new_empty(2, *g.shape[1:], dtype=torch.float32) if need_dg else q.new_empty(1)
    return (*grads, dg)


def _chunked_backward_results(g, per_direction, need_dg, dq, dk, dv, dg):
    """[dq, dk, dv] (+ the gate gradient) from the buffers of
    :func:`_chunked_backward_buffers`; :func:`fake_backward` runs it on empty ones."""
    grads = [dq, dk, dv] if g.dim() == 4 else _summed_grads(dq, dk, dv, per_direction)
    return grads + ([dg] if need_dg else [])


def _chunked_backward(q, k, v, g, do, scale, meta, options, need_dg, config, rot=None):
    """:func:`run_backward` in the chunked form: the chunk states and adjoint states, then
    every chunk's gradient pieces of both scan directions."""
    B, T, H, _ = v.shape
    kernels = _chunked_kernels(meta, g.dim() == 5, backward=True, f32=need_dg, config=config,
                               rotary=rot is not None, paired=q.dim() == 5)
    rot = _rot_arg(rot, g)
    S = _chunk_states(q, k, v, g, do, rot, kernels, options, backward=True)
    dq, dk, dv, dg = _chunked_backward_buffers(q, k, v, g, need_dg)
    kernel, kernel_meta = kernels[2]
    NT = triton.cdiv(T, CHUNK)
    if g.dim() == 4:
        kernel[(NT, B * H)](q, k, v, g, do, dq, dk, dv, dg, S, rot, scale, T, H,
                            *g.stride()[:4], _direction_stride(q), **kernel_meta, **options)
    else:       # per key channel: the two parts' gate-gradient pieces, then their sum
        pieces, totals = dg, dg
        if need_dg:
            pieces = q.new_empty(2, 2, *g.shape[1:], dtype=torch.float32)
            totals = q.new_empty(2, B * H, NT, meta['BK'], dtype=torch.float32)
        kernel[(NT, B * H, 4)](q, k, v, g, do, dq, dk, dv, pieces, totals, S, scale, T, H,
                               *g.stride()[:4], _direction_stride(q), **kernel_meta, **options)
        if need_dg:
            gate_kernel, gate_meta = kernels[3]
            gate_kernel[(NT, B * H, 2)](pieces, totals, dg, T, H, **gate_meta, **options)
    return _chunked_backward_results(g, q.dim() == 5, need_dg, dq, dk, dv, dg)
