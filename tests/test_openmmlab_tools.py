"""OpenMMLab's own entry points on fla_mm's configs and the checkpoints they write.

mmseg's and mmdet's ``tools/train.py`` / ``tools/test.py`` as their wheels ship them
(``<package>/.mim/tools``), run in a fresh interpreter without any
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, on one toy checkpoint per task and session (conftest's
``toy_seg_run`` / ``toy_det_run``).
"""
import os
import shutil

import pytest

from conftest import ROOT, openmmlab_tool, run_script, toy_options


def test_fla_mm_sets_no_weights_only_override():
    """Neither the package nor the tools switch torch's safe loading off for the process."""
    code = ('import os, sys; sys.path.insert(0, "tools"); import fla_mm, _common, train, test; '
            'from mmengine.config import Config; Config.fromfile(sys.argv[1]); '
            'print("override:", os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"))')
    log = run_script('-c', code, os.path.join(ROOT, 'configs/toy/upernet_gla_toy_ade20k.py'))
    assert 'override: None' in log, log[-2000:]
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ


def _resume_copy(run, tmp_path, name):
    """A copy of a run's work dir whose last checkpoint is ``name`` (as after a crash)."""
    work = str(tmp_path / 'work')
    shutil.copytree(run['work_dir'], work)
    with open(os.path.join(work, 'last_checkpoint'), 'w') as f:
        f.write(os.path.join(work, name))
    return work


def test_mmseg_test_tool_on_trained_checkpoint(toy_seg_run, tmp_path):
    log = run_script(openmmlab_tool('mmseg', 'test'), toy_seg_run['config'],
                     toy_seg_run['checkpoint'], '--work-dir', str(tmp_path),
                     '--cfg-options', *toy_options('seg', toy_seg_run['data_root']))
    assert 'Load checkpoint from' in log and 'mIoU' in log, log[-3000:]
    assert 'Weights only load failed' not in log


def test_mmseg_train_resume(toy_seg_run, tmp_path):
    work = _resume_copy(toy_seg_run, tmp_path, 'iter_2.pth')
    os.remove(os.path.join(work, 'iter_4.pth'))
    log = run_script(openmmlab_tool('mmseg', 'train'), toy_seg_run['config'], '--work-dir',
                     work, '--resume', '--cfg-options',
                     *toy_options('seg', toy_seg_run['data_root'], 4))
    assert 'resumed epoch: 0, iter: 2' in log, log[-3000:]
    assert os.path.isfile(os.path.join(work, 'iter_4.pth'))


def test_mmdet_test_tool_on_trained_checkpoint(toy_det_run, tmp_path):
    log = run_script(openmmlab_tool('mmdet', 'test'), toy_det_run['config'],
                     toy_det_run['checkpoint'], '--work-dir', str(tmp_path),
                     '--cfg-options', *toy_options('det', toy_det_run['data_root']))
    assert 'Load checkpoint from' in log and 'coco/segm_mAP' in log, log[-3000:]


def test_mmdet_train_resume(toy_det_run, tmp_path):
    """Resumed at its last epoch, the run loads everything and has nothing left to train."""
    work = _resume_copy(toy_det_run, tmp_path, 'epoch_1.pth')
    log = run_script(openmmlab_tool('mmdet', 'train'), toy_det_run['config'], '--work-dir',
                     work, '--resume', '--cfg-options',
                     *toy_options('det', toy_det_run['data_root'], 1))
    assert 'resumed epoch: 1, iter: 3' in log, log[-3000:]
    assert 'Epoch(train)' not in log
