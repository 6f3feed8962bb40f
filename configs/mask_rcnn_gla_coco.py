# Mask R-CNN + FPN with the GLA pyramid backbone (tiny, bidirectional scan) on COCO, 1x schedule.
_base_ = [
    '_base_/models/mask_rcnn_fla_fpn.py', '_base_/datasets/coco_instance.py',
    '_base_/schedules/schedule_1x.py', '_base_/default_runtime.py'
]
model = dict(backbone=dict(arch='tiny', mixer='gla', scan='bi'),
             neck=dict(in_channels=[96, 192, 384, 768]))
# visualization: mmdet's test.py --show-dir (and fla_mm's) turn drawing on; off otherwise
default_hooks = dict(checkpoint=dict(by_epoch=True, interval=1, save_last=True),
                     logger=dict(log_metric_by_epoch=True),
                     visualization=dict(type='DetVisualizationHook', draw=False))
log_processor = dict(by_epoch=True)
