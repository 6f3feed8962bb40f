"""Deterministic toy datasets in the real ADE20K / COCO layouts.

Why: configs, dataloaders and training loops must be exercised end to end
without downloading the real datasets.  The scenes are simple, but each class
has its own colour, texture and shape, so a tiny model can actually learn them
(mIoU / mAP clearly above chance after a few hundred CPU iterations).

Only numpy, cv2 and json are used: this module is part of the package core and
must not pull in mmcv / mmseg / mmdet.
"""
import json
import os
import os.path as osp
import shutil

import cv2
import numpy as np

VERSION = 1
MARKER = 'fla_mm_toy.json'

# --- class tables -----------------------------------------------------------
# ADE20K ids are 1-based as in the annotation PNGs (0 = "other"/ignore).
# Each entry: name, shape (None for stuff), BGR colour, texture, frequency.
ADE_STUFF = {
    1: ('wall', None, (170, 190, 205), 'stripes_v', 0.10),
    3: ('sky', None, (235, 180, 110), 'gradient', 0.0),
    4: ('floor', None, (60, 100, 150), 'checker', 0.16),
    10: ('grass', None, (50, 150, 60), 'noise', 0.0),
}
ADE_THINGS = {
    13: ('person', 'ellipse_tall', (80, 80, 220), 'flat', 0.0),
    16: ('table', 'rect_wide', (170, 160, 0), 'stripes_h', 0.35),
    20: ('chair', 'triangle', (200, 60, 160), 'dots', 0.45),
    21: ('car', 'trapezoid', (200, 80, 20), 'stripes_d', 0.30),
    23: ('painting', 'diamond', (40, 200, 230), 'checker', 0.55),
    37: ('lamp', 'circle', (240, 240, 240), 'rings', 0.50),
}
ADE_CLASSES = {k: v[0] for k, v in sorted({**ADE_STUFF, **ADE_THINGS}.items())}

# The 80 COCO categories with their official (non-contiguous) ids.
COCO_CATEGORIES = [(i, n) for i, n in zip(
    [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66),
     67, 70, *range(72, 83), *range(84, 91)],
    ['person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train',
     'truck', 'boat', 'traffic light', 'fire hydrant', 'stop sign',
     'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
     'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella',
     'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard',
     'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard',
     'surfboard', 'tennis racket', 'bottle', 'wine glass', 'cup', 'fork',
     'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange',
     'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair',
     'couch', 'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop',
     'mouse', 'remote', 'keyboard', 'cell phone', 'microwave', 'oven',
     'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
     'teddy bear', 'hair drier', 'toothbrush'])]
COCO_DRAWN = {
    13: ('stop sign', 'octagon', (40, 40, 210), 'flat', 0.0),
    34: ('frisbee', 'ellipse_wide', (220, 200, 40), 'rings', 0.45),
    37: ('sports ball', 'circle', (30, 140, 250), 'stripes_d', 0.40),
    38: ('kite', 'diamond', (200, 50, 200), 'checker', 0.50),
    59: ('pizza', 'triangle', (70, 190, 230), 'dots', 0.50),
    72: ('tv', 'rect_wide', (50, 50, 50), 'stripes_h', 0.40),
}


