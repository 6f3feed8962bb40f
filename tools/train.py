"""Train an mmseg or mmdet config with MMEngine's Runner.

    python tools/train.py configs/upernet_gla_ade20k.py [--work-dir D] [--resume [CKPT]]
        [--amp [--amp-dtype bfloat16]] [--cfg-options k=v ...] [--launcher pytorch]
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import (add_common_args, build_runner, check_input_size,  # noqa: E402
                     close_distributed, load_config)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a segmentor or detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or from the latest checkpoint in work-dir')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--amp-dtype', choices=['float16', 'bfloat16'], default='float16')
    add_common_args(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args)
    check_input_size(cfg)
    if args.amp:
        import torch
        if not torch.cuda.is_available():
            sys.exit('--amp needs a GPU: MMEngine\'s AmpOptimWrapper runs on CUDA (or NPU/MLU/MUSA) '
                     'only; drop --amp to train in fp32 on this machine.')
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper != 'AmpOptimWrapper':
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.dtype = args.amp_dtype
            if args.amp_dtype == 'float16':
                cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    runner = build_runner(cfg)
    runner.train()
    if runner.rank == 0:
        last = osp.join(cfg.work_dir, 'last_checkpoint')
        ckpt = open(last).read().strip() if osp.exists(last) else '(none saved)'
        runner.logger.info(f'Done. work_dir: {osp.abspath(cfg.work_dir)} | '
                           f'log: {runner.log_dir} | last checkpoint: {ckpt}')
    close_distributed()


if __name__ == '__main__':
    main()
