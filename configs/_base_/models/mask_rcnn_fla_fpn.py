# Mask R-CNN + FPN (mmdet's standard model) on an fla_mm pyramid backbone.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='FLAPyramid',
        arch='tiny',
        mixer='gla',
        scan='bi',
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3),
        init_cfg=None),
    neck=dict(in_channels=[96, 192, 384, 768]))
