"""End to end, as a user runs it: tools/train.py then tools/test.py on generated ADE20K data."""
import glob
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_tool

pytest.importorskip('mmseg')
CONFIG = os.path.join(ROOT, 'configs/toy/upernet_gla_toy_ade20k.py')


def _overrides(data_root):
    ds = ['train_dataloader.dataset.data_root', 'val_dataloader.dataset.data_root',
          'test_dataloader.dataset.data_root']
    return ([f'{k}={data_root}' for k in ds] +
            ['train_cfg.max_iters=4', 'train_cfg.val_interval=4', 'default_hooks.logger.interval=1',
             'default_hooks.checkpoint.interval=2', 'train_dataloader.batch_size=2',
             'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
             'val_dataloader.num_workers=0', 'test_dataloader.num_workers=0',
             'param_scheduler.0.end=2', 'param_scheduler.1.begin=2', 'param_scheduler.1.end=4'])


# Iterations after which the toy model has learnt something: measured on CPU (seed 0), 20
# iterations at the config's lr give aAcc 59 / mIoU 2.4, the same run at lr=0 aAcc 0.02 /
# mIoU 0; at 4 iterations both are 0.
TRAIN_ITERS = 20


def _train_and_test(data_root, work, lr=None):
    extra = [] if lr is None else [f'optim_wrapper.optimizer.lr={lr}']
    opts = _overrides(data_root) + [
        f'train_cfg.max_iters={TRAIN_ITERS}', f'train_cfg.val_interval={TRAIN_ITERS}',
        f'default_hooks.checkpoint.interval={TRAIN_ITERS // 2}', 'param_scheduler.0.end=5',
        'param_scheduler.1.begin=5', f'param_scheduler.1.end={TRAIN_ITERS}', *extra]
    run_tool('train', CONFIG, '--work-dir', work, '--cfg-options', *opts)
    last = open(os.path.join(work, 'last_checkpoint')).read().strip()
    return last, run_tool('test', CONFIG, last, '--work-dir', work, '--cfg-options', *opts)


def test_train_then_test_reports_miou(toy_ade20k, tmp_path):
    work = str(tmp_path / 'work')
    last, metrics = _train_and_test(toy_ade20k, work)
    ckpts = sorted(glob.glob(os.path.join(work, 'iter_*.pth')))
    assert [os.path.basename(c) for c in ckpts] == [f'iter_{TRAIN_ITERS // 2}.pth',
                                                  f'iter_{TRAIN_ITERS}.pth']
    assert last.endswith(f'iter_{TRAIN_ITERS}.pth')
    assert set(metrics) >= {'mIoU', 'aAcc', 'mAcc'}

    # training learnt something: the same run with the learning rate at 0 (BN statistics
    # still move) scores far lower
    _, frozen = _train_and_test(toy_ade20k, str(tmp_path / 'lr0'), lr=0.0)
    assert metrics['aAcc'] >= frozen['aAcc'] + 30, (metrics, frozen)
    assert metrics['mAcc'] > frozen['mAcc'] and metrics['mIoU'] > frozen['mIoU'], (metrics, frozen)

    # the training log records iterations and losses, as MMEngine's logger writes them
    scalars = glob.glob(os.path.join(work, '*', 'vis_data', 'scalars.json'))
    lines = [json.loads(line) for f in scalars for line in open(f)]
    assert any('loss' in r and r.get('iter') == TRAIN_ITERS for r in lines)


def test_checkpoint_reloads_into_the_config_model(toy_ade20k, tmp_path):
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    from mmseg.registry import MODELS

    work = str(tmp_path / 'work')
    run_tool('train', CONFIG, '--work-dir', work, '--cfg-options', *_overrides(toy_ade20k),
             'train_cfg.max_iters=2', 'train_cfg.val_interval=100')
    ckpt = torch.load(os.path.join(work, 'iter_2.pth'), map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == 2
    cfg = Config.fromfile(CONFIG)
    init_default_scope('mmseg')
    import fla_mm  # noqa: F401
    model = MODELS.build(cfg.model)
    load_checkpoint(model, os.path.join(work, 'iter_2.pth'), strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt['state_dict'][k]), k


@pytest.mark.skipif(__import__('torch').cuda.is_available(), reason='checks the CPU message')
def test_amp_without_gpu_is_one_clear_error(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'tools/train.py'), CONFIG, '--amp',
                          '--work-dir', str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0
    assert '--amp needs a GPU' in out.stderr and 'Traceback' not in out.stderr
