# The main job on CPU: the real UperNet-GLA ADE20K config with only data_root, sizes, widths
# and iterations shrunk, and the classes cut to the 10 ADE20K classes that the toy data
# draws (fla_mm/toy_data.py ADE_CLASSES, in ADE20K's order; mmseg maps the others to ignore).
# Data: python tools/make_toy_data.py ade20k data/toy_ade20k
_base_ = ['../upernet_gla_ade20k.py']
data_root = 'data/toy_ade20k'
metainfo = dict(classes=('wall', 'sky', 'floor', 'grass', 'person', 'table', 'chair', 'car',
                         'painting', 'lamp'))
num_classes = 10
crop_size = (128, 128)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=[32, 64, 128, 256], depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8]),
        drop_path_rate=0.0),
    decode_head=dict(in_channels=[32, 64, 128, 256], channels=64, norm_cfg=norm_cfg,
                     num_classes=num_classes),
    auxiliary_head=dict(in_channels=128, channels=32, norm_cfg=norm_cfg,
                        num_classes=num_classes))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='NameFileOnError',
         transform=dict(type='LoadAnnotations', reduce_zero_label=True)),
    dict(type='RandomResize', scale=(256, 160), ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 160), keep_ratio=True),
    dict(type='NameFileOnError',
         transform=dict(type='LoadAnnotations', reduce_zero_label=True)),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4, num_workers=2, persistent_workers=True,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=1, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=0.01))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=20, end=300, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=300, val_interval=300)
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=100, max_keep_ckpts=2),
    visualization=dict(interval=4))   # --show-dir: every 4th validation image
randomness = dict(seed=0)
