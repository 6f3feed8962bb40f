"""Cases of the ``model`` level: a whole segmentor or detector built from its config, on
random images and labels, against the same model with backbone.mixer='transformer'."""
import argparse
import copy
import importlib
import os.path as osp

import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.registry import MODELS, init_default_scope
from mmengine.structures import InstanceData, PixelData

from .models import bi_config_for, with_bi_config
from .timing import BASELINE_FAMILY, Case, grad_leaves, make_step, ordered


def _import_scope(scope):
    try:
        importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    except ImportError as exc:
        raise SystemExit(f'model level: the config needs {scope!r}, which does not import here '
                         f'({exc})')
    init_default_scope(scope)


def _seg_samples(B, res, cfg):
    # lazy: a config needs only the package of its own scope, mmseg or mmdet
    from mmseg.structures import SegDataSample
    num_classes = cfg.model.get('decode_head', {}).get('num_classes', 150)
    samples = []
    for _ in range(B):
        s = SegDataSample(metainfo=dict(img_shape=(res, res), ori_shape=(res, res),
                                        pad_shape=(res, res), batch_input_shape=(res, res),
                                        scale_factor=(1.0, 1.0), flip=False))
        s.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, res, res)))
        samples.append(s)
    return samples


def _det_samples(B, res, cfg):
    from mmdet.structures import DetDataSample    # lazy, as in _seg_samples
    from mmdet.structures.mask import BitmapMasks
    head = cfg.model.get('roi_head', {}).get('bbox_head', {})
    num_classes = head.get('num_classes', 80) if isinstance(head, dict) else 80
    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(B):
        s = DetDataSample(metainfo=dict(img_shape=(res, res), ori_shape=(res, res),
                                        pad_shape=(res, res), batch_input_shape=(res, res),
                                        scale_factor=(1.0, 1.0), flip=False))
        n = 4
        xy = torch.rand(n, 2, generator=g) * res * 0.6
        wh = torch.rand(n, 2, generator=g) * res * 0.3 + 8
        boxes = torch.cat([xy, (xy + wh).clamp(max=res - 1)], 1)
        masks = np.zeros((n, res, res), dtype=np.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        inst = InstanceData(bboxes=boxes, labels=torch.randint(0, num_classes, (n,), generator=g))
        inst.masks = BitmapMasks(masks, res, res)
        s.gt_instances = inst
        samples.append(s)
    return samples


def model_setup(cfg, res, B, mode, device, dtype):
    def setup():
        scope = cfg.get('default_scope')
        model = MODELS.build(cfg.model).to(device)
        model.init_weights()
        samples = (_seg_samples if scope == 'mmseg' else _det_samples)(B, res, cfg)
        samples = [s.to(device) for s in samples]
        x = torch.randn(B, 3, res, res, device=device)
        if mode == 'fwd':
            forward = lambda: model(x, samples, mode='tensor')  # noqa: E731
        else:
            def forward():
                loss, _ = model.parse_losses(model(x, samples, mode='loss'))
                return loss
        return make_step(forward, grad_leaves(model) if mode == 'fwdbwd' else [], mode, device,
                         dtype, train_module=model)
    return setup


def model_cases(args):
    """The model of ``args.config`` (and its baseline) at each resolution, dtype and mode."""
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        ns = argparse.Namespace()
        DictAction(option_strings=[], dest='o')(None, ns, args.cfg_options)
        cfg.merge_from_dict(ns.o)
    scope = cfg.get('default_scope')
    if scope not in ('mmseg', 'mmdet'):
        raise SystemExit(f'model level: default_scope {scope!r} is not supported (mmseg, mmdet)')
    _import_scope(scope)
    cfg.model.pop('pretrained', None)
    backbone = cfg.model.get('backbone', {})
    backbone.pop('init_cfg', None)
    variants = [(backbone.get('mixer', '-'), cfg, False)]
    if not args.no_baseline and 'mixer' in backbone and backbone['mixer'] != BASELINE_FAMILY:
        base = copy.deepcopy(cfg)
        base.model.backbone.mixer = BASELINE_FAMILY
        variants.insert(0, (BASELINE_FAMILY, base, True))
    elif backbone.get('mixer') == BASELINE_FAMILY:
        variants = [(BASELINE_FAMILY, cfg, True)]
    config = bi_config_for(backbone.get('mixer', '-'), args.fused_bi)
    if config is not None:         # after the baseline's copy: only the fla_mm model gets it
        backbone['mixer_cfg'] = with_bi_config(backbone.get('mixer_cfg'), config)
    name = osp.splitext(osp.basename(args.config))[0]
    cases = []
    for dtype in args.dtype:
        for mode in args.mode:
            for B in ordered(args, args.batch_size):
                for res in ordered(args, args.resolutions):
                    group = ('model', res, B, dtype, mode)
                    for family, c, is_base in variants:
                        mixer = family if isinstance(family, str) else '+'.join(family)
                        cases.append(Case(dict(level='model', name=name, family=mixer,
                                               scan='-' if is_base else
                                               str(c.model.backbone.get('scan', '-')),
                                               size=res, batch=B, dtype=dtype, mode=mode),
                                          model_setup(c, res, B, mode, args.device, dtype),
                                          group, baseline=is_base, images=B))
    return cases
