"""tools/benchmark.py runs each level on tiny CPU sizes and writes complete outputs.

Timings are not checked, only that every case produced a row and the files are whole.
"""
import json
import os

import pytest

from conftest import ROOT, run_tool

TINY = ['--iters', '2', '--warmup', '1', '--batch-size', '1', '--device', 'cpu',
        '--threads', '1']
PYRAMID = {'embed_dims': [16, 32, 64, 128], 'depths': [1, 1, 1, 1], 'num_heads': [1, 2, 4, 8]}
PLAIN = {'embed_dims': 32, 'depth': 2, 'num_heads': 2}
ROW_KEYS = {'level', 'name', 'family', 'scan', 'size', 'batch', 'dtype', 'mode', 'median_ms',
            'p10_ms', 'p90_ms', 'first_call_ms', 'peak_mem_mib', 'iters', 'warmup', 'status'}
METHOD_KEYS = {'device', 'device_kind', 'versions', 'warmup_iters', 'iters', 'timing',
               'statistics', 'first_call', 'memory', 'ratios', 'command'}


def check_outputs(out, result, levels, n_rows):
    with open(os.path.join(out, 'results.json')) as f:
        data = json.load(f)
    assert set(data) == {'method', 'rows'}
    method, rows = data['method'], data['rows']
    assert METHOD_KEYS <= set(method)
    assert method['device_kind'] == 'CPU (reference path)'
    assert {'torch', 'triton', 'fla'} <= set(method['versions'])
    assert len(rows) == n_rows == len(result['rows'])
    for row in rows:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row['status'].startswith('ok'), row
        assert row['median_ms'] > 0 and row['p10_ms'] <= row['median_ms'] <= row['p90_ms']
        assert row['first_call_ms'] > 0 and row['iters'] == 2
    for row in rows:           # every row is compared with a baseline of the same run
        if row['level'] in ('op', 'mixer', 'backbone') or row['family'] != '-':
            assert row['time_ratio'] > 0, row
    with open(os.path.join(out, 'results.md')) as f:
        md = f.read()
    assert 'CPU (reference path)' in md
    table = [line for line in md.splitlines() if line.startswith('| ')]
    assert len(table) == n_rows + 1              # header + one line per row
    assert table[0].startswith('| level | model |')
    for level in levels:
        for metric in ('time', 'memory'):
            png = os.path.join(out, f'{level}_{metric}.png')
            assert os.path.getsize(png) > 1000
            with open(png, 'rb') as f:
                assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    return rows


def test_mixer_level(tmp_path):
    out = str(tmp_path / 'mixer')
    result = run_tool('benchmark', 'mixer', '--families', 'gla', 'retnet', 'transformer',
                      '--scans', 'bi', 'cross', '--tokens', '16', '64', '--heads', '2',
                      '--head-dim', '16', '--out', out, *TINY)
    # per L and mode: op (sdpa; gla and retnet: one direction, bi two-call, bi fused)
    # + mixer (gla x 2 scans, retnet x 2, transformer)
    rows = check_outputs(out, result, ['op', 'mixer'], 2 * 2 * (7 + 5))
    assert {r['name'] for r in rows if r['level'] == 'op'} == {
        'sdpa', 'ops.gla', 'ops.gla two-call', 'ops.gla fused', 'ops.retnet',
        'ops.retnet two-call', 'ops.retnet fused'}
    assert {r['scan'] for r in rows if r['name'].endswith(('two-call', 'fused'))} == {'bi'}
    assert all(r['baseline'] == 'sdpa' for r in rows if r['level'] == 'op')
    gla = [r for r in rows if r['level'] == 'op' and r['family'] == 'gla']
    assert all(r['inputs'].startswith('[1, 16, 2, 16]') or r['inputs'].startswith('[1, 64, 2, 16]')
               for r in gla)


