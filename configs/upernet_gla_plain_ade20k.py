# UperNet + plain-layout GLA backbone (ViG/DeiT-S layout, patch 16, simple feature pyramid
# inside the backbone) on ADE20K 512x512, with layer-wise learning-rate decay.
_base_ = ['./upernet_gla_ade20k.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='FLAPlain',
        arch='small',
        mixer='gla',
        scan='bi',
        pretrain_img_size=224,
        drop_path_rate=0.1,
        out_indices=(-1, ),
        init_cfg=None),
    decode_head=dict(in_channels=[384, 384, 384, 384]),
    auxiliary_head=dict(in_channels=384))
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='FLALayerDecayOptimizerConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.65))
