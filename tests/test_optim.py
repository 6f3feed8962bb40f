"""FLALayerDecayOptimizerConstructor: lr per layer id, no weight decay on norms / biases /
pos_embed, frozen parameters left out, built through MMEngine's registry by name; it and
SummarizingOptimWrapperConstructor (the configs' default) log one line, not one per parameter."""
import logging

import pytest
import torch.nn as nn
from mmengine.optim import build_optim_wrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

import fla_mm  # noqa: F401  (registers)
from fla_mm.backbones import FLAPlain, FLAPyramid
from fla_mm.optim import FLALayerDecayOptimizerConstructor

RATE, LR, WD = 0.5, 1.0, 0.05


class Segmentor(nn.Module):
    """What mmseg / mmdet models look like to the constructor: a backbone and the rest."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.decode_head = nn.Conv2d(backbone.out_channels[-1], 5, 1)


def build(model, rate=RATE, **paramwise):
    cfg = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=LR, weight_decay=WD),
               constructor='FLALayerDecayOptimizerConstructor',
               paramwise_cfg=dict(layer_decay_rate=rate, **paramwise))
    return build_optim_wrapper(model, cfg).optimizer


def by_name(optimizer):
    out = {}
    for group in optimizer.param_groups:
        for name in group['param_names']:
            out[name] = (group['lr'], group['weight_decay'])
    return out


def test_registered_under_its_own_name():
    assert OPTIM_WRAPPER_CONSTRUCTORS.get('FLALayerDecayOptimizerConstructor') \
        is FLALayerDecayOptimizerConstructor


def test_plain_layer_decay_lrs_and_no_decay():
    model = Segmentor(FLAPlain(arch=dict(embed_dims=32, depth=4, num_heads=2),
                               pretrain_img_size=64))
    groups = by_name(build(model))
    top = 5                                                        # depth + 1
    assert groups['backbone.patch_embed.proj.weight'] == (RATE ** top, WD)
    assert groups['backbone.pos_embed'] == (RATE ** top, 0.0)
    assert groups['backbone.blocks.0.attn.q_proj.weight'] == (RATE ** (top - 1), WD)
    assert groups['backbone.blocks.3.channel_mixer.fc1.weight'] == (RATE ** 1, WD)
    assert groups['backbone.blocks.3.channel_mixer.fc1.bias'] == (RATE ** 1, 0.0)
    assert groups['backbone.blocks.2.ln_1.weight'] == (RATE ** 2, 0.0)
    assert groups['backbone.norm3.weight'] == (1.0, 0.0)
    assert groups['backbone.sfp.0.0.weight'] == (1.0, WD)
    assert groups['decode_head.weight'] == (1.0, WD)
    assert groups['decode_head.bias'] == (1.0, 0.0)
    assert len(groups) == len(list(model.parameters()))


def test_pyramid_layer_ids_and_frozen_params_left_out():
    backbone = FLAPyramid(arch=dict(embed_dims=[16, 32, 32, 64], depths=[1, 1, 2, 1],
                                    num_heads=[1, 2, 2, 4]),
                          mixer=['repmixer', 'gla', 'gla', 'gla'], frozen_stages=1)
    model = Segmentor(backbone)
    optimizer = build(model)
    groups = by_name(optimizer)
    top = 6                                                        # 5 blocks + 1
    assert not any(n.startswith(('backbone.patch_embed', 'backbone.stages.0.')) for n in groups)
    assert groups['backbone.stages.1.downsample.reduction.weight'] == (RATE ** (top - 2), WD)
    assert groups['backbone.stages.1.blocks.0.attn.q_proj.weight'] == (RATE ** (top - 2), WD)
    assert groups['backbone.stages.2.blocks.1.attn.o_proj.weight'] == (RATE ** (top - 4), WD)
    assert groups['backbone.stages.3.blocks.0.channel_mixer.fc2.weight'] == (RATE, WD)
    assert groups['backbone.stages.3.blocks.0.ln_2.weight'] == (RATE, 0.0)
    assert groups['backbone.norm3.bias'] == (1.0, 0.0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(len(g['params']) for g in optimizer.param_groups) == len(trainable)
    for g in optimizer.param_groups:
        assert g['lr'] == pytest.approx(LR * RATE ** (top - g['layer_id']))


def test_backbone_alone_and_bad_config():
    backbone = FLAPlain(arch=dict(embed_dims=16, depth=2, num_heads=1), pretrain_img_size=32)
    groups = by_name(build(backbone, rate=0.9))
    assert groups['blocks.1.attn.q_proj.weight'] == (pytest.approx(0.9), WD)
    assert groups['pos_embed'][0] == pytest.approx(0.9 ** 3)
    with pytest.raises(ValueError, match=r'layer_decay_rate must be .*\(0, 1\], got 1.5'):
        build(backbone, rate=1.5)
    with pytest.raises(ValueError, match=r"unknown keys \['decay_mult'\]"):
        build(backbone, decay_mult=0.1)
    with pytest.raises(TypeError, match='needs a fla_mm backbone.*Linear'):
        build(nn.Linear(2, 2))


class _Records(logging.Handler):
    """The messages MMEngine's current logger emits while it is attached."""

    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _logged_while(build):
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    records = _Records()
    logger.addHandler(records)
    try:
        return build(), records.messages
    finally:
        logger.removeHandler(records)


@pytest.mark.parametrize('constructor,paramwise', [
    ('SummarizingOptimWrapperConstructor',
     dict(custom_keys=dict(norm=dict(decay_mult=0.0), pos_embed=dict(decay_mult=0.0)))),
    ('FLALayerDecayOptimizerConstructor', dict(layer_decay_rate=RATE)),
])
def test_constructor_logs_one_summary_line(constructor, paramwise):
    """One log line for the whole paramwise_cfg, not one per parameter and setting; the
    summarizing constructor builds exactly DefaultOptimWrapperConstructor's groups."""
    model = Segmentor(FLAPyramid(arch=dict(embed_dims=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                           num_heads=[1, 1, 1, 1])))

    def cfg(name):
        return dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=LR, weight_decay=WD),
                    constructor=name, paramwise_cfg=paramwise)

    optimizer, messages = _logged_while(
        lambda: build_optim_wrapper(model, cfg(constructor)).optimizer)
    assert not [m for m in messages if m.startswith('paramwise_options')], messages[:3]
    summary = [m for m in messages if 'groups' in m or 'parameter tensors' in m]
    assert len(summary) == 1, messages
    if constructor == 'SummarizingOptimWrapperConstructor':
        n = sum(1 for p in model.parameters())
        assert f'{n} parameter tensors' in summary[0] and 'weight_decay=0.0' in summary[0]
        default, loud = _logged_while(lambda: build_optim_wrapper(
            model, cfg('DefaultOptimWrapperConstructor')).optimizer)
        assert len([m for m in loud if m.startswith('paramwise_options')]) > 20
        settings = [{k: v for k, v in g.items() if k != 'params'} for g in optimizer.param_groups]
        assert settings == [{k: v for k, v in g.items() if k != 'params'}
                            for g in default.param_groups]
        assert [g['params'] for g in optimizer.param_groups] == \
            [g['params'] for g in default.param_groups]
