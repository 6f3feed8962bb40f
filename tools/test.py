"""Evaluate a checkpoint of an mmseg or mmdet config with MMEngine's Runner.

    python tools/test.py CONFIG CHECKPOINT [--work-dir D] [--show-dir DIR [--show-interval N]]
        [--cfg-options k=v ...] [--launcher pytorch]
"""
import argparse
import numbers
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import (add_common_args, build_runner, close_distributed,  # noqa: E402
                     load_config)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Evaluate a segmentor or detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--show-dir', help='save prediction overlays under this directory '
                        '(as mmseg\'s and mmdet\'s tools/test.py --show-dir)')
    parser.add_argument('--show-interval', type=int,
                        help='with --show-dir: draw every N-th test batch (default: the '
                        'config\'s default_hooks.visualization.interval; mmdet\'s hook '
                        'draws every image whatever the interval)')
    add_common_args(parser)
    return parser.parse_args(argv)


def draw_predictions(cfg, show_dir, interval=None):
    """Turn the config's visualization hook on, writing under ``show_dir``: mmseg's
    SegVisualizationHook draws through the visualizer (its ``save_dir``), mmdet's
    DetVisualizationHook into its ``test_out_dir``, as their own test.py set them."""
    hook = cfg.get('default_hooks', {}).get('visualization')
    if hook is None:
        sys.exit('--show-dir needs default_hooks.visualization in the config (fla_mm\'s '
                 'configs set SegVisualizationHook / DetVisualizationHook)')
    show_dir = osp.abspath(show_dir)
    hook['draw'] = True
    if interval is not None:
        hook['interval'] = interval
    if str(hook['type']).split('.')[-1] == 'DetVisualizationHook':
        hook['test_out_dir'] = show_dir
    else:
        cfg.visualizer['save_dir'] = show_dir


def plain(metrics):
    """Metric values as plain floats to 4 decimals: mmseg's are numpy float32 scalars
    (rounded to 2 decimals in float32, so ``float()`` alone prints 30.979999542236328)."""
    return {k: round(float(v), 4) if isinstance(v, numbers.Real) else v
            for k, v in metrics.items()}


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        sys.exit(f'Checkpoint not found: {args.checkpoint}')
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if args.show_dir:
        draw_predictions(cfg, args.show_dir, args.show_interval)
    runner = build_runner(cfg)
    metrics = runner.test()
    if runner.rank == 0:
        runner.logger.info(f'Metrics: {plain(metrics)} | log: {runner.log_dir}')
        if args.show_dir:
            runner.logger.info(f'Prediction overlays: {osp.abspath(args.show_dir)}')
    close_distributed()
    return metrics


if __name__ == '__main__':
    main()
