"""OpenMMLab's own entry points on fla_mm's configs and the checkpoints they write.

mmseg's and mmdet's ``tools/train.py`` / ``tools/test.py`` as their wheels ship them
(``<package>/.mim/tools``), run in a fresh interpreter without any
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, on one toy checkpoint per task and session (conftest's
``toy_seg_run`` / ``toy_det_run``).
"""
import glob
import os
import re
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


def _files(root, ext):
    return sorted(glob.glob(os.path.join(root, '**', f'*.{ext}'), recursive=True))


def test_mmseg_test_tool_on_trained_checkpoint(toy_seg_run, tmp_path):
    """mmseg's test.py loads the checkpoint, evaluates the toy classes only (no rows of
    ADE20K classes the toy data never draws) and, with --show-dir, writes overlays: every
    4th validation image (the toy config's visualization interval), 1 of the 4 here."""
    show = str(tmp_path / 'show')
    log = run_script(openmmlab_tool('mmseg', 'test'), toy_seg_run['config'],
                     toy_seg_run['checkpoint'], '--work-dir', str(tmp_path), '--show-dir', show,
                     '--cfg-options', *toy_options('seg', toy_seg_run['data_root']))
    assert 'Load checkpoint from' in log and 'mIoU' in log, log[-3000:]
    assert 'Weights only load failed' not in log
    assert '|   lamp   |' in log and 'building' not in log, log[-3000:]
    assert [os.path.basename(f) for f in _files(show, 'png')] == ['test_ADE_val_00000004.jpg_0.png']


def test_mmseg_train_resume(toy_seg_run, tmp_path):
    work = _resume_copy(toy_seg_run, tmp_path, 'iter_2.pth')
    os.remove(os.path.join(work, 'iter_4.pth'))
    log = run_script(openmmlab_tool('mmseg', 'train'), toy_seg_run['config'], '--work-dir',
                     work, '--resume', '--cfg-options',
                     *toy_options('seg', toy_seg_run['data_root'], 4))
    assert 'resumed epoch: 0, iter: 2' in log, log[-3000:]
    assert os.path.isfile(os.path.join(work, 'iter_4.pth'))


def test_mmdet_test_tool_on_trained_checkpoint(toy_det_run, tmp_path):
    """mmdet's test.py evaluates the checkpoint and, with --show-dir, draws every image
    (named as the input, a JPEG here)."""
    show = str(tmp_path / 'show')
    log = run_script(openmmlab_tool('mmdet', 'test'), toy_det_run['config'],
                     toy_det_run['checkpoint'], '--work-dir', str(tmp_path), '--show-dir', show,
                     '--cfg-options', *toy_options('det', toy_det_run['data_root']))
    assert 'Load checkpoint from' in log and 'coco/segm_mAP' in log, log[-3000:]
    assert len(_files(show, 'jpg')) == 3, log[-3000:]


def test_mmdet_train_resume(toy_det_run, tmp_path):
    """Resumed at its last epoch, the run loads everything and has nothing left to train."""
    work = _resume_copy(toy_det_run, tmp_path, 'epoch_1.pth')
    log = run_script(openmmlab_tool('mmdet', 'train'), toy_det_run['config'], '--work-dir',
                     work, '--resume', '--cfg-options',
                     *toy_options('det', toy_det_run['data_root'], 1))
    assert 'resumed epoch: 1, iter: 3' in log, log[-3000:]
    assert 'Epoch(train)' not in log


def _first(root, pattern):
    return sorted(glob.glob(os.path.join(root, pattern)))[0]


def test_mmseg_inference_apis_on_trained_checkpoint(toy_seg_run):
    """init_model + inference_model and MMSegInferencer on one toy image: the configs'
    NameFileOnError(LoadAnnotations) stays in the pipeline (mmseg strips only a step named
    exactly LoadAnnotations) and passes a bare image through."""
    import mmcv
    from mmseg.apis import MMSegInferencer, inference_model, init_model
    image = _first(toy_seg_run['data_root'], 'images/validation/*.jpg')
    h, w = mmcv.imread(image).shape[:2]
    model = init_model(toy_seg_run['config'], toy_seg_run['checkpoint'], device='cpu')
    assert [t['type'] for t in model.cfg.test_pipeline][2] == 'NameFileOnError'
    result = inference_model(model, image)
    assert tuple(result.pred_sem_seg.data.shape) == (1, h, w)
    assert int(result.pred_sem_seg.data.max()) < 10 == len(model.dataset_meta['classes'])

    inferencer = MMSegInferencer(model=toy_seg_run['config'],
                                 weights=toy_seg_run['checkpoint'], device='cpu')
    out = inferencer(image, return_vis=True)
    assert out['predictions'].shape == (h, w) and out['visualization'].shape == (h, w, 3)
    assert (out['predictions'] == result.pred_sem_seg.data[0].numpy()).all()


