"""Every config in configs/ parses and builds its model (forward on CPU for the toy ones)."""
import glob
import os

import pytest
import torch

from conftest import ROOT, load_tool, run_tool

CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                 if '_base_' not in p)


@pytest.mark.parametrize('path', CONFIGS, ids=[os.path.relpath(p, ROOT) for p in CONFIGS])
def test_config_builds_model(path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(path)
    scope = cfg.get('default_scope')
    pytest.importorskip(scope)
    init_default_scope(scope)
    import importlib
    importlib.import_module(f'{scope}.models')
    registry = importlib.import_module(f'{scope}.registry').MODELS
    assert cfg.custom_imports['imports'] == ['fla_mm']
    import fla_mm  # noqa: F401
    fla_mm.hooks.check_input_size(cfg)   # shipped crops / pad divisors fit
    model = registry.build(cfg.model)
    backbone = model.backbone
    assert type(backbone).__module__.startswith('fla_mm.')
    from mmengine.optim import build_optim_wrapper
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    _check_param_groups(model, cfg.optim_wrapper, optim_wrapper.optimizer)
    if '/toy/' in path:
        model.eval()
        with torch.no_grad():
            feats = backbone(torch.randn(1, 3, 64, 96))
        assert [f.shape[-2:] for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def _check_param_groups(model, wrapper_cfg, optimizer):
    """Every trainable parameter is in exactly one group; under layer-wise decay a plain
    backbone's block i gets lr * rate ** (N - i), its patch / position embedding lr * rate **
    (N + 1), everything outside the backbone lr, and 1-D parameters, biases and position
    embeddings no weight decay (the rule of FLALayerDecayOptimizerConstructor's docstring)."""
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    seen = [id(p) for g in optimizer.param_groups for p in g['params']]
    assert sorted(seen) == sorted(names), 'parameters missing from or repeated in the optimizer'
    if wrapper_cfg.get('constructor') != 'FLALayerDecayOptimizerConstructor':
        return
    lr, wd = wrapper_cfg.optimizer['lr'], wrapper_cfg.optimizer['weight_decay']
    rate = wrapper_cfg.paramwise_cfg['layer_decay_rate']
    depth = len(model.backbone.blocks)
    checked = set()
    for group in optimizer.param_groups:
        for p in group['params']:
            name = names[id(p)]
            parts = name.split('.')
            if parts[0] != 'backbone':
                want = lr
            elif parts[1] in ('patch_embed', 'pos_embed', 'cls_token'):
                want = lr * rate ** (depth + 1)
            elif parts[1] == 'blocks':
                want = lr * rate ** (depth - int(parts[2]))
                checked.add(int(parts[2]))
            else:                       # output norms, feature pyramid
                want = lr
            assert group['lr'] == pytest.approx(want, rel=1e-9), (name, group['lr'], want)
            no_decay = p.ndim <= 1 or name.endswith('.bias') or 'pos_embed' in name
            assert group['weight_decay'] == (0.0 if no_decay else wd), name
    assert checked == set(range(depth))


SIZES = [(layout, size) for layout in ('pyramid', 'plain') for size in ('tiny', 'small', 'base')]


def _config(task, layout):
    name = dict(seg='upernet_gla{}_ade20k.py', det='mask_rcnn_gla{}_coco.py')[task]
    return os.path.join(ROOT, 'configs', name.format('_plain' if layout == 'plain' else ''))


@pytest.mark.parametrize('layout,size', SIZES, ids=[f'{a}-{b}' for a, b in SIZES])
@pytest.mark.parametrize('task', ['seg', 'det'])
def test_named_size_runs_inside_upernet_and_mask_rcnn(task, layout, size):
    """Each named size, built from the real config with only the size changed, runs forward."""
    import importlib

    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    scope = dict(seg='mmseg', det='mmdet')[task]
    pytest.importorskip(scope)
    init_default_scope(scope)
    importlib.import_module(f'{scope}.models')
    import fla_mm  # noqa: F401
    cfg = Config.fromfile(_config(task, layout))
    cfg.model.backbone.arch = size
    if layout == 'plain':        # the real plain configs use 'small'; follow the width
        width = dict(tiny=192, small=384, base=768)[size]
        chans = [width] * 4
    else:
        chans = [96, 192, 384, 768] if size != 'base' else [128, 256, 512, 1024]
    if task == 'seg':
        cfg.model.decode_head.in_channels = chans
        cfg.model.auxiliary_head.in_channels = chans[2]
        cfg.model.decode_head.norm_cfg = cfg.model.auxiliary_head.norm_cfg = dict(type='BN')
    else:
        cfg.model.neck.in_channels = chans
    model = importlib.import_module(f'{scope}.registry').MODELS.build(cfg.model).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        if task == 'seg':
            out = model(x, mode='tensor')
            assert out.shape == (1, 150, 16, 16)
        else:
            from mmdet.structures import DetDataSample
            sample = DetDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                                                 scale_factor=(1.0, 1.0), batch_input_shape=(64, 64)))
            (pred,) = model(x, [sample], mode='predict')
            assert pred.pred_instances.bboxes.shape[-1] == 4


@pytest.mark.parametrize('config,options,message', [
    ('configs/toy/upernet_gla_toy_ade20k.py',
     ['train_dataloader.dataset.pipeline.3.crop_size=(100,128)'],
     r'RandomCrop crop_size = \(100, 128\) does not fit FLAPyramid: sizes must be multiples '
     r'of 32 \(nearest: 96, 128\)'),
    ('configs/upernet_gla_plain_ade20k.py', ['model.backbone.patch_size=14'],
     r'RandomCrop crop_size = \(512, 512\) does not fit FLAPlain: sizes must be multiples of '
     r'14 \(nearest: 504, 518\)'),
    ('configs/mask_rcnn_gla_coco.py', ['model.data_preprocessor.pad_size_divisor=8'],
     r'pad_size_divisor = 8 does not fit FLAPyramid: .* multiples of 32 \(nearest: 32\)'),
])
def test_crop_that_does_not_fit_the_backbone_is_one_clear_error(config, options, message,
                                                                 tmp_path):
    pytest.importorskip(dict(u='mmseg', m='mmdet')[os.path.basename(config)[0]])
    with pytest.raises(ValueError, match=message):
        run_tool('train', os.path.join(ROOT, config), '--work-dir', str(tmp_path),
                 '--cfg-options', *options)
