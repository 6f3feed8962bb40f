# 12 epochs, AdamW (Swin's Mask R-CNN recipe), step decay at epochs 8 and 11.
_base_ = ['mmdet::_base_/schedules/schedule_1x.py']
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='SummarizingOptimWrapperConstructor',   # one log line for paramwise_cfg
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys=dict(norm=dict(decay_mult=0.0), pos_embed=dict(decay_mult=0.0))))
