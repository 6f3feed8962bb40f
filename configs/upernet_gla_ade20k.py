# UperNet + GLA pyramid backbone (ViG-H-T scale, bidirectional scan) on ADE20K, 512x512, 160k.
_base_ = [
    '_base_/models/upernet_fla.py', '_base_/datasets/ade20k.py',
    '_base_/default_runtime.py', '_base_/schedules/schedule_160k.py'
]
model = dict(
    backbone=dict(type='FLAPyramid', arch='tiny', mixer='gla', scan='bi', drop_path_rate=0.2),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))
train_dataloader = dict(batch_size=2)  # x 8 GPUs = 16 images per iteration
# mmseg's test.py --show-dir (and fla_mm's) turn drawing on; off otherwise, as in mmseg
default_hooks = dict(visualization=dict(type='SegVisualizationHook', draw=False))
