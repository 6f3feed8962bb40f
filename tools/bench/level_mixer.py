"""Cases of the ``mixer`` level: fla_mm.ops functions against SDPA on [B, L, H, d] (rows
'op': one direction, both as two calls, the fused bi-scan; at token counts, or with
``--op-shapes backbone`` at the exact shapes of each backbone stage, with the minimal
traffic that the report turns into achieved bandwidth) and TokenMixer per family and scan
(rows 'mixer')."""
import dataclasses
import inspect
import math

import torch
import torch.nn.functional as F

from fla_mm import ops
from fla_mm.layers import FAMILIES, TokenMixer
from fla_mm.layers.scan import SCANS
from fla_mm.ops.fused_bi import FusedBiConfig

from .models import backbone_stages, bi_config_for, fla_backbones, with_bi_config
from .timing import BASELINE_FAMILY, Case, autocast, grad_leaves, make_step, ordered, torch_dtype


def grid_hw(L):
    """A near-square (h, w) grid of exactly L tokens."""
    h = int(math.isqrt(L))
    while L % h:
        h -= 1
    return h, L // h


class _OpCall(Exception):
    """Raised by the recorder that stands in for a mixer's op: carries the op's inputs."""

    def __init__(self, args, kwargs):
        super().__init__('op call captured')
        self.args, self.kwargs = args, kwargs


def capture_op_inputs(family, B, L, H, d, device, dtype, seed=0, mixer_cfg=None):
    """The exact (args, kwargs) a TokenMixer of ``family`` hands its op, with q/k/v [B, L, H, d].

    A mixer with expand_k = expand_v = 1 and scan 'uni' runs up to its op call under autocast,
    where a recorder stops it: decays and gates come out as the mixer makes them (dtype, range,
    shape), whatever the family's op takes, and no kernel runs (first calls stay cold).
    """
    torch.manual_seed(seed)
    cfg = dict(expand_k=1.0, expand_v=1.0) if mixer_cfg is None else mixer_cfg
    mixer = TokenMixer(H * d, H, family=family, scan='uni', **cfg)
    mixer.to(device).eval()

    def recorder(*a, **kw):
        raise _OpCall(a, kw)

    mixer.op = recorder
    x = torch.randn(B, L, H * d, device=device)
    try:
        with torch.no_grad(), autocast(device, dtype):
            mixer(x, grid_hw(L))
    except _OpCall as call:
        return call.args, call.kwargs
    raise RuntimeError(f'TokenMixer({family!r}) never called its op (mixer.op)')


def _describe(t):
    return f"{list(t.shape)} {str(t.dtype).replace('torch.', '')}"


def _op_of(family):
    return getattr(ops, 'OPS', {}).get(family) or FAMILIES[family]['op']


OP_ROWS = ('uni', 'two_call', 'fused')            # --op-rows


def _bi_op(family, fn, B, L, bi, segments=0, config=None, form=None):
    """The op over both scan directions of [B, L, ...] inputs: 'two_call' = ``fn`` on
    [x, flip(x)] batched, then flip back and add (what TokenMixer's 'bi' scan does);
    'fused' = ops.bi_decay_attn, one kernel for both directions (gla / simple_gla / retnet),
    in the variant ``config`` (a FusedBiConfig; None: the default) with its sweeps cut into
    ``segments`` parallel runs (0: as ``config`` says) and in ``form`` ('sweep' or
    'chunked'; None: as ``config`` says)."""
    if bi == 'fused':
        config = FusedBiConfig.coerce(config)
        if segments:
            config = dataclasses.replace(config, segments=segments)
        if form:
            config = dataclasses.replace(config, form=form)

        def fused(q, k, v, g=None, **kw):
            if g is None:   # retnet: its fixed per-head decay
                g = ops.retnet_decay(q.shape[2], q.device).expand(*q.shape[:3])
            return ops.bi_decay_attn(q, k, v, g, kernel='fused', config=config, **kw)
        return fused

    def scanned(t):
        if torch.is_tensor(t) and t.dim() >= 2 and tuple(t.shape[:2]) == (B, L):
            return torch.cat([t, t.flip(1)], 0)
        return t

    def two_call(*args, **kwargs):
        o = fn(*[scanned(a) for a in args], **{k: scanned(v) for k, v in kwargs.items()})
        o_f, o_b = o.chunk(2, 0)
        return o_f + o_b.flip(1)
    return two_call


def minimal_traffic(inputs, output, backward):
    """Bytes a call must move at least once, what the bandwidth columns divide by time:

        fwd:    sum(bytes(x) for x in inputs) + bytes(o)
        fwdbwd: the same + bytes(do) + sum(bytes(dx) for x in inputs that take a gradient)

    with do the output gradient (o's size and dtype) and dx an input's gradient (x's). A
    tensor counts its stored elements (a stride-0 dimension, as RetNet's expanded decay,
    counts once). Re-reads (the backward reading q, k, v again, a two-call scan's flipped
    copies) are not minimal and not counted, so this is a floor on the real traffic."""
    def stored(t):
        return math.prod(n for n, st in zip(t.shape, t.stride()) if st != 0) * t.element_size()
    total = sum(stored(t) for t in inputs) + stored(output)
    if backward:
        total += stored(output) + sum(stored(t) for t in inputs if t.requires_grad)
    return total


