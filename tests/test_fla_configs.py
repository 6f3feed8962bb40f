"""Shipped FLA kernel configs: tools/fla_configs.py turns Triton's cached autotune results into
files that FLA's own loader (fla.ops.utils.cache) finds, and fla_mm points FLA at them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_tool

from fla_mm.ops import fla_configs

cache = pytest.importorskip('fla.ops.utils.cache', reason='needs fla (and triton) importable')

KERNEL = 'chunk_gla_fwd_kernel_o'
KEY = (64, 6, False, 16, 32) + ('torch.float32',) * 6
OTHER_KEY = (64, 12, False, 16, 32) + ('torch.float32',) * 6


def _config(bk, warps):
    return dict(kwargs=dict(BK=bk, BV=64), num_warps=warps, num_ctas=1, num_stages=2,
                maxnreg=None, pre_hook=None, ir_override=None)


def _triton_result(folder, key, timings):
    """A <kernel>.autotune.json as Triton's autotuner writes it (cache_results=True)."""
    folder.mkdir(parents=True)
    (folder / f'{KERNEL}.autotune.json').write_text(json.dumps(dict(
        key=list(key), configs_timings=[[_config(32 * (i + 1), 2 + i), t]
                                        for i, t in enumerate(timings)])))


def test_collected_configs_are_what_fla_loads(tmp_path, monkeypatch):
    _triton_result(tmp_path / 'triton' / 'HASH1', KEY, [[0.9, 0.8, 1.0], [0.5, 0.4, 0.6]])
    _triton_result(tmp_path / 'triton' / 'HASH2', OTHER_KEY, [[0.3, 0.2, 0.4], [0.7, 0.6, 0.8]])
    run_tool('fla_configs', str(tmp_path / 'triton'), '--gpu-name', 'NVIDIA H200',
             '--out', str(tmp_path / 'cfg'))
    folder = tmp_path / 'cfg' / 'NVIDIA_H200'
    assert sorted(p.name for p in folder.iterdir()) == [f'{KERNEL}.json']
    assert cache.KernelConfigFile.from_file(folder / f'{KERNEL}.json') is not None

    monkeypatch.setattr(cache, 'FLA_CACHE_MODE', cache.FlaCacheMode.STRICT)
    monkeypatch.setenv('FLA_CONFIG_DIR', str(folder))
    cache.load_config_file.cache_clear()
    got = cache.load_cached_config(KERNEL, cache.AutotuneKey(KEY))
    assert got['kwargs'] == {'BK': 64, 'BV': 64} and got['num_warps'] == 3     # the faster one
    assert cache.load_cached_config(KERNEL, cache.AutotuneKey(OTHER_KEY))['kwargs']['BK'] == 32
    unseen = (64, 24, False, 16, 32) + ('torch.float32',) * 6
    assert cache.load_cached_config(KERNEL, cache.AutotuneKey(unseen)) is None    # autotunes
    cache.load_config_file.cache_clear()


def test_collect_merges_into_existing_files(tmp_path):
    _triton_result(tmp_path / 'a' / 'H', KEY, [[1.0, 1.0, 1.0]])
    _triton_result(tmp_path / 'b' / 'H', OTHER_KEY, [[1.0, 1.0, 1.0]])
    fla_configs.collect([tmp_path / 'a' / 'H' / f'{KERNEL}.autotune.json'], 'GPU X', tmp_path)
    counts = fla_configs.collect([tmp_path / 'b' / 'H' / f'{KERNEL}.autotune.json'], 'GPU X',
                                 tmp_path)
    assert counts == {KERNEL: 2}


def test_tool_refuses_a_folder_without_results(tmp_path):
    with pytest.raises(SystemExit):
        run_tool('fla_configs', str(tmp_path), '--gpu-name', 'NVIDIA H200')


def test_shipped_configs_parse_and_name_fla_kernels():
    """Every shipped file is one FLA parses; its hashes are FLA's; its kernel exists in FLA."""
    fla_root = Path(cache.__file__).resolve().parents[2]
    sources = '\n'.join(p.read_text(errors='ignore') for p in fla_root.rglob('*.py'))
    files = sorted(fla_configs.CONFIG_ROOT.glob('*/*.json'))
    assert files
    for path in files:
        assert cache.KernelConfigFile.from_file(path) is not None, path
        data = json.loads(path.read_text())
        assert f'def {path.stem}(' in sources, path
        for h, entry in data['autotune_entries'].items():
            assert h == cache.AutotuneKey.key_hash(tuple(entry['autotune_key'])), path


@pytest.fixture
def fresh_env(monkeypatch):
    """No FLA cache settings and fla not yet imported (both restored after the test)."""
    for name in ('FLA_CONFIG_DIR', 'FLA_CACHE_MODE', 'FLA_MM_FLA_CONFIGS'):
        monkeypatch.setenv(name, 'x')      # recorded, so the test's own setting is undone
        monkeypatch.delenv(name)
    monkeypatch.delitem(sys.modules, 'fla', raising=False)
    return monkeypatch


def test_use_shipped_configs_points_fla_at_this_gpu(tmp_path, fresh_env):
    (tmp_path / 'NVIDIA_H200').mkdir()
    assert fla_configs.use_shipped_configs('NVIDIA RTX 4090', tmp_path) is None
    assert 'FLA_CACHE_MODE' not in os.environ
    assert fla_configs.use_shipped_configs('NVIDIA H200', tmp_path) == tmp_path / 'NVIDIA_H200'
    assert os.environ['FLA_CONFIG_DIR'] == str(tmp_path / 'NVIDIA_H200')
    assert os.environ['FLA_CACHE_MODE'] == 'strict'


@pytest.mark.parametrize('env', [('FLA_CACHE_MODE', 'disabled'), ('FLA_CONFIG_DIR', '/mine'),
                                 ('FLA_MM_FLA_CONFIGS', '0')])
def test_use_shipped_configs_leaves_user_choices(tmp_path, fresh_env, env):
    (tmp_path / 'NVIDIA_H200').mkdir()
    fresh_env.setenv(*env)
    assert fla_configs.use_shipped_configs('NVIDIA H200', tmp_path) is None
    assert os.environ.get('FLA_CONFIG_DIR') == (env[1] if env[0] == 'FLA_CONFIG_DIR' else None)


def test_plugin_makes_plain_autotuned_fla_kernels_read_configs():
    """tests/fla_cached_autotune.py: FLA's dplr kernels (rwkv7), plain @triton.autotune in FLA
    0.6.0, become FLA's CachedAutotuner, which reads $FLA_CONFIG_DIR."""
    code = ('import fla_cached_autotune, fla.ops\n'
            'from fla.ops.generalized_delta_rule.dplr import chunk_o_fwd as m\n'
            'print(type(m.chunk_dplr_fwd_kernel_o.fn).__name__)')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent)]
                                                       + sys.path), FLA_CACHE_MODE='fuzzy')
    res = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == 'CachedAutotuner'