# --- drawing helpers ---------------------------------------------------------
def _texture(kind, freq, h, w, rng):
    """Pattern in [-1, 1]; the kind/frequency identify the class, the random
    phase keeps it from being a fixed pixel template."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    ph = rng.uniform(0, 2 * np.pi)
    if kind == 'flat':
        return np.zeros((h, w), np.float32)
    if kind == 'gradient':
        return (y / h) * 2 - 1
    if kind == 'noise':
        n = rng.standard_normal((h, w)).astype(np.float32)
        n = cv2.GaussianBlur(n, (0, 0), 1.5)
        return np.clip(n / (n.std() + 1e-6), -1, 1)
    if kind == 'stripes_v':
        return np.sin(freq * x * 2 + ph)
    if kind == 'stripes_h':
        return np.sin(freq * y * 2 + ph)
    if kind == 'stripes_d':
        return np.sin(freq * (x + y) * 1.5 + ph)
    if kind == 'checker':
        return np.sign(np.sin(freq * x + ph) * np.sin(freq * y + ph))
    if kind == 'dots':
        return (np.cos(freq * x * 1.5 + ph) * np.cos(freq * y * 1.5) > 0.5) * 2.0 - 1
    if kind == 'rings':
        r = np.hypot(x - rng.uniform(0, w), y - rng.uniform(0, h))
        return np.sin(freq * r * 2)
    raise ValueError(kind)


def _class_image(spec, h, w, rng, amp=40):
    """Full-frame colour+texture layer for one class (with slight jitter)."""
    colour = np.array(spec[2], np.float32) + rng.uniform(-12, 12, 3)
    t = _texture(spec[3], spec[4], h, w, rng)
    tint = np.array([1.0, 0.8, 0.6], np.float32)
    return colour + amp * t[..., None] * tint


def _shape_polygon(shape, cx, cy, r, angle):
    """Polygon (N, 2) int32 for a class shape, centre (cx, cy), radius r."""
    n, start, sx, sy = {
        'circle': (24, 0, 1, 1), 'ellipse_tall': (24, 0, .55, 1),
        'ellipse_wide': (24, 0, 1, .5), 'rect_wide': (4, np.pi / 4, 1.3, .75),
        'triangle': (3, -np.pi / 2, 1, 1), 'diamond': (4, 0, .8, 1),
        'octagon': (8, np.pi / 8, 1, 1), 'trapezoid': (None, 0, 1, 1)}[shape]
    if n is None:
        pts = np.array([[-1, .5], [1, .5], [.6, -.4], [-.6, -.4]], np.float64)
    else:
        t = start + 2 * np.pi * np.arange(n) / n
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    pts = pts * [sx * r, sy * r]
    c, s = np.cos(angle), np.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]]) + [cx, cy]
    return np.round(pts).astype(np.int32)


def _finish(img, rng):
    """Blur (soft edges like a photo) + sensor noise -> uint8."""
    img = cv2.GaussianBlur(img.astype(np.float32), (3, 3), 0.7)
    img += rng.normal(0, 4, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _hw(size):
    return (size, size) if isinstance(size, int) else tuple(int(s) for s in size)


# --- dataset bookkeeping -----------------------------------------------------
def _prepare(root, params, dirs, expected):
    """Return True if `root` already holds this exact dataset; otherwise clear
    our own old output (never an unmarked, foreign dataset) and return False."""
    marker = osp.join(root, MARKER)
    if osp.exists(marker):
        with open(marker) as f:
            old = json.load(f)
        if old == params and all(osp.exists(osp.join(root, p)) for p in expected):
            return True
        os.remove(marker)
        for d in dirs:
            shutil.rmtree(osp.join(root, d), ignore_errors=True)
    else:
        for d in dirs:
            if osp.isdir(osp.join(root, d)) and os.listdir(osp.join(root, d)):
                raise FileExistsError(
                    f'{osp.join(root, d)} is not empty and has no {MARKER}; '
                    'refusing to overwrite a dataset we did not generate')
    for d in dirs:
        os.makedirs(osp.join(root, d), exist_ok=True)
    return False


def _write_marker(root, params):
    with open(osp.join(root, MARKER), 'w') as f:
        json.dump(params, f, indent=1, sort_keys=True)


# --- ADE20K ------------------------------------------------------------------
def _ade_scene(h, w, rng):
    """One image + label map: two stuff regions split by a wavy horizon,
    then 2-5 textured objects whose class fixes shape/colour/texture.
    Object outlines are labelled 0 (ignore), like ADE20K's boundaries."""
    img = np.zeros((h, w, 3), np.float32)
    lab = np.zeros((h, w), np.uint8)
    top = int(rng.choice([1, 3]))
    bottom = int(rng.choice([4, 10]))
    xs = np.arange(w)
    horizon = (h * rng.uniform(0.35, 0.6)
               + h * 0.05 * np.sin(xs / w * 2 * np.pi * rng.uniform(0.5, 2)
                                   + rng.uniform(0, 6.3))).astype(np.int32)
    below = np.arange(h)[:, None] >= horizon[None, :]
    for cid, m in ((top, ~below), (bottom, below)):
        img[m] = _class_image(ADE_STUFF[cid], h, w, rng)[m]
        lab[m] = cid
    lab[np.clip(horizon, 0, h - 1), xs] = 0
    things = sorted(ADE_THINGS)
    for _ in range(rng.integers(2, 6)):
        cid = things[rng.integers(len(things))]
        spec = ADE_THINGS[cid]
        r = rng.uniform(0.08, 0.2) * min(h, w)
        poly = _shape_polygon(spec[1], rng.uniform(r, w - r), rng.uniform(r, h - r),
                              r, rng.uniform(-0.3, 0.3))
        m = np.zeros((h, w), np.uint8)
        cv2.fillPoly(m, [poly], 1)
        m = m.astype(bool)
        img[m] = _class_image(spec, h, w, rng)[m]
        lab[m] = cid
        cv2.polylines(lab, [poly], True, 0, 1)
    return _finish(img, rng), lab


