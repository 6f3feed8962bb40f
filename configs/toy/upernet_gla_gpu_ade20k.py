# The real UperNet-GLA-T config (widths, depths, bi-scan, SyncBN, AdamW, poly schedule) on
# generated ADE20K-layout data at a GPU-sized crop, for the GPU runs docs/benchmarks.md
# reports (mixed precision, multi-GPU throughput). Data:
#   python tools/make_toy_data.py ade20k data/gen_ade20k --num-train 400 --num-val 40 --size 320 320
# The backbone trains on the fast path: each training step's forward and backward replay a
# CUDA graph of the torch.compile'd forward (cuda_graph=True with compile=True); evaluation and
# CPU runs stay eager. It trains as eager does (tests/test_gpu_fast_path.py); eager again:
#   --cfg-options model.backbone.cuda_graph=False model.backbone.compile=False
_base_ = ['../upernet_gla_ade20k.py']
data_root = 'data/gen_ade20k'
crop_size = (256, 256)
model = dict(data_preprocessor=dict(size=crop_size),
             backbone=dict(cuda_graph=True, compile=True))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='NameFileOnError',
         transform=dict(type='LoadAnnotations', reduce_zero_label=True)),
    dict(type='RandomResize', scale=(640, 320), ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(640, 320), keep_ratio=True),
    dict(type='NameFileOnError',
         transform=dict(type='LoadAnnotations', reduce_zero_label=True)),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8, num_workers=4,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=100),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=100, end=1000, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=1000, val_interval=1000)
default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=500, max_keep_ckpts=1))
custom_hooks = [dict(type='FiniteCheckHook')]
randomness = dict(seed=0)
