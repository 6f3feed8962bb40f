# ADE20K (ADEChallengeData2016): images/{training,validation}, annotations/{training,validation};
# label 0 is "other" and is ignored through reduce_zero_label.
default_scope = 'mmseg'
dataset_type = 'ADE20KDataset'
data_root = 'data/ade/ADEChallengeData2016'
crop_size = (512, 512)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='NameFileOnError',
         transform=dict(type='LoadAnnotations', reduce_zero_label=True)),
    dict(type='RandomResize', scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='NameFileOnError',
         transform=dict(type='LoadAnnotations', reduce_zero_label=True)),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
vis_backends = [dict(type='LocalVisBackend')]
# no fixed name: MMEngine keeps one visualizer per name and process, and a second Runner in the
# same process (train then test in a notebook) would reuse the first one's save_dir; unnamed,
# each Runner's gets its experiment name
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends)