def test_mmdet_inference_apis_on_trained_checkpoint(toy_det_run):
    """DetInferencer and init_detector + inference_detector on one toy COCO image."""
    import mmcv
    from mmdet.apis import DetInferencer, inference_detector, init_detector
    image = _first(toy_det_run['data_root'], 'val2017/*.jpg')
    h, w = mmcv.imread(image).shape[:2]
    inferencer = DetInferencer(model=toy_det_run['config'], weights=toy_det_run['checkpoint'],
                               device='cpu')
    out = inferencer(image, return_vis=True, no_save_vis=True)
    assert set(out['predictions'][0]) >= {'labels', 'scores', 'bboxes', 'masks'}
    assert out['visualization'][0].shape == (h, w, 3)
    model = init_detector(toy_det_run['config'], toy_det_run['checkpoint'], device='cpu')
    result = inference_detector(model, image)
    assert result.pred_instances.bboxes.shape[-1] == 4 and result.ori_shape == (h, w)


def test_demo_inference_script(toy_seg_run, tmp_path):
    image = _first(toy_seg_run['data_root'], 'images/validation/*.jpg')
    out = str(tmp_path / 'overlay.png')
    log = run_script(os.path.join(ROOT, 'demo/inference.py'), image, toy_seg_run['config'],
                     toy_seg_run['checkpoint'], '--out', out, '--device', 'cpu')
    assert 'classes by area:' in log and f'overlay: {out}' in log, log[-2000:]
    import mmcv
    assert mmcv.imread(out).shape == mmcv.imread(image).shape


def test_fla_mm_test_tool_show_dir(toy_seg_run, tmp_path):
    """fla_mm's tools/test.py --show-dir (every image with --show-interval 1); the metrics
    line holds plain floats."""
    show = str(tmp_path / 'show')
    log = run_script(os.path.join(ROOT, 'tools/test.py'), toy_seg_run['config'],
                     toy_seg_run['checkpoint'], '--work-dir', str(tmp_path / 'work'),
                     '--show-dir', show, '--show-interval', '1',
                     '--cfg-options', *toy_options('seg', toy_seg_run['data_root']))
    assert len(_files(show, 'png')) == 4, log[-3000:]
    line = next(x for x in log.splitlines() if 'Metrics: ' in x)
    assert re.search(r"Metrics: \{'aAcc': [\d.]+, 'mIoU': [\d.]+, 'mAcc': [\d.]+\}", line), line
    assert all(len(v.split('.')[-1]) <= 4 for v in re.findall(r'[\d.]+(?=[,}])', line)), line
    assert f'Prediction overlays: {show}' in log


def test_fla_mm_train_resume_without_checkpoint_warns(toy_ade20k, tmp_path):
    """--resume in a work dir without a last_checkpoint trains from iteration 1 and says so
    in one warning naming that dir, not "Auto resumed from the latest checkpoint None"."""
    from conftest import run_tool
    work = str(tmp_path / 'empty')
    run_tool('train', os.path.join(ROOT, 'configs/toy/upernet_gla_toy_ade20k.py'), '--work-dir',
             work, '--resume', '--cfg-options', *toy_options('seg', toy_ade20k))
    log = open(_files(work, 'log')[0]).read()
    warnings = [x for x in log.splitlines() if 'WARNING' in x and '--resume' in x]
    assert warnings == [x for x in log.splitlines() if 'no checkpoint to resume' in x]
    assert len(warnings) == 1 and f'in {os.path.abspath(work)} (no last_checkpoint' in warnings[0]
    assert 'Auto resumed' not in log and 'Iter(train) [1/2]' in log


def test_mmseg_train_tool_with_crop_the_backbone_cannot_divide(toy_ade20k, tmp_path):
    """mmseg's own train.py stops before the first iteration with fla_mm's error (the
    configs' InputSizeCheckHook), naming the sizes that fit."""
    rc, log = run_script(openmmlab_tool('mmseg', 'train'),
                         os.path.join(ROOT, 'configs/toy/upernet_gla_toy_ade20k.py'),
                         '--work-dir', str(tmp_path), '--cfg-options',
                         *toy_options('seg', toy_ade20k),
                         'train_dataloader.dataset.pipeline.3.crop_size=(500,500)',
                         'model.data_preprocessor.size=(500,500)', check=False)
    assert rc != 0, log[-2000:]
    assert ('ValueError: train pipeline RandomCrop crop_size = (500, 500) does not fit '
            'FLAPyramid: sizes must be multiples of 32 (nearest: 480, 512)') in log, log[-2000:]
    assert 'Iter(train)' not in log
