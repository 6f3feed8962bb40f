"""Cases of the ``backbone`` level: each fla_mm backbone with each family and scan against
the same backbone with mixer='transformer', plus Swin and ConvNeXt of the same size where
mmseg or torchvision import."""
import json

import torch
import torch.nn as nn

import fla_mm
from fla_mm.layers import FAMILIES

from .level_mixer import bi_config_for, with_bi_config
from .timing import BASELINE_FAMILY, Case, grad_leaves, make_step, ordered


def fla_backbones():
    """Backbone classes fla_mm exports (FLAPyramid, FLAPlain, ...)."""
    names = getattr(fla_mm, '__all__', dir(fla_mm))
    found = {}
    for n in names:
        obj = getattr(fla_mm, n, None)
        if (isinstance(obj, type) and issubclass(obj, nn.Module)
                and obj.__module__.startswith('fla_mm.backbones')):
            found[n] = obj
    return found


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


def backbone_setup(build, res, B, mode, device, dtype):
    def setup():
        model = build().to(device)
        if hasattr(model, 'init_weights'):
            model.init_weights()
        x = torch.randn(B, 3, res, res, device=device)
        return make_step(lambda: model(x), grad_leaves(model) if mode == 'fwdbwd' else [], mode,
                         device, dtype, train_module=model)
    return setup


def backbone_cases(args):
    """Every case of the level: the backbones, families, scans, resolutions, dtypes, modes."""
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
            others.append(built)

    def fla_build(cls, n, family, scan):
        kwargs = dict(extra)
        config = bi_config_for(family, args.fused_bi)
        if config is not None:
            kwargs['mixer_cfg'] = with_bi_config(kwargs.get('mixer_cfg'), config)
        return lambda: cls(arch=archs[n], mixer=family, scan=scan, drop_path_rate=0.0, **kwargs)

    cases = []
    for dtype in args.dtype:
        for mode in args.mode:
            for B in ordered(args, args.batch_size):
                for res in ordered(args, args.resolutions):
                    common = dict(level='backbone', size=res, batch=B, dtype=dtype, mode=mode)
                    for n in names:
                        cls = available[n]
                        common['arch'] = label[n]
                        group = ('backbone', n, res, B, dtype, mode)
                        cases.append(Case(dict(common, name=n, family=BASELINE_FAMILY, scan='-'),
                                          backbone_setup(fla_build(cls, n, BASELINE_FAMILY, 'uni'),
                                                         res, B, mode, args.device, dtype),
                                          group, baseline=True, images=B))
                        for f in families:
                            for s in args.scans:
                                cases.append(Case(dict(common, name=n, family=f, scan=s),
                                                  backbone_setup(fla_build(cls, n, f, s), res, B,
                                                                 mode, args.device, dtype),
                                                  group, images=B))
                    for other, build in others:
                        group = ('backbone', ref, res, B, dtype, mode)
                        cases.append(Case(dict(common, name=other, arch=label.get(ref),
                                               family='-', scan='-'),
                                          backbone_setup(build, res, B, mode, args.device, dtype),
                                          group, images=B))
    return cases
