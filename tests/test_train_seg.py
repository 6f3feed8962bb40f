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


def test_train_then_test_reports_miou(toy_ade20k, tmp_path):
    work = str(tmp_path / 'work')
    run_tool('train', CONFIG, '--work-dir', work, '--cfg-options', *_overrides(toy_ade20k))
    ckpts = sorted(glob.glob(os.path.join(work, 'iter_*.pth')))
    assert [os.path.basename(c) for c in ckpts] == ['iter_2.pth', 'iter_4.pth']
    last = open(os.path.join(work, 'last_checkpoint')).read().strip()
    assert last.endswith('iter_4.pth')

    metrics = run_tool('test', CONFIG, last, '--work-dir', work,
                       '--cfg-options', *_overrides(toy_ade20k))
    assert set(metrics) >= {'mIoU', 'aAcc', 'mAcc'}
    assert 0.0 <= metrics['mIoU'] <= 100.0

    # the training log records iterations and losses, as MMEngine's logger writes them
    scalars = glob.glob(os.path.join(work, '*', 'vis_data', 'scalars.json'))
    lines = [json.loads(line) for f in scalars for line in open(f)]
    assert any('loss' in r and r.get('iter') == 4 for r in lines)


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
