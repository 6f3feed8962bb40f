"""Evaluate a checkpoint of an mmseg or mmdet config with MMEngine's Runner.

    python tools/test.py CONFIG CHECKPOINT [--work-dir D] [--cfg-options k=v ...]
        [--launcher pytorch]
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import (add_common_args, build_runner, close_distributed,  # noqa: E402
                     load_config)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Evaluate a segmentor or detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.checkpoint):
        sys.exit(f'Checkpoint not found: {args.checkpoint}')
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    runner = build_runner(cfg)
    metrics = runner.test()
    if runner.rank == 0:
        runner.logger.info(f'Metrics: {metrics} | log: {runner.log_dir}')
    close_distributed()
    return metrics


if __name__ == '__main__':
    main()
