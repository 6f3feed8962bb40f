"""Kernel configs for FLA's autotuned kernels, measured once and shipped, so that a fresh
machine compiles one config per kernel instead of autotuning all of them.

FLA autotunes each Triton kernel on first use: tens of configs compiled and timed per kernel,
minutes per mixer family on a fresh GPU machine (docs/benchmarks.md, cold start). FLA 0.6.0
can instead read the best config per autotune key from ``$FLA_CONFIG_DIR/<kernel>.json``
when ``$FLA_CACHE_MODE`` asks it to (``fla/ops/utils/cache.py``). fla_mm keeps such files
per GPU model under ``fla_mm/fla_configs/<GPU name>/``, made by ``tools/fla_configs.py``
from the autotune results that Triton leaves in its cache after a run, and points FLA at them
before FLA is imported.
``strict`` mode: a config is used only for the exact key it was measured at (FLA's keys
hold head counts and dims, not sequence lengths); any other key autotunes as before.
"""
import json
import os
import re
import sys
from pathlib import Path

CONFIG_ROOT = Path(__file__).resolve().parent.parent / 'fla_configs'


def gpu_dir_name(gpu_name):
    """FLA's own spelling of a GPU model as a directory name (``sanitize_gpu_name``)."""
    return re.sub(r'[^0-9A-Za-z]+', '_', gpu_name).strip('_') or 'unknown_gpu'


def use_shipped_configs(gpu_name=None, root=CONFIG_ROOT):
    """Point FLA at fla_mm's configs for this GPU; call before ``fla`` is imported.

    Does nothing when the user chose ``FLA_CONFIG_DIR`` or ``FLA_CACHE_MODE`` themselves,
    set ``FLA_MM_FLA_CONFIGS=0``, FLA is imported already, or no configs exist for the GPU.
    Returns the directory used, or None.
    """
    if (os.environ.get('FLA_MM_FLA_CONFIGS', '1') == '0' or 'FLA_CONFIG_DIR' in os.environ
            or 'FLA_CACHE_MODE' in os.environ or 'fla' in sys.modules):
        return None
    if gpu_name is None:
        import torch
        gpu_name = torch.cuda.get_device_name()
    folder = Path(root) / gpu_dir_name(gpu_name)
    if not folder.is_dir():
        return None
    os.environ['FLA_CONFIG_DIR'] = str(folder)
    os.environ['FLA_CACHE_MODE'] = 'strict'
    return folder


def _best_config(configs_timings):
    """The config Triton's autotuner picks: the smallest timings (median first)."""
    timed = [(t if isinstance(t, list) else [t], c) for c, t in configs_timings]
    return min(timed, key=lambda tc: tc[0])[1]


def collect(result_files, gpu_name, root=CONFIG_ROOT):
    """Merge Triton's cached autotune results into ``root/<GPU>/<kernel>.json``.

    ``result_files``: ``<kernel>.autotune.json`` files from a Triton cache directory (written
    when FLA_CACHE_RESULTS=1, FLA's default). Each holds one autotune key and the timings of
    every config tried. Returns {kernel: number of keys in its file}.
    """
    from fla.ops.utils.cache import AutotuneKey     # a tool's import: FLA's own key hash
    folder = Path(root) / gpu_dir_name(gpu_name)
    by_kernel = {}
    for path in map(Path, result_files):
        kernel = path.name[:-len('.autotune.json')]
        data = json.loads(path.read_text())
        if 'key' not in data or not data.get('configs_timings'):
            raise ValueError(f'{path}: not a Triton autotune result (no key / configs_timings)')
        config = dict(_best_config(data['configs_timings']))
        config.pop('pre_hook', None)
        by_kernel.setdefault(kernel, {})[AutotuneKey.key_hash(tuple(data['key']))] = dict(
            autotune_key=data['key'], config=config)
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for kernel, entries in sorted(by_kernel.items()):
        out = folder / f'{kernel}.json'
        old = json.loads(out.read_text()) if out.exists() else {}
        merged = {**old.get('autotune_entries', {}), **entries}
        out.write_text(json.dumps(dict(kernel_name=kernel, gpu=gpu_name,
                                       autotune_entries=dict(sorted(merged.items()))),
                                  indent=1, sort_keys=True) + '\n')
        counts[kernel] = len(merged)
    return counts
