# Mask R-CNN + plain-layout GLA backbone (patch 16 + simple feature pyramid) on COCO, 1x,
# with layer-wise learning-rate decay.
_base_ = ['./mask_rcnn_gla_coco.py']
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
    neck=dict(in_channels=[384, 384, 384, 384]))
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='FLALayerDecayOptimizerConstructor',
    paramwise_cfg=dict(layer_decay_rate=0.65))