def test_fused_segments_give_one_row_each(tmp_path):
    """--fused-segments: the fused bi-scan op is timed once per segment count, 0 being the
    mixers' choice by length (on CPU the op is the reference, so only the rows are checked)."""
    out = str(tmp_path / 'seg')
    result = run_tool('benchmark', 'mixer', '--families', 'retnet', '--levels', 'op',
                      '--fused-segments', '0', '1', '3', '--tokens', '16', '--heads', '2',
                      '--head-dim', '16', '--mode', 'fwd', '--out', out, *TINY)
    assert [r['name'] for r in result['rows']] == [
        'sdpa', 'ops.retnet', 'ops.retnet two-call', 'ops.retnet fused',
        'ops.retnet fused 1 segment', 'ops.retnet fused 3 segments']
    with pytest.raises(SystemExit):
        run_tool('benchmark', 'mixer', '--fused-segments', '-1', '--out', out, *TINY)


def test_op_rows_choose_which_ops_are_timed(tmp_path):
    """--op-rows fused: only SDPA and the fused bi-scan op (no FLA one-direction or two-call
    rows, whose first calls autotune FLA's kernels on a fresh GPU)."""
    out = str(tmp_path / 'rows')
    result = run_tool('benchmark', 'mixer', '--families', 'retnet', 'gla', '--levels', 'op',
                      '--op-rows', 'fused', '--tokens', '16', '--heads', '2', '--head-dim',
                      '16', '--mode', 'fwd', '--out', out, *TINY)
    assert [r['name'] for r in result['rows']] == ['sdpa', 'ops.retnet fused', 'ops.gla fused']


def test_backbone_level(tmp_path):
    out = str(tmp_path / 'backbone')
    arch = json.dumps({'FLAPyramid': PYRAMID, 'FLAPlain': PLAIN})
    result = run_tool('benchmark', 'backbone', '--backbones', 'FLAPyramid', 'FLAPlain',
                      '--arch', arch, '--families', 'gla', '--resolutions', '64',
                      '--mode', 'fwd', '--baselines', '--out', out, *TINY)
    rows = check_outputs(out, result, ['backbone'], 2 * 2)
    assert all(r['img_per_s'] > 0 for r in rows)
    assert {(r['name'], r['family']) for r in rows} == {
        ('FLAPyramid', 'transformer'), ('FLAPyramid', 'gla'),
        ('FLAPlain', 'transformer'), ('FLAPlain', 'gla')}


def test_bad_choices_name_the_valid_ones():
    with pytest.raises(SystemExit, match='valid families'):
        run_tool('benchmark', 'mixer', '--families', 'nope', '--out', '/tmp/unused', *TINY)
    with pytest.raises(SystemExit, match='fla_mm exports'):
        run_tool('benchmark', 'backbone', '--backbones', 'Nope', '--out', '/tmp/unused', *TINY)


def test_model_level(tmp_path):
    config = os.path.join(ROOT, 'configs', 'toy', 'upernet_gla_toy_ade20k.py')
    if not os.path.exists(config):
        pytest.skip('no toy UperNet config')
    pytest.importorskip('mmseg.models')
    out = str(tmp_path / 'model')
    # B=2: UperNet's pooling branch has BatchNorm on 1x1 maps, which training rejects at B=1
    result = run_tool('benchmark', 'model', config, '--resolutions', '64', '--out', out, *TINY,
                      '--batch-size', '2')
    rows = check_outputs(out, result, ['model'], 2 * 2)      # gla + transformer, fwd + fwdbwd
    assert {r['family'] for r in rows} == {'gla', 'transformer'}