def make_ade20k(root, num_train=40, num_val=12, size=(160, 160), seed=0):
    """Write a toy ADE20K (mmseg layout, labels 1..150 with 0 = ignore; use
    ``reduce_zero_label=True``).  Idempotent; returns a summary dict."""
    h, w = _hw(size)
    params = dict(kind='ade20k', version=VERSION, num_train=num_train,
                  num_val=num_val, size=[h, w], seed=seed)
    splits = [('training', 'train', num_train), ('validation', 'val', num_val)]
    dirs = [f'{t}/{s}' for t in ('images', 'annotations') for s, _, _ in splits]
    files = [(f'images/{s}/ADE_{p}_{i + 1:08d}.jpg',
              f'annotations/{s}/ADE_{p}_{i + 1:08d}.png', si, i)
             for si, (s, p, n) in enumerate(splits) for i in range(n)]
    cached = _prepare(root, params, dirs, [f for fs in files for f in fs[:2]])
    if not cached:
        for img_path, ann_path, si, i in files:
            img, lab = _ade_scene(h, w, np.random.default_rng([seed, si, i]))
            cv2.imwrite(osp.join(root, img_path), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(osp.join(root, ann_path), lab)
        _write_marker(root, params)
    return dict(root=root, cached=cached, classes=ADE_CLASSES,
                num_images=len(files), **params)


# --- COCO --------------------------------------------------------------------
def _coco_scene(h, w, rng):
    """Neutral textured background + 2-6 non-overlapping instances, so every
    polygon is exactly the visible mask (no occlusion bookkeeping needed)."""
    grey = rng.uniform(90, 170)
    n = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 6)
    img = np.repeat((grey + 15 * n / (n.std() + 1e-6))[..., None], 3, 2)
    cats = sorted(COCO_DRAWN)
    boxes, objs = [], []
    for _ in range(rng.integers(2, 7)):
        cid = cats[rng.integers(len(cats))]
        spec = COCO_DRAWN[cid]
        for _ in range(30):  # rejection-sample a free spot
            r = rng.uniform(0.07, 0.18) * min(h, w)
            poly = _shape_polygon(spec[1], rng.uniform(0, w), rng.uniform(0, h),
                                  r, rng.uniform(-0.4, 0.4))
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            if x0 < 1 or y0 < 1 or x1 > w - 2 or y1 > h - 2:
                continue
            if all(x0 > b[2] + 3 or x1 < b[0] - 3 or y0 > b[3] + 3 or y1 < b[1] - 3
                   for b in boxes):
                break
        else:
            continue
        boxes.append((x0, y0, x1, y1))
        m = np.zeros((h, w), np.uint8)
        cv2.fillPoly(m, [poly], 1)
        m = m.astype(bool)
        img[m] = _class_image(spec, h, w, rng)[m]
        objs.append(dict(category_id=cid, poly=poly, area=int(m.sum()),
                         bbox=[int(x0), int(y0), int(x1 - x0 + 1), int(y1 - y0 + 1)]))
    return _finish(img, rng), objs


def make_coco(root, num_train=40, num_val=12, size=(192, 192), seed=0):
    """Write a toy COCO-2017 instance dataset (real 80 category ids, 6 drawn).
    Idempotent; returns a summary dict."""
    h, w = _hw(size)
    params = dict(kind='coco', version=VERSION, num_train=num_train,
                  num_val=num_val, size=[h, w], seed=seed)
    splits = [('train2017', num_train), ('val2017', num_val)]
    expected = [f'annotations/instances_{s}.json' for s, _ in splits] + [
        f'{s}/{i + 1:012d}.jpg' for s, n in splits for i in range(n)]
    cached = _prepare(root, params, [s for s, _ in splits] + ['annotations'], expected)
    num_ann = {}
    for si, (split, n) in enumerate(splits):
        ann_file = osp.join(root, f'annotations/instances_{split}.json')
        if cached:
            with open(ann_file) as f:
                num_ann[split] = len(json.load(f)['annotations'])
            continue
        images, anns = [], []
        for i in range(n):
            img, objs = _coco_scene(h, w, np.random.default_rng([seed, si, i]))
            name = f'{i + 1:012d}.jpg'
            cv2.imwrite(osp.join(root, split, name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
            images.append(dict(id=i + 1, file_name=name, height=h, width=w))
            for o in objs:
                anns.append(dict(
                    id=len(anns) + 1, image_id=i + 1, category_id=o['category_id'],
                    segmentation=[o['poly'].reshape(-1).astype(float).tolist()],
                    area=o['area'], bbox=o['bbox'], iscrowd=0))
        data = dict(info=dict(description='fla_mm toy COCO', version=str(VERSION)),
                    licenses=[], images=images, annotations=anns,
                    categories=[dict(id=i, name=nm, supercategory='toy')
                                for i, nm in COCO_CATEGORIES])
        with open(ann_file, 'w') as f:
            json.dump(data, f)
        num_ann[split] = len(anns)
    if not cached:
        _write_marker(root, params)
    return dict(root=root, cached=cached, num_annotations=num_ann,
                classes={k: v[0] for k, v in COCO_DRAWN.items()}, **params)
