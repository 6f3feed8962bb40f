"""What tools/train.py and tools/test.py share: arguments, config loading, the runner.

Checkpoints are loaded with torch's weights-only loading: ``import fla_mm`` (the configs'
``custom_imports``) allowlists what MMEngine checkpoints hold."""
import os
import os.path as osp

from mmengine.config import Config, DictAction


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
    cfg.model_wrapper_cfg = dict(cfg.model_wrapper_cfg, device_ids=None)
    print('fla_mm: no CUDA device, distributed backend nccl -> gloo', flush=True)
    dist.init_process_group('gloo')


def _ddp_wrapper(cfg):
    """The config's DDP wrapper (the base runtime sets one). MMEngine reads the legacy
    top-level ``find_unused_parameters`` only when there is no ``model_wrapper_cfg``: keep it
    meaning what users expect."""
    wrapper = dict(cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False))
    if 'find_unused_parameters' in cfg:
        wrapper['find_unused_parameters'] = cfg.find_unused_parameters
    return wrapper


def build_runner(cfg):
    """mmseg or mmdet Runner, chosen by the config's default_scope (one code path for both)."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    cfg.model_wrapper_cfg = _ddp_wrapper(cfg)     # MMEngine's own default when none is set
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


def close_distributed():
    """End a torchrun job cleanly: wait for every rank, then destroy the process group.
    Left to interpreter exit, gloo's threads can outlive it and abort the process
    ("terminate called without an active exception", SIGABRT) after training has finished,
    which torchrun reports as a failed job."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
