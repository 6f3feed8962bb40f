# Mask R-CNN + hgrn pyramid backbone (tiny) on COCO: configs/mask_rcnn_gla_coco.py with another mixer.
_base_ = ['./mask_rcnn_gla_coco.py']
model = dict(backbone=dict(mixer='hgrn'))
