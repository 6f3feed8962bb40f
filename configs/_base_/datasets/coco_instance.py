# COCO 2017 instances: train2017/, val2017/, annotations/instances_{train,val}2017.json.
_base_ = ['mmdet::_base_/datasets/coco_instance.py']
default_scope = 'mmdet'
vis_backends = [dict(type='LocalVisBackend')]
# no fixed name: MMEngine keeps one visualizer per name and process, and a second Runner in the
# same process (train then test in a notebook) would reuse the first one's save_dir; unnamed,
# each Runner's gets its experiment name
visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends)
