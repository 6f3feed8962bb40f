"""Convert an ImageNet checkpoint of another project into an fla_mm backbone checkpoint.

    python tools/convert_checkpoint.py deit_small_patch16_224.pth deit_s.pth --format timm_vit
    python tools/convert_checkpoint.py hf_gla_folder/ gla_s.safetensors --format hf_fla
    python tools/convert_checkpoint.py vig_h_t.pth vig_h_t.pth --format vig
    python tools/convert_checkpoint.py X.pth Y.pth --arch '{"arch": "small", "mixer": "gla"}'

The target backbone comes from ``--arch`` (a config file, whose model.backbone is used;
``plain-SIZE`` / ``pyramid-SIZE``; or a JSON dict of backbone arguments) or, without it, is
read off the checkpoint (widths, depths, heads, options). The conversion is the one
``init_cfg=dict(type='Pretrained', ...)`` runs: detect the format, rename, drop heads,
resize the position embedding to ``--img-size`` (default: the checkpoint's own), check
every key and shape strictly (``--no-strict`` keeps the matching keys only). DST is
safetensors when it ends with .safetensors, else an MMEngine checkpoint
``{'state_dict', 'meta'}``; its meta records the source, format, backbone config and
position-embedding grid, so ``format=None`` loads it back (non-square grids included).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))   # run from a checkout

from fla_mm.backbones import build_backbone  # noqa: E402
from fla_mm.checkpoint import (FORMATS, CheckpointError, convert_for_model,  # noqa: E402
                               detect_format, read_checkpoint, save_checkpoint)
from fla_mm.checkpoint.arch import infer_backbone_cfg, parse_arch  # noqa: E402
from fla_mm.checkpoint.loader import strict_error  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('src', help='checkpoint file, Hugging Face model folder, or URL')
    p.add_argument('dst', help='output: .safetensors or .pth (MMEngine format)')
    p.add_argument('--format', choices=FORMATS, help='source format (default: detect)')
    p.add_argument('--arch', help='target backbone: config file, plain-SIZE / pyramid-SIZE, '
                                  'or a JSON dict of backbone arguments (default: inferred)')
    p.add_argument('--prefix', help='take only the keys under this prefix')
    p.add_argument('--img-size', type=int, nargs='+', metavar='S',
                   help='pretrain_img_size of the output (H [W]); the position embedding is '
                        'resized to it (FLAPlain)')
    p.add_argument('--no-strict', action='store_true',
                   help='keep the matching tensors only instead of failing on any mismatch')
    return p.parse_args(argv)


def _arg(cfg):
    """The config with tuples as lists, JSON-safe for the checkpoint meta."""
    if isinstance(cfg, dict):
        return {k: _arg(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [_arg(v) for v in cfg]
    return cfg


def main(argv=None):
    args = parse_args(argv)
    try:
        state, meta, hf_config, ignored = read_checkpoint(args.src)
        scoped = state
        if args.prefix:
            pre = args.prefix if args.prefix.endswith('.') else args.prefix + '.'
            scoped = {k[len(pre):]: v for k, v in state.items() if k.startswith(pre)} or state
        fmt = args.format or detect_format(scoped, meta)[0]
        cfg = parse_arch(args.arch) if args.arch else infer_backbone_cfg(fmt, scoped, meta,
                                                                         hf_config)
        if args.img_size:
            size = args.img_size
            cfg['pretrain_img_size'] = size[0] if len(size) == 1 else tuple(size[:2])
        try:
            model = build_backbone(cfg)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f'cannot build the target backbone {cfg}: {e}; pass --arch')
        loadable, report = convert_for_model(model, state, meta, hf_config, args.prefix,
                                             args.format, source=args.src, ignored=ignored)
        if not report['ok'] and not args.no_strict:
            raise strict_error(report, args.prefix)
    except CheckpointError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    out_meta = dict(source=str(args.src), format=report['format'], arch=_arg(cfg),
                    dropped=sorted(report['dropped']), resized=report['resized'],
                    partial=not report['ok'])
    if hasattr(model, 'pos_hw'):
        out_meta['pos_hw'] = list(model.pos_hw)
    save_checkpoint(loadable, args.dst, meta={'fla_mm': out_meta})
    n_params = sum(v.numel() for v in loadable.values())
    print(report['summary'])
    print(f'Backbone: {_arg(cfg)}')
    print(f'Wrote {args.dst}: {len(loadable)} tensors, {n_params / 1e6:.2f} M parameters '
          f'loaded; {len(report["dropped"])} dropped; {len(report["resized"])} resized'
          + ('' if report['ok'] else ' (partial: --no-strict)'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