def test_report_merges_runs_and_keeps_ratios_within_a_run(tmp_path):
    """Runs cut short merge into one table: every case once, the later run's row where both
    measured a case, plots from all rows, and no ratio against another run's baseline."""
    common = ['mixer', '--families', 'retnet', 'transformer', '--scans', 'bi', '--levels',
              'mixer', '--heads', '2', '--head-dim', '16', '--mode', 'fwd', *TINY]
    a, b, out = (str(tmp_path / n) for n in ('a', 'b', 'merged'))
    run_tool('benchmark', *common, '--tokens', '16', '--out', a)
    run_tool('benchmark', *common, '--tokens', '16', '64', '--out', b)

    def drop(folder, family, size):        # as if the run had been cut off before that case
        path = os.path.join(folder, 'results.json')
        with open(path) as f:
            data = json.load(f)
        data['rows'] = [r for r in data['rows'] if (r['family'], r['size']) != (family, size)]
        with open(path, 'w') as f:
            json.dump(data, f)

    drop(b, 'retnet', 16)           # retnet@16 only in run 1, its baseline in both runs
    result = run_tool('benchmark', 'report', a, b, '--out', out)
    rows = {(r['family'], r['size']): r for r in result['rows']}
    assert sorted(rows) == [('retnet', 16), ('retnet', 64), ('transformer', 16),
                            ('transformer', 64)]
    assert [rows[k]['run'] for k in sorted(rows)] == [1, 2, 2, 2]   # later run wins
    assert rows[('retnet', 64)]['time_ratio'] > 0
    assert rows[('retnet', 16)].get('time_ratio') is None    # its run's baseline was replaced
    with open(os.path.join(out, 'results.md')) as f:
        md = f.read()
    assert '1. `python tools/benchmark.py mixer' in md and '2. `python tools/benchmark.py' in md
    assert [line for line in md.splitlines() if line.startswith('| ')][0].startswith('| run |')
    for metric in ('time', 'memory'):
        assert os.path.getsize(os.path.join(out, f'mixer_{metric}.png')) > 1000
    drop(b, 'transformer', 16)      # now run 1's baseline is the only one: the ratio is back
    rows = {(r['family'], r['size']): r
            for r in run_tool('benchmark', 'report', a, b, '--out', out)['rows']}
    assert rows[('retnet', 16)]['time_ratio'] > 0 and rows[('transformer', 16)]['run'] == 1


def test_compile_times_every_fused_kernel_for_hopper_without_a_gpu():
    """`benchmark.py compile` lowers each kernel a fused bi-scan launches to an sm_90 cubin
    (Triton's bundled ptxas; no GPU here) and times it, in the sweep and the chunked form."""
    rows = run_tool('benchmark', 'compile', '--kernels', 'scalar')
    assert [(r['segmented'], r['kernel']) for r in rows] == [
        (False, 'forward'), (False, 'backward'), (True, 'forward'), (True, 'backward'),
        (True, 'segment states, forward'), (True, 'segment states, backward')]
    assert all(r['seconds'] > 0 and r['cubin_bytes'] > 10_000 for r in rows)
    assert all(0 < r['registers'] <= 255 and r['spill_store_bytes'] >= 0 for r in rows)
    with pytest.raises(SystemExit, match='unknown key.*NOPE; valid: segments, long_tokens'):
        run_tool('benchmark', 'compile', '--kernels', 'scalar', '--fused-bi', '{"NOPE": 1}')
    eight = run_tool('benchmark', 'compile', '--kernels', 'scalar', '--fused-bi',
                     '{"bwd_warps": 8}')
    # 8 warps hold the backward's state in twice the threads: fewer spills than 4
    assert eight[1]['spill_store_bytes'] < rows[1]['spill_store_bytes']
    chunked = run_tool('benchmark', 'compile', '--kernels', 'gla', '--fused-bi',
                       '{"form": "chunked"}')
    assert [r['kernel'] for r in chunked] == [
        'chunk states, forward', 'chunk state pass', 'forward', 'chunk states, backward',
        'backward']
    assert all(r['form'] == 'chunked' and 0 < r['registers'] <= 255 for r in chunked)


def test_fused_bi_config_reaches_the_op_level(tmp_path):
    """--fused-bi is a FusedBiConfig (checked when the command line is read), stored with the
    method; the op level's fused rows run with it."""
    out = str(tmp_path / 'cfg')
    result = run_tool('benchmark', 'mixer', '--families', 'simple_gla', '--levels', 'op',
                      '--op-rows', 'fused', '--fused-bi', '{"segments": 2, "long_tokens": 64}',
                      '--tokens', '16', '--heads', '2', '--head-dim', '16', '--mode', 'fwd',
                      '--out', out, *TINY)
    assert [r['status'] for r in result['rows']] == ['ok', 'ok']
    assert result['method']['fused_bi_config']['segments'] == 2
    assert result['method']['fused_bi_config']['long_tokens'] == 64
    with pytest.raises(SystemExit, match='fwd_warps must be a power of 2'):
        run_tool('benchmark', 'mixer', '--fused-bi', '{"fwd_warps": 3}', '--out', out, *TINY)
