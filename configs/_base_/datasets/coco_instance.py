# COCO 2017 instances: train2017/, val2017/, annotations/instances_{train,val}2017.json.
_base_ = ['mmdet::_base_/datasets/coco_instance.py']
default_scope = 'mmdet'
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
