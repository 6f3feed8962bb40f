"""The GPU configs' fast path (``model.backbone.cuda_graph=True, compile=True``) trains as
eager does: ``tools/train.py`` with the UperNet-GLA-T GPU config on generated ADE20K data,
bf16 AMP, its first 50 losses against the same run eager. The two cannot be bit-equal
(Inductor fuses and reorders the backbone's glue), so the bar is the noise that bf16 itself
brings: the fast path may stray from eager bf16 by at most twice as much as eager bf16 strays
from eager fp32 over the same iterations. ``cuda_graph=True`` alone is held to the same bar.
Each run's losses and MMEngine's median ``time`` are printed (``gpu_report``). GPU and mmseg
only; a few minutes (one cold compile of the backbone)."""
import glob
import json
import os
import statistics

import pytest
import torch

from conftest import ROOT, gpu_report, run_tool

pytest.importorskip('mmseg')
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

CONFIG = os.path.join(ROOT, 'configs/toy/upernet_gla_gpu_ade20k.py')
ITERS = 50
AMP = ['--amp', '--amp-dtype', 'bfloat16']
EAGER = ['model.backbone.cuda_graph=False', 'model.backbone.compile=False']
RUNS = {
    'eager fp32': EAGER,
    'eager bf16': AMP + EAGER,
    'cuda_graph bf16': AMP + ['model.backbone.cuda_graph=True', 'model.backbone.compile=False'],
    'fast path bf16': AMP + ['model.backbone.cuda_graph=True', 'model.backbone.compile=True'],
}


def _train(data_root, work, extra):
    flags = [a for a in extra if a in AMP]
    opts = [a for a in extra if a not in AMP] + [
        f'{k}.dataset.data_root={data_root}' for k in
        ('train_dataloader', 'val_dataloader', 'test_dataloader')] + [
        f'train_cfg.max_iters={ITERS}', f'train_cfg.val_interval={ITERS}',
        'default_hooks.logger.interval=1', f'default_hooks.checkpoint.interval={ITERS}',
        # a short warm-up, so that the 50 iterations learn (and can drift apart)
        'param_scheduler.0.end=10', 'param_scheduler.1.begin=10']
    run_tool('train', CONFIG, '--work-dir', work, *flags, '--cfg-options', *opts)
    rows = [json.loads(line) for f in glob.glob(os.path.join(work, '*', 'vis_data',
                                                             'scalars.json')) for line in open(f)]
    train = {r['iter']: r for r in rows if 'loss' in r}
    assert sorted(train) == list(range(1, ITERS + 1)), sorted(train)
    return [train[i]['loss'] for i in sorted(train)], statistics.median(
        train[i]['time'] for i in sorted(train) if i > 10)


def _distance(a, b):
    """Mean relative distance of two loss curves."""
    return statistics.fmean(abs(x - y) / abs(y) for x, y in zip(a, b))


def test_fast_path_trains_like_eager(tmp_path):
    from fla_mm.toy_data import make_ade20k
    data_root = str(tmp_path / 'data')
    make_ade20k(data_root, num_train=64, num_val=4, size=(320, 320))
    curves, times = {}, {}
    for name, extra in RUNS.items():
        curves[name], times[name] = _train(data_root, str(tmp_path / name.replace(' ', '_')),
                                           extra)
        c = curves[name]
        gpu_report(f'\nfast path: {name:16s} loss {c[0]:.3f} -> {c[-1]:.3f}  median time '
                   f'{times[name]:.4f} s/iter  losses {" ".join(f"{x:.3f}" for x in c)}')
    noise = _distance(curves['eager bf16'], curves['eager fp32'])
    for name in ('cuda_graph bf16', 'fast path bf16'):
        d = _distance(curves[name], curves['eager bf16'])
        gpu_report(f'\nfast path: {name} vs eager bf16 {d:.2e}; eager bf16 vs fp32 {noise:.2e}')
        assert d <= 2 * noise + 1e-3, (name, d, noise)
    for name, c in curves.items():       # and each of them learns
        assert statistics.fmean(c[-10:]) < 0.8 * statistics.fmean(c[:5]), (name, c)
