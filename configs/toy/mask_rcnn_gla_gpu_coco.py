# The real Mask R-CNN-GLA-T config (widths, depths, bi-scan, FPN, the standard COCO pipeline at
# 1333x800, AdamW) on generated COCO-layout data, shortened to 4 epochs, for the GPU runs
# docs/benchmarks.md reports (detection learns; multi-GPU throughput). Data:
#   python tools/make_toy_data.py coco data/gen_coco --num-train 400 --num-val 50 --size 512 384
_base_ = ['../mask_rcnn_gla_coco.py']
data_root = 'data/gen_coco/'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=4, val_interval=4)
optim_wrapper = dict(optimizer=dict(lr=2e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', begin=0, end=4, by_epoch=True, milestones=[3], gamma=0.1),
]
default_hooks = dict(logger=dict(interval=25))
custom_hooks = [dict(type='FiniteCheckHook')]
randomness = dict(seed=0)
