"""Cases of the ``backbone`` level: each fla_mm backbone with each family and scan against
the same backbone with mixer='transformer', plus Swin and ConvNeXt of the same size where
mmseg or torchvision import; each model in the ways it runs fastest (``--compile`` modes,
fla_mm's ``cuda_graph=True``, and with ``--cuda-graph`` the whole step captured), so that
the report can hold every row against the fastest Swin and ConvNeXt row."""
import json

import torch
import torch.nn as nn

from fla_mm.backbones.base import GRAPHING_COMPILE_MODES
from fla_mm.layers import FAMILIES

from .models import bi_config_for, fla_backbones, with_bi_config
from .timing import BASELINE_FAMILY, Case, grad_leaves, make_step, ordered

COMPILE_MODES = ('none', 'default', 'reduce-overhead', 'max-autotune',
                 'max-autotune-no-cudagraphs')     # --compile: 'none' = eager
CUDA_ONLY_MODES = ('reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


def parse_arch(text, names):
    """``--arch``: a size name, a JSON dict, or a JSON dict of such per backbone name."""
    if not text.strip().startswith('{'):
        return {n: text for n in names}
    arch = json.loads(text)
    if arch and all(k in names or k.startswith('FLA') for k in arch):
        missing = [n for n in names if n not in arch]
        if missing:
            raise SystemExit(f'--arch names backbones {sorted(arch)} but not {missing}')
        return arch
    return {n: arch for n in names}


def swin_builder(arch):
    """Swin of the same size: mmseg's SwinTransformer, else torchvision's; None if neither."""
    sizes = dict(tiny=((2, 2, 6, 2), (3, 6, 12, 24), 96), small=((2, 2, 18, 2), (3, 6, 12, 24), 96),
                 base=((2, 2, 18, 2), (4, 8, 16, 32), 128))
    if isinstance(arch, dict):
        depths, heads, dim = arch['depths'], arch['num_heads'], arch['embed_dims'][0]
    elif arch in sizes:
        depths, heads, dim = sizes[arch]
    else:
        return None
    # mmseg and torchvision are optional here: imported where a baseline asks for them
    try:
        from mmseg.models.backbones import SwinTransformer
        return 'SwinTransformer (mmseg)', lambda: SwinTransformer(
            embed_dims=dim, depths=depths, num_heads=heads)
    except Exception:
        pass
    if not isinstance(arch, str):
        return None
    try:
        import torchvision.models as tvm
    except Exception:
        return None
    ctor = dict(tiny=tvm.swin_t, small=tvm.swin_s, base=tvm.swin_b)[arch]
    return 'swin_' + arch[0] + ' (torchvision)', lambda: _Features(ctor(weights=None).features)


def convnext_builder(arch):
    if not isinstance(arch, str):
        return None
    try:
        import torchvision.models as tvm       # optional, as in swin_builder
    except Exception:
        return None
    ctor = dict(tiny=tvm.convnext_tiny, small=tvm.convnext_small, base=tvm.convnext_base).get(arch)
    if ctor is None:
        return None
    return f'convnext_{arch} (torchvision)', lambda: _Features(ctor(weights=None).features)


class _Features(nn.Module):
    """Wrap a torchvision ``features`` Sequential to return its four stage outputs."""

    def __init__(self, features):
        super().__init__()
        self.features = features

    def forward(self, x):
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i % 2 == 1:
                outs.append(x)
        return tuple(outs)


def variant_name(compile_mode, backend='inductor', cuda_graph=False):
    """How a row ran: 'eager', 'compile MODE' (with a non-Inductor backend named),
    'cuda_graph=True' (the fla_mm backbone's own graph of forward and backward) or
    'cuda_graph=True + compile MODE' (the backbone's ``compile`` option inside its graphs)."""
    compiled = f'compile {compile_mode}' + ('' if backend == 'inductor' else f' ({backend})')
    if cuda_graph:
        return 'cuda_graph=True' + ('' if compile_mode == 'none' else ' + ' + compiled)
    return 'eager' if compile_mode == 'none' else compiled


def compile_skip(mode, backend, device, cuda_graph=False):
    """Why ``torch.compile`` in ``mode`` cannot run here (or, with ``cuda_graph``, inside
    the backbone's own CUDA graphs), or None."""
    if mode == 'none':
        return None
    if cuda_graph and mode in GRAPHING_COMPILE_MODES:
        return f'mode {mode!r} captures CUDA graphs itself, which cuda_graph=True refuses'
    if backend != 'inductor' and mode != 'default':
        return f"mode {mode!r} is an Inductor mode; backend {backend!r} runs only 'default'"
    if device != 'cuda' and mode in CUDA_ONLY_MODES:
        return (f"mode {mode!r} needs CUDA (Inductor's GPU autotuning"
                + (' and CUDA graphs)' if 'no-cudagraphs' not in mode else ')'))
    return None


def compile_options(compile_mode, backend='inductor'):
    """The ``torch.compile`` arguments of a ``--compile`` mode."""
    return dict(backend=backend, mode=None if compile_mode == 'default' else compile_mode)


def backbone_setup(build, res, B, mode, device, dtype, compile_mode='none',
                   backend='inductor', wrap=True):
    """The step of one backbone row: built, initialised, and with ``compile_mode`` other
    than 'none' a Dynamo reset (each case compiles its own graphs, so no case runs on
    another's cache entry or hits the recompile limit) and, with ``wrap``, the model wrapped
    in ``torch.compile`` (without: the model compiles itself, fla_mm's ``compile`` option)."""
    def setup():
        model = build().to(device)
        if hasattr(model, 'init_weights'):
            model.init_weights()
        x = torch.randn(B, 3, res, res, device=device)
        run = model
        if compile_mode != 'none':
            torch._dynamo.reset()
        if compile_mode != 'none' and wrap:
            run = torch.compile(model, **compile_options(compile_mode, backend))
        return make_step(lambda: run(x), grad_leaves(model) if mode == 'fwdbwd' else [], mode,
                         device, dtype, train_module=model)
    return setup


def backbone_cases(args):
    """Every case of the level: the backbones, families, scans, resolutions, dtypes, modes,
    and the ways each model runs (``--compile`` / ``--fla-compile`` modes, fla_mm's
    ``cuda_graph=True``). A way that cannot run here is a row that says why."""
    available = fla_backbones()
    names = args.backbones or sorted(available)
    for n in names:
        if n not in available:
            raise SystemExit(f'Unknown backbone {n!r}; fla_mm exports: '
                             f'{", ".join(sorted(available))}')
    families = [f for f in args.families if f != BASELINE_FAMILY]
    for f in families:
        if f not in FAMILIES:
            raise SystemExit(f'Unknown family {f!r}; valid families: {", ".join(sorted(FAMILIES))}')
    archs = parse_arch(args.arch, names)
    label = {n: a if isinstance(a, str) else 'custom' for n, a in archs.items()}
    extra = dict(args.backbone_cfg or {})
    ref = 'FLAPyramid' if 'FLAPyramid' in names else (names[0] if names else None)
    ref_arch = archs.get(ref, args.arch)
    others = []
    for kind in args.baselines or []:
        built = None
        if isinstance(ref_arch, str) or {'embed_dims', 'depths', 'num_heads'} <= set(ref_arch):
            built = (swin_builder if kind == 'swin' else convnext_builder)(ref_arch)
        if built is None:
            print(f'[benchmark] {kind} baseline skipped: not importable here or no matching size '
                  f'for arch {label.get(ref)!r}')
        else:
            others.append((kind, *built))

    def fla_build(cls, n, family, scan, cuda_graph=False, compile_mode='none'):
        kwargs = dict(extra, cuda_graph=cuda_graph) if cuda_graph else dict(extra)
        if cuda_graph and compile_mode != 'none':
            kwargs['compile'] = compile_options(compile_mode, backend)
        config = bi_config_for(family, args.fused_bi)
        if config is not None:
            kwargs['mixer_cfg'] = with_bi_config(kwargs.get('mixer_cfg'), config)
        return lambda: cls(arch=archs[n], mixer=family, scan=scan, drop_path_rate=0.0, **kwargs)

    backend, device = args.compile_backend, args.device
    graphed_ways = {None: (False,), 'also': (False, True), 'only': (True,)}
    fla_ways = [(c, graphed) for graphed in graphed_ways[args.backbone_cuda_graph]
                for c in args.fla_compile]
    other_ways = [(c, False) for c in args.compile]
    cases = []
    for dtype in args.dtype:
        for mode in args.mode:
            for B in ordered(args, args.batch_size):
                for res in ordered(args, args.resolutions):
                    common = dict(level='backbone', size=res, batch=B, dtype=dtype, mode=mode)
                    block = []

                    def add(meta, build, group, ways, **kw):
                        for comp, graphed in ways:
                            skip = compile_skip(comp, backend, device, graphed)
                            if graphed and (device != 'cuda' or mode != 'fwdbwd'):
                                skip = ('cuda_graph=True replays only in training on CUDA '
                                        '(here it would be the eager row)')
                            variant = variant_name(comp, backend, graphed)
                            block.append(Case(
                                dict(common, **meta, variant=variant, compile=comp),
                                backbone_setup(build(graphed, comp), res, B, mode, device,
                                               dtype, comp, backend, wrap=not graphed),
                                group + (variant,), images=B, skip=skip,
                                capture=not graphed, **kw))

                    for n in names:
                        cls = available[n]
                        group = ('backbone', n, res, B, dtype, mode)
                        meta = dict(name=n, arch=label[n])
                        variants = [(f, s) for f in families for s in args.scans]
                        if not args.no_twin:
                            variants.insert(0, (BASELINE_FAMILY, 'uni'))
                        for f, s in variants:
                            add(dict(meta, family=f, scan='-' if f == BASELINE_FAMILY else s),
                                lambda graphed, comp, f=f, s=s: fla_build(cls, n, f, s,
                                                                          graphed, comp),
                                group, fla_ways, baseline=f == BASELINE_FAMILY)
                    for kind, other, build in others:
                        add(dict(name=other, arch=label.get(ref), family='-', scan='-',
                                 reference=kind),
                            lambda graphed, comp, build=build: build,
                            ('backbone', ref, res, B, dtype, mode), other_ways)
                    block.sort(key=run_order)
                    cases += block
    return cases


def run_order(case):
    """Cheap ways first (eager, cuda_graph=True, then compile 'default', then the autotuning
    modes), the Swin / ConvNeXt rows first within each: a command cut off by a time limit
    keeps the rows that the others are held against."""
    comp = case.meta.get('compile', 'none')
    rank = (0 if case.meta.get('variant') == 'eager' else 1 if comp == 'none'
            else 2 if comp == 'default' else 3)
    return rank, 'reference' not in case.meta
