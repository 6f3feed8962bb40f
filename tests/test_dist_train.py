"""Multi-process training as a user launches it: tools/dist_train.sh (torchrun + MMEngine's
DDP), two CPU processes over gloo. Rank 0 alone writes the log and the checkpoints; both ranks
train (the log says world size 2, and each iteration is logged once)."""
import glob
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, free_port

pytest.importorskip('mmseg')
from test_train_seg import CONFIG, _overrides  # noqa: E402


def test_dist_train_two_processes_rank0_writes(toy_ade20k, tmp_path):
    work = str(tmp_path / 'work')
    env = dict(os.environ, PORT=str(free_port()), OMP_NUM_THREADS='1',
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
    proc = subprocess.run(
        ['bash', os.path.join(ROOT, 'tools/dist_train.sh'), CONFIG, '2', '--work-dir', work,
         '--cfg-options', *_overrides(toy_ade20k), 'train_cfg.val_interval=100'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert 'nccl -> gloo' in out
    logs = glob.glob(os.path.join(work, '*', '*.log'))
    assert len(logs) == 1, logs                       # one run directory, one log: rank 0's
    text = open(logs[0]).read()
    assert 'Distributed training: True' in text and 'GPU number: 2' in text
    ckpts = sorted(os.path.basename(p) for p in glob.glob(os.path.join(work, '*.pth')))
    assert ckpts == ['iter_2.pth', 'iter_4.pth']
    rows = [json.loads(line) for line in open(glob.glob(os.path.join(
        work, '*', 'vis_data', 'scalars.json'))[0])]
    iters = [r['iter'] for r in rows if 'loss' in r]
    assert iters == [1, 2, 3, 4]                      # each iteration logged once
    import torch
    ckpt = torch.load(os.path.join(work, 'iter_4.pth'), map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == 4 and 'optimizer' in ckpt
    # DDP's wrapper prefix must not leak into the saved weights
    assert not any(k.startswith('module.') for k in ckpt['state_dict'])


@pytest.mark.parametrize('legacy', [None, True])
def test_ddp_wrapper_from_config(legacy):
    """The shipped runtime wraps DDP with gradients as bucket views; the legacy top-level
    ``find_unused_parameters`` (which MMEngine drops once a wrapper is set) still applies."""
    from mmengine.config import Config

    from conftest import load_tool
    cfg = Config.fromfile(CONFIG)
    if legacy is not None:
        cfg.find_unused_parameters = legacy
    wrapper = load_tool('_common')._ddp_wrapper(cfg)
    assert wrapper['type'] == 'MMDistributedDataParallel'
    assert wrapper['gradient_as_bucket_view'] is True
    assert wrapper['find_unused_parameters'] is bool(legacy)