def op_setup(family, B, L, H, d, mode, device, dtype, mixer_cfg=None, bi=None, segments=0,
             config=None, form=None):
    """fla_mm.ops.<family> (or SDPA when family is None) on q/k/v [B, L, H, d]; with ``bi``
    ('two_call' or 'fused') over both scan directions (see :func:`_bi_op`). The step's
    ``traffic(out)`` is :func:`minimal_traffic` of its inputs."""
    def setup():
        if family is None:
            tdt = torch.float32 if dtype == 'fp32' else torch_dtype(dtype)
            args = [torch.randn(B, L, H, d, device=device, dtype=tdt) for _ in range(3)]
            kwargs = {}

            def fn(q, k, v):
                return F.scaled_dot_product_attention(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        else:
            args, kwargs = capture_op_inputs(family, B, L, H, d, device, dtype,
                                             mixer_cfg=mixer_cfg)
            args = [a.detach().clone() if torch.is_tensor(a) else a for a in args]
            kwargs = {k: v.detach().clone() if torch.is_tensor(v) else v
                      for k, v in kwargs.items()}
            fn = _op_of(family)
            if bi is not None:
                fn = _bi_op(family, fn, B, L, bi, segments, config, form)
        leaves = []
        if mode == 'fwdbwd':
            for t in list(args) + list(kwargs.values()):
                if torch.is_tensor(t) and t.is_floating_point():
                    t.requires_grad_(True)
                    leaves.append(t)
        # inputs already carry their dtypes: no autocast around the op itself
        step = make_step(lambda: fn(*args, **kwargs), leaves, mode, device, 'fp32')
        tensors = [t for t in list(args) + list(kwargs.values()) if torch.is_tensor(t)]
        step.info = ', '.join(_describe(t) for t in tensors)
        step.traffic = lambda out: minimal_traffic(tensors, out, mode == 'fwdbwd')
        return step
    return setup


def mixer_setup(family, scan, B, L, H, d, mode, device, dtype, mixer_cfg):
    def setup():
        m = TokenMixer(H * d, H, family=family, scan=scan, **(mixer_cfg or {})).to(device)
        x = torch.randn(B, L, H * d, device=device, requires_grad=mode == 'fwdbwd')
        hw = grid_hw(L)
        return make_step(lambda: m(x, hw), grad_leaves(m, x) if mode == 'fwdbwd' else [], mode,
                         device, dtype, train_module=m)
    return setup


def op_variants(family, args):
    """(scan, bi kernel, name tag, fused segments, fused form) of each op row of ``family``
    that ``--op-rows`` asks for: one direction, the bi-scan as two calls, the fused bi-scan
    (once per ``--fused-forms`` form and ``--fused-segments`` count; only 'fused' reads
    them, and the count only the sweep form)."""
    variants = [('-', None, '', 0, None)] * ('uni' in args.op_rows)
    if 'bi' in args.scans and FAMILIES[family].get('causal', True):
        variants += [('bi', 'two_call', ' two-call', 0, None)] * ('two_call' in args.op_rows)
        if family in ops.BI_FUSED_FAMILIES and 'fused' in args.op_rows:
            for form in args.fused_forms or [None]:
                counts = [0] if form == 'chunked' else args.fused_segments
                variants += [('bi', 'fused', ' fused' + (f' {form}' if form else '') + (
                    f" {n} segment{'s' * (n > 1)}" if n else ''), n, form) for n in counts]
    return variants


def _op_group_cases(families, args, common, group, H, d, cfgs, tag=''):
    """SDPA on [B, L, H, d] (the group's baseline), then each family's op rows with the
    inputs its TokenMixer of width H*d makes with options ``cfgs[family]``."""
    B, L, dtype, mode = common['batch'], common['size'], common['dtype'], common['mode']
    cases = [Case(dict(common, level='op', name='sdpa', family='-', scan='-'),
                  op_setup(None, B, L, H, d, mode, args.device, dtype), group, baseline=True)]
    for f in families:
        if f == BASELINE_FAMILY:
            continue
        for scan, bi, name_tag, n, form in op_variants(f, args):
            cases.append(Case(dict(common, level='op', name=f'ops.{f}{name_tag}' + tag,
                                   family=f, scan=scan),
                              op_setup(f, B, L, H, d, mode, args.device, dtype, cfgs[f], bi, n,
                                       args.fused_bi, form), group))
    return cases


def parse_backbone_spec(spec):
    """'CLASS:ARCH' (or 'CLASS', its default arch) -> (class, arch)."""
    name, _, arch = spec.partition(':')
    available = fla_backbones()
    if name not in available:
        raise SystemExit(f'--op-backbones: unknown backbone {name!r}; fla_mm exports: '
                         f'{", ".join(sorted(available))}')
    cls = available[name]
    if not arch:
        arch = inspect.signature(cls.__init__).parameters['arch'].default
    return name, cls, arch


def backbone_op_groups(args, families):
    """``--op-shapes backbone``: one op group per (backbone, resolution, stage): its label,
    L, H, the SDPA head width C/H, and per family the stage's TokenMixer options (what
    :func:`capture_op_inputs` builds the same mixer from) and how the backbone runs its
    bi-scan ('fused' or 'two_call')."""
    groups = []
    for spec in args.op_backbones:
        name, cls, arch = parse_backbone_spec(spec)
        for res in ordered(args, args.resolutions):
            per_family = {f: backbone_stages(cls, arch, f, res, args.mixer_cfg)
                          for f in families}
            for i, stage in enumerate(next(iter(per_family.values()))):
                m = stage['mixer']
                mixers = {f: st[i]['mixer'] for f, st in per_family.items()}
                for f, fm in mixers.items():
                    if getattr(fm, 'num_gates', 1) > 1:
                        raise SystemExit('--op-shapes backbone: direction_gates (a gate per '
                                         'direction) is not timed at the op level')
                h, w = stage['hw']
                groups.append(dict(
                    shape=f"{name}:{arch} {res}px stage {stage['stage']} (stride "
                          f"{stage['stride']}, {h}x{w}, C={m.dim}, H={m.num_heads})",
                    L=stage['L'], H=m.num_heads, d=m.dim // m.num_heads,
                    cfgs={f: dict(fm.cfg) for f, fm in mixers.items()},
                    backbone_bi={f: ('fused' if getattr(fm, 'fused_bi', lambda: False)()
                                     else 'two_call') for f, fm in mixers.items()}))
    return groups


def mixer_cases(args):
    """Every case of the level, for the families, scans, sizes, dtypes and modes asked."""
    families = sorted(FAMILIES) if args.families == ['all'] else list(args.families)
    for f in families:
        if f not in FAMILIES:
            raise SystemExit(f'Unknown family {f!r}; valid families: {", ".join(sorted(FAMILIES))}'
                             f' (or all)')
    for s in args.scans:
        if s not in SCANS:
            raise SystemExit(f'Unknown scan {s!r}; valid scans: {", ".join(SCANS)}')
    if args.op_shapes == 'backbone':
        return _backbone_shape_cases(args, families)
    H, d = args.heads, args.head_dim
    op_cfg = None if args.op_shapes == 'mixer' else dict(expand_k=1.0, expand_v=1.0)
    if args.op_shapes == 'mixer':
        op_cfg = dict(args.mixer_cfg or {})
    op_tag = ' (mixer widths)' if args.op_shapes == 'mixer' else ''
    cases = []
    for dtype in args.dtype:
        for mode in args.mode:
            for B in ordered(args, args.batch_size):
                for L in ordered(args, args.tokens):
                    common = dict(size=L, batch=B, dtype=dtype, mode=mode)
                    if 'op' in args.levels:
                        cases += _op_group_cases(families, args, common,
                                                 ('op', L, B, dtype, mode), H, d,
                                                 {f: op_cfg for f in families}, op_tag)
                    if 'mixer' in args.levels:
                        group = ('mixer', L, B, dtype, mode)
                        for f in families:
                            causal = FAMILIES[f].get('causal', True)
                            for s in (args.scans if causal else ['-']):
                                cases.append(Case(
                                    dict(common, level='mixer', name='TokenMixer', family=f,
                                         scan=s),
                                    mixer_setup(f, s if causal else 'uni', B, L, H, d, mode,
                                                args.device, dtype, with_bi_config(
                                                    args.mixer_cfg,
                                                    bi_config_for(f, args.fused_bi))),
                                    group, baseline=f == BASELINE_FAMILY))
    return cases


def _backbone_shape_cases(args, families):
    groups = backbone_op_groups(args, [f for f in families if f != BASELINE_FAMILY])
    cases = []
    for dtype in args.dtype:
        for mode in args.mode:
            for B in ordered(args, args.batch_size):
                for g in groups:
                    common = dict(size=g['L'], batch=B, dtype=dtype, mode=mode, shape=g['shape'])
                    for case in _op_group_cases(families, args, common,
                                                ('op', g['shape'], B, dtype, mode), g['H'],
                                                g['d'], g['cfgs']):
                        if case.meta['family'] in g['backbone_bi']:
                            case.meta['backbone_bi'] = g['backbone_bi'][case.meta['family']]
                        cases.append(case)
    return cases
