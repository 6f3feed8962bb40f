"""pytest plugin: FLA's config-reading autotuner for every FLA kernel.

FLA 0.6.0 reads ``$FLA_CONFIG_DIR`` (fla_mm ships H200 picks, ``fla_mm/fla_configs``) only in
kernels decorated with its own ``fla_cache_autotune``; the dplr kernels behind rwkv7 use
Triton's plain ``triton.autotune`` and sweep up to 45 configs each, which with
``TRITON_F32_DEFAULT=ieee`` did not finish compiling in 540 s. This plugin installs
``fla_cache_autotune`` as ``triton.autotune`` before fla is imported (loading FLA's cache
module from its file, since importing it through the package would import fla's kernels
first). Block configs change speed, not results. Used for the rwkv7 row of docs/mixers.md's support
matrix::

    PYTHONPATH=tests FLA_CACHE_MODE=fuzzy FLA_CONFIG_DIR=fla_mm/fla_configs/NVIDIA_H200 \\
    TRITON_F32_DEFAULT=ieee python -m pytest -p fla_cached_autotune tests/test_gpu_ops.py \\
        -k "kernel_vs_reference and rwkv7-fp32" -n 4 --dist load
"""
import importlib.util
import pathlib
import sys

import triton

_spec = importlib.util.find_spec('fla')
if _spec is not None and 'fla' not in sys.modules:
    for _loc in _spec.submodule_search_locations:
        _path = pathlib.Path(_loc) / 'ops' / 'utils' / 'cache.py'
        if _path.exists():
            _mod_spec = importlib.util.spec_from_file_location('_fla_cache_for_plugin', _path)
            _mod = importlib.util.module_from_spec(_mod_spec)
            _mod_spec.loader.exec_module(_mod)
            triton.autotune = _mod.fla_cache_autotune
            break
