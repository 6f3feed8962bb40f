"""Shared fixtures: small generated datasets and one trained toy checkpoint per task, made
once per test session, and helpers that run the tools as a user does."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# every test loads checkpoints as a user's shell would, with torch's weights-only default
os.environ.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state: a tolerance that a test's random
    inputs meet once is met every run, in any test order."""
    import random

    import numpy as np
    import torch
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _release_gpu_memory():
    """Hand the GPU memory PyTorch's caching allocator holds back after each test: a GPU test
    at 65k tokens reserves tens of GiB, which would otherwise stay reserved for the rest of
    the session and starve the other pytest-xdist workers on the same GPU (out of memory)."""
    yield
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@pytest.fixture(scope='session')
def toy_ade20k(tmp_path_factory):
    from fla_mm.toy_data import make_ade20k
    root = tmp_path_factory.mktemp('toy_ade20k')
    make_ade20k(str(root), num_train=8, num_val=4, seed=0)
    return str(root)


@pytest.fixture(scope='session')
def toy_coco(tmp_path_factory):
    from fla_mm.toy_data import make_coco
    root = tmp_path_factory.mktemp('toy_coco')
    make_coco(str(root), num_train=6, num_val=3, seed=0)
    return str(root)


SEG_TOY = os.path.join(ROOT, 'configs/toy/upernet_gla_toy_ade20k.py')
DET_TOY = os.path.join(ROOT, 'configs/toy/mask_rcnn_gla_toy_coco.py')


def toy_options(task, root, length=2):
    """--cfg-options for a toy config on a test's own data: ``length`` iterations (seg, a
    checkpoint every 2) or epochs (det, images resized to 128x96), batches of 2, no worker
    processes, no validation while training; an untrained detector's boxes are kept
    (score_thr 0) so that CocoMetric has results."""
    loaders = ('train', 'val', 'test')
    opts = {f'{s}_dataloader.dataset.data_root': root for s in loaders}
    opts.update({f'{s}_dataloader.num_workers': 0 for s in loaders})
    opts.update({'train_dataloader.persistent_workers': False, 'train_cfg.val_begin': 1000,
                 'default_hooks.logger.interval': 1})
    if task == 'seg':
        opts.update({'train_cfg.max_iters': length,
                     'default_hooks.checkpoint.interval': 2, 'train_dataloader.batch_size': 2,
                     'param_scheduler.0.end': 1, 'param_scheduler.1.begin': 1,
                     'param_scheduler.1.end': length})
    else:
        ann = os.path.join(root, 'annotations/instances_val2017.json')
        opts.update({f'{s}_dataloader.dataset.data_root': root.rstrip('/') + '/'
                     for s in loaders})
        opts.update({'val_evaluator.ann_file': ann, 'test_evaluator.ann_file': ann,
                     'train_cfg.max_epochs': length, 'model.test_cfg.rcnn.score_thr': 0.0,
                     'train_dataloader.dataset.pipeline.2.scale': '(128,96)'})
        opts.update({f'{s}_dataloader.dataset.pipeline.1.scale': '(128,96)'
                     for s in ('val', 'test')})
    return [f'{k}={v}' for k, v in opts.items()]


def openmmlab_tool(package, name):
    """mmseg's / mmdet's own tools/<name>.py, as its wheel ships it (<package>/.mim/tools)."""
    module = pytest.importorskip(package)
    path = os.path.join(os.path.dirname(module.__file__), '.mim', 'tools', f'{name}.py')
    if not os.path.isfile(path):
        pytest.skip(f'{package} ships no {path}')
    return path


def run_script(path, *args, check=True):
    """Run a script in a fresh interpreter as a user would: from the repo root, this checkout
    first on the path, no TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD. Returns stdout + stderr."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (ROOT, os.environ.get('PYTHONPATH')) if p))
    env.pop('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', None)
    out = subprocess.run([sys.executable, path, *args], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    log = out.stdout + out.stderr
    if check and out.returncode:
        raise AssertionError(f'{os.path.relpath(path, ROOT)} exited {out.returncode}:\n'
                             f'{log[-5000:]}')
    return log if check else (out.returncode, log)


@pytest.fixture(scope='session')
def toy_seg_run(toy_ade20k, tmp_path_factory):
    """UperNet-GLA trained 4 iterations on toy ADE20K by mmseg's own tools/train.py:
    iter_2.pth and iter_4.pth, shared by every test that loads a real checkpoint."""
    work = str(tmp_path_factory.mktemp('toy_seg_run'))
    run_script(openmmlab_tool('mmseg', 'train'), SEG_TOY, '--work-dir', work,
               '--cfg-options', *toy_options('seg', toy_ade20k, 4))
    return dict(config=SEG_TOY, work_dir=work, data_root=toy_ade20k,
                checkpoint=os.path.join(work, 'iter_4.pth'))


@pytest.fixture(scope='session')
def toy_det_run(toy_coco, tmp_path_factory):
    """Mask R-CNN-GLA trained 1 epoch on toy COCO by mmdet's own tools/train.py."""
    pytest.importorskip('mmcv.ops')
    work = str(tmp_path_factory.mktemp('toy_det_run'))
    run_script(openmmlab_tool('mmdet', 'train'), DET_TOY, '--work-dir', work,
               '--cfg-options', *toy_options('det', toy_coco, 1))
    return dict(config=DET_TOY, work_dir=work, data_root=toy_coco,
                checkpoint=os.path.join(work, 'epoch_1.pth'))


def load_tool(name):
    """tools/<name>.py as a module, imported as the tools import each other (tools/ on sys.path)."""
    import importlib.util
    path = os.path.join(ROOT, 'tools', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'fla_mm_tool_{name}', path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(os.path.join(ROOT, 'tools'))
    return module


def run_tool(name, *args):
    """Run tools/<name>.py in-process (as a user would from the repo root) and return its result."""
    return load_tool(name).main(list(args))


def free_port():
    """A TCP port nobody listens on now, for a process group's rendezvous."""
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def gpu_report(line):
    """Print a line of a GPU result table; also append it to $FLA_MM_GPU_TABLE (xdist
    workers hide stdout), which is how the tables in docs/mixers.md were collected."""
    print(line)
    path = os.environ.get('FLA_MM_GPU_TABLE')
    if path:
        with open(path, 'a') as f:
            f.write(line.strip() + '\n')
