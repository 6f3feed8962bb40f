# Runtime shared by segmentation and detection configs; each dataset base sets default_scope
# and the visualizer, each family config (upernet_gla_ade20k.py, mask_rcnn_gla_coco.py) the
# visualization hook of its task. input_size_check: a training crop / pad divisor the fla_mm
# backbone does not divide stops before the first iteration, under any train.py.
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=16000, max_keep_ckpts=3,
                    save_last=True),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    input_size_check=dict(type='InputSizeCheckHook'))
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'))
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
custom_imports = dict(imports=['fla_mm'], allow_failed_imports=False)
# DDP (tools/dist_train.sh): gradients are views into DDP's communication buckets, which saves
# a copy of every gradient into and out of the buckets each step (docs/benchmarks.md, training runs)
model_wrapper_cfg = dict(type='MMDistributedDataParallel', broadcast_buffers=False,
                         find_unused_parameters=False, gradient_as_bucket_view=True)
