"""What tools/train.py and tools/test.py share: config loading and checkpoint trust."""
import os
import os.path as osp

# MMEngine checkpoints pickle its HistoryBuffer and numpy objects, which torch >= 2.6 refuses
# under weights_only=True; checkpoints of your own runs are trusted here.
os.environ.setdefault('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')

from mmengine.config import Config, DictAction  # noqa: E402


def add_common_args(parser):
    parser.add_argument('--work-dir', help='where logs and checkpoints go')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config entries, e.g. train_cfg.max_iters=100 model.backbone.scan=uni')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher (pytorch = torchrun)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def load_config(args):
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def _cpu_dist_backend(cfg):
    """NCCL needs GPUs, and MMEngine's torchrun init calls torch.cuda.set_device: a torchrun
    launch on a machine without CUDA joins a gloo process group here first (MMEngine then
    skips its own init) and wraps the model in DDP without device ids, so the same DDP code
    path runs on CPU."""
    import torch
    import torch.distributed as dist
    if cfg.launcher != 'pytorch' or torch.cuda.is_available() or dist.is_initialized():
        return
    cfg.env_cfg.dist_cfg.backend = 'gloo'
    # MMEngine gives DDP device_ids=[LOCAL_RANK], which a CPU module refuses
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
    print('fla_mm: no CUDA device, distributed backend nccl -> gloo', flush=True)
    dist.init_process_group('gloo')


def build_runner(cfg):
    """mmseg or mmdet Runner, chosen by the config's default_scope (one code path for both)."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    _cpu_dist_backend(cfg)
    scope = cfg.get('default_scope')
    if scope == 'mmseg':
        import mmseg.utils
        mmseg.utils.register_all_modules(init_default_scope=False)
    elif scope == 'mmdet':
        import mmdet.utils
        mmdet.utils.register_all_modules(init_default_scope=False)
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
