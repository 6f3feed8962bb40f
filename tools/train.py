"""Train an mmseg or mmdet config with MMEngine's Runner.

    python tools/train.py configs/upernet_gla_ade20k.py [--work-dir D] [--resume [CKPT]]
        [--amp [--amp-dtype bfloat16]] [--cfg-options k=v ...] [--launcher pytorch]
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _common import add_common_args, build_runner, close_distributed, load_config  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a segmentor or detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or from the latest checkpoint in work-dir')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--amp-dtype', choices=['float16', 'bfloat16'], default='float16')
    add_common_args(parser)
    return parser.parse_args(argv)


def resume_settings(cfg, resume):
    """Set ``cfg.resume`` / ``cfg.load_from`` for ``--resume [CKPT]``. Returns the work dir
    that ``--resume`` (no CKPT) looked in when it holds no ``last_checkpoint``, else None.

    Such a run starts from iteration 1, the OpenMMLab convention that preemptible jobs
    rely on (the same command line starts and resumes them), with resuming off so that
    MMEngine does not log "Auto resumed from the latest checkpoint None"; :func:`main` logs
    one warning naming the work dir instead."""
    if resume is None:
        return None
    if resume != 'auto':
        cfg.resume, cfg.load_from = True, resume
        return None
    cfg.load_from = None
    cfg.resume = osp.isfile(osp.join(cfg.work_dir, 'last_checkpoint'))
    return None if cfg.resume else osp.abspath(cfg.work_dir)


def main(argv=None):
    from fla_mm.hooks import check_input_size
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
    nothing_to_resume = resume_settings(cfg, args.resume)
    runner = build_runner(cfg)
    if nothing_to_resume:
        runner.logger.warning(f'--resume: no checkpoint to resume in {nothing_to_resume} '
                              '(no last_checkpoint file there); training starts from '
                              'iteration 1')
    runner.train()
    if runner.rank == 0:
        last = osp.join(cfg.work_dir, 'last_checkpoint')
        ckpt = open(last).read().strip() if osp.exists(last) else '(none saved)'
        runner.logger.info(f'Done. work_dir: {osp.abspath(cfg.work_dir)} | '
                           f'log: {runner.log_dir} | last checkpoint: {ckpt}')
    close_distributed()


if __name__ == '__main__':
    main()
