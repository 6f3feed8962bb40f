"""Tests for fla_mm.toy_data: layout, label ranges, determinism, COCO validity,
and (when mmcv/mmseg/mmdet import) that the real dataset classes load it."""
import glob
import hashlib
import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
from fla_mm import toy_data  # noqa: E402
from fla_mm.toy_data import make_ade20k, make_coco  # noqa: E402

SMALL = dict(num_train=6, num_val=3)


def _hashes(root):
    out = {}
    for p in sorted(glob.glob(osp.join(root, '**', '*'), recursive=True)):
        if osp.isfile(p):
            with open(p, 'rb') as f:
                out[osp.relpath(p, root)] = hashlib.md5(f.read()).hexdigest()
    return out


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('ade'))
    make_ade20k(root, size=(128, 144), **SMALL)
    return root


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('coco'))
    make_coco(root, size=160, **SMALL)
    return root


def test_ade_layout_and_labels(ade):
    for split, pre, n in [('training', 'train', 6), ('validation', 'val', 3)]:
        imgs = sorted(glob.glob(f'{ade}/images/{split}/ADE_{pre}_*.jpg'))
        anns = sorted(glob.glob(f'{ade}/annotations/{split}/ADE_{pre}_*.png'))
        assert len(imgs) == len(anns) == n
        assert osp.basename(imgs[0]) == f'ADE_{pre}_00000001.jpg'
        for i, a in zip(imgs, anns):
            img = cv2.imread(i, cv2.IMREAD_UNCHANGED)
            lab = cv2.imread(a, cv2.IMREAD_UNCHANGED)
            assert img.shape == (128, 144, 3) and lab.shape == (128, 144)
            assert lab.dtype == np.uint8
            vals = set(np.unique(lab).tolist())
            assert vals <= {0} | set(toy_data.ADE_CLASSES)
            assert 0 in vals and len(vals) >= 3
    assert set(toy_data.ADE_CLASSES) <= set(range(1, 151))


def test_determinism_and_idempotence(tmp_path):
    a, b, c = (str(tmp_path / n) for n in 'abc')
    make_ade20k(a, **SMALL)
    make_ade20k(b, **SMALL)
    make_ade20k(c, seed=1, **SMALL)
    ha, hb, hc = _hashes(a), _hashes(b), _hashes(c)
    assert ha == hb
    assert ha.keys() == hc.keys()
    assert sum(ha[k] != hc[k] for k in ha) >= 2 * (6 + 3)  # all images+labels
    mtime = os.path.getmtime(osp.join(a, 'images/training/ADE_train_00000001.jpg'))
    assert make_ade20k(a, **SMALL)['cached']
    assert mtime == os.path.getmtime(
        osp.join(a, 'images/training/ADE_train_00000001.jpg'))
    # other params regenerate and leave no stale files behind
    s = make_ade20k(a, num_train=2, num_val=1)
    assert not s['cached'] and len(glob.glob(f'{a}/images/*/*.jpg')) == 3
    make_coco(a + 'c', **SMALL)
    make_coco(b + 'c', **SMALL)
    assert _hashes(a + 'c') == _hashes(b + 'c')


def test_refuses_foreign_dataset(tmp_path):
    os.makedirs(tmp_path / 'images/training')
    (tmp_path / 'images/training/real.jpg').write_bytes(b'x')
    with pytest.raises(FileExistsError):
        make_ade20k(str(tmp_path), **SMALL)


def test_coco_json(coco):
    from pycocotools.coco import COCO
    for split, n in [('train2017', 6), ('val2017', 3)]:
        api = COCO(f'{coco}/annotations/instances_{split}.json')
        assert len(api.getImgIds()) == n and len(api.getCatIds()) == 80
        assert set(api.getCatIds()) == {i for i, _ in toy_data.COCO_CATEGORIES}
        assert len(api.getAnnIds()) >= 2 * n
        for img in api.loadImgs(api.getImgIds()):
            assert osp.isfile(f"{coco}/{split}/{img['file_name']}")
            union = np.zeros((img['height'], img['width']), np.uint8)
            for ann in api.loadAnns(api.getAnnIds(imgIds=img['id'])):
                assert ann['category_id'] in toy_data.COCO_DRAWN
                assert ann['iscrowd'] == 0
                m = api.annToMask(ann)
                assert m.shape == (160, 160) and m.sum() > 0
                assert abs(int(m.sum()) - ann['area']) <= 0.25 * ann['area']
                ys, xs = np.nonzero(m)
                x, y, w, h = ann['bbox']
                assert x - 1 <= xs.min() and xs.max() <= x + w
                assert y - 1 <= ys.min() and ys.max() <= y + h
                assert xs.max() - xs.min() >= w - 4  # bbox is tight
                assert ys.max() - ys.min() >= h - 4
                assert not (union & m).any()  # instances never overlap
                union |= m


def test_cli(tmp_path):
    out = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools/make_toy_data.py'), 'coco',
         str(tmp_path), '--num-train', '2', '--num-val', '1', '--size', '128'],
        capture_output=True, text=True, check=True).stdout
    assert 'coco toy dataset' in out
    with open(tmp_path / 'fla_mm_toy.json') as f:
        assert json.load(f)['size'] == [128, 128]


