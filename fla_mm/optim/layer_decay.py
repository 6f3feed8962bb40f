"""Layer-wise learning-rate decay for fla_mm backbones (BEiT / ConvNeXt fine-tuning recipe).

Layer ids come from the backbone itself (``backbone.layer_id(name)``, ``num_layers``):
0 = stem (patch / position embedding), 1..N = blocks in order (a pyramid's downsampling goes
with the first block of its stage), N + 1 = everything after (output norms, feature pyramid,
neck, heads). A parameter of layer id ``i`` gets ``lr * rate ** (N + 1 - i)``.
"""
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor

NO_DECAY_NAMES = ('pos_embed', 'cls_token', 'mask_token', 'absolute_pos_embed',
                  'relative_position_bias_table')


class FLALayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Optimizer wrapper constructor with layer-wise lr decay and no decay on norms / biases.

    ``paramwise_cfg``:
        layer_decay_rate (float in (0, 1], required): lr ratio between adjacent layers.
        no_decay_names (tuple of str): parameters whose name contains one of these get no
            weight decay, in addition to every 1-D parameter (norm weights, biases, layer
            scales) and every ``*.bias``. Default: pos_embed, cls_token, mask_token, ...

    The model is either a fla_mm backbone or a model whose ``backbone`` attribute is one
    (EncoderDecoder, MaskRCNN, ...); parameters outside the backbone get the top layer id.
    Parameters with ``requires_grad=False`` (frozen stages) are left out of the optimizer.

    Example::

        optim_wrapper = dict(
            type='OptimWrapper',
            optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
            constructor='FLALayerDecayOptimizerConstructor',
            paramwise_cfg=dict(layer_decay_rate=0.9))
    """

    def _validate_cfg(self):
        super()._validate_cfg()
        rate = self.paramwise_cfg.get('layer_decay_rate')
        if not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise ValueError(f'paramwise_cfg.layer_decay_rate must be a number in (0, 1], '
                             f'got {rate!r}')
        unknown = set(self.paramwise_cfg) - {'layer_decay_rate', 'no_decay_names'}
        if unknown:
            raise ValueError(f'paramwise_cfg has unknown keys {sorted(unknown)}; valid keys: '
                             f'layer_decay_rate, no_decay_names')
        if self.base_lr is None:
            raise ValueError('optimizer config needs an lr for layer-wise decay')

    def add_params(self, params, module, **kwargs):
        backbone = getattr(module, 'backbone', module)
        if not (hasattr(backbone, 'layer_id') and hasattr(backbone, 'num_layers')):
            raise TypeError(f'{type(self).__name__} needs a fla_mm backbone (with layer_id and '
                            f'num_layers); got {type(backbone).__name__}')
        prefix = '' if backbone is module else 'backbone.'
        rate = float(self.paramwise_cfg['layer_decay_rate'])
        no_decay_names = tuple(self.paramwise_cfg.get('no_decay_names', NO_DECAY_NAMES))
        top = backbone.num_layers + 1
        base_wd = self.base_wd or 0.0
        groups = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            if prefix and not name.startswith(prefix):
                layer = top
            else:
                layer = backbone.layer_id(name[len(prefix):])
            no_decay = (param.ndim <= 1 or name.endswith('.bias')
                        or any(key in name for key in no_decay_names))
            key = f'layer_{layer}_{"no_decay" if no_decay else "decay"}'
            if key not in groups:
                scale = rate ** (top - layer)
                groups[key] = dict(params=[], param_names=[], group_name=key, layer_id=layer,
                                   lr_scale=scale, lr=self.base_lr * scale,
                                   weight_decay=0.0 if no_decay else base_wd)
            groups[key]['params'].append(param)
            groups[key]['param_names'].append(name)
        ordered = sorted(groups.values(), key=lambda g: (g['layer_id'], g['group_name']))
        print_log(f'{type(self).__name__}: {len(ordered)} groups over layer ids 0..{top}, '
                  f'decay rate {rate}', logger='current')
        params.extend(ordered)