def test_core_module_is_light():
    code = ('import importlib.util, sys; '
            f's = importlib.util.spec_from_file_location("t", {toy_data.__file__!r}); '
            's.loader.exec_module(importlib.util.module_from_spec(s)); '
            'bad = [m for m in sys.modules if m.split(".")[0] in '
            '("torch", "mmcv", "mmseg", "mmdet", "mmengine")]; '
            'assert not bad, bad')
    subprocess.run([sys.executable, '-c', code], check=True)


def test_mmseg_ade20k_dataset(ade):
    pytest.importorskip('mmcv')
    datasets = pytest.importorskip('mmseg.datasets')
    ds = datasets.ADE20KDataset(
        data_root=ade, pipeline=[],
        data_prefix=dict(img_path='images/validation',
                         seg_map_path='annotations/validation'))
    assert len(ds) == 3
    info = ds[0]
    assert osp.isfile(info['img_path']) and osp.isfile(info['seg_map_path'])
    assert info['reduce_zero_label'] is True
    names = ds.metainfo['classes']
    for cid, name in toy_data.ADE_CLASSES.items():
        assert names[cid - 1].strip() == name


def test_mmdet_coco_dataset(coco):
    pytest.importorskip('mmcv')
    datasets = pytest.importorskip('mmdet.datasets')
    ds = datasets.CocoDataset(
        data_root=coco, ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'), pipeline=[])
    assert len(ds) == 3
    assert [n for _, n in toy_data.COCO_CATEGORIES] == list(ds.metainfo['classes'])
    info = ds[0]
    assert osp.isfile(info['img_path']) and len(info['instances']) >= 2


def _val_dataset_with_corrupt_file(kind, pattern, payload, tmp_path):
    """The toy config's validation dataset over generated data whose second file matching
    `pattern` (relative to the data root) is overwritten with `payload` (None: left as
    generated); returns the dataset and that file's path."""
    scope = dict(ade20k='mmseg', coco='mmdet')[kind]
    pytest.importorskip(scope)
    import importlib

    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import fla_mm  # noqa: F401
    importlib.import_module(f'{scope}.datasets')
    root = str(tmp_path / kind)
    make = dict(ade20k=make_ade20k, coco=toy_data.make_coco)[kind]
    make(root, num_train=1, num_val=2, seed=0)
    bad = sorted(glob.glob(os.path.join(root, pattern)))[1]
    if payload is not None:
        with open(bad, 'wb') as f:
            f.write(payload)
    config = dict(ade20k='configs/toy/upernet_gla_toy_ade20k.py',
                  coco='configs/toy/mask_rcnn_gla_toy_coco.py')[kind]
    ds_cfg = Config.fromfile(os.path.join(ROOT, config)).val_dataloader.dataset
    ds_cfg.data_root = root
    if kind == 'coco':
        ds_cfg.ann_file = 'annotations/instances_val2017.json'
    init_default_scope(scope)
    return importlib.import_module(f'{scope}.registry').DATASETS.build(ds_cfg), bad


def test_corrupt_annotation_error_names_the_file(tmp_path):
    """The configs load annotations through NameFileOnError: a corrupt PNG names itself."""
    dataset, bad = _val_dataset_with_corrupt_file(
        'ade20k', 'annotations/validation/*.png', b'not a png', tmp_path)
    dataset[0]
    with pytest.raises(RuntimeError, match=os.path.basename(bad)):
        dataset[1]


@pytest.mark.parametrize('kind,pattern', [('ade20k', 'images/validation/*.jpg'),
                                          ('coco', 'val2017/*.jpg')])
def test_corrupt_image_error_names_the_file(kind, pattern, tmp_path):
    """A corrupt JPEG in a dataset stops with an error that names the file (mmcv's loader)."""
    dataset, bad = _val_dataset_with_corrupt_file(kind, pattern, b'\xff\xd8 not a jpeg',
                                                  tmp_path)
    dataset[0]
    with pytest.raises(Exception, match=os.path.basename(bad)):
        dataset[1]


def test_toy_seg_config_lists_only_the_drawn_classes(tmp_path):
    """The toy seg config's metainfo is the 10 drawn ADE20K classes (its heads have 10
    outputs): mmseg maps each drawn ADE20K id to its place in that list, all else to 255."""
    dataset, _ = _val_dataset_with_corrupt_file('ade20k', 'images/validation/*.jpg', None,
                                                tmp_path)
    assert dataset.metainfo['classes'] == tuple(toy_data.ADE_CLASSES.values())
    ids = list(toy_data.ADE_CLASSES)
    lab = cv2.imread(dataset[0]['data_samples'].seg_map_path, cv2.IMREAD_GRAYSCALE)
    gt = dataset[0]['data_samples'].gt_sem_seg.data.numpy()[0]
    for ade_id in np.unique(lab):
        want = ids.index(ade_id) if ade_id in ids else 255
        assert set(np.unique(gt[lab == ade_id])) == {want}, ade_id
