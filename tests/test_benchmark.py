"""tools/benchmark.py runs each level on tiny CPU sizes and writes complete outputs.

Timings are not checked, only that every case produced a row and the files are whole.
"""
import importlib
import json
import math
import os

import pytest
import torch

import fla_mm
from conftest import ROOT, load_tool, run_tool

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
    table = first_table(md)
    assert len(table) == n_rows + 1              # header + one line per row
    assert table[0].startswith('| level | model |')
    for level in levels:
        for metric in ('time', 'memory'):
            png = os.path.join(out, f'{level}_{metric}.png')
            assert os.path.getsize(png) > 1000
            with open(png, 'rb') as f:
                assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    return rows


def first_table(md):
    """Header and rows of the first markdown table of ``md`` (the one with every row)."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('| '))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith('|')), len(lines))
    return [line for line in lines[start:end] if line.startswith('| ')]


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


def test_fused_forms_give_one_row_each(tmp_path):
    """--fused-forms sweep chunked: both forms of the fused bi-scan op timed in one run, the
    segment counts applying to the sweep rows only."""
    out = str(tmp_path / 'forms')
    result = run_tool('benchmark', 'mixer', '--families', 'gla', '--levels', 'op',
                      '--op-rows', 'fused', '--fused-forms', 'sweep', 'chunked',
                      '--fused-segments', '0', '2', '--tokens', '16', '--heads', '2',
                      '--head-dim', '16', '--mode', 'fwd', '--out', out, *TINY)
    assert [r['name'] for r in result['rows']] == [
        'sdpa', 'ops.gla fused sweep', 'ops.gla fused sweep 2 segments', 'ops.gla fused chunked']


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
        'backward', 'gate gradient sum']
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


def bench(module):
    """A module of tools/bench (the package tools/benchmark.py puts on sys.path)."""
    load_tool('benchmark')
    return importlib.import_module(f'bench.{module}')


def test_new_options_parse():
    """The backbone level's ways of running and the mixer level's backbone shapes parse,
    with their defaults, and bad combinations are refused when the command line is read."""
    parse = bench('cli').parse_args
    args = parse(['backbone', '--compile', 'none', 'default', 'max-autotune-no-cudagraphs',
                  '--backbone-cuda-graph', '--device', 'cpu'])
    assert args.compile == ['none', 'default', 'max-autotune-no-cudagraphs']
    assert args.fla_compile == args.compile and args.backbone_cuda_graph == 'also'
    assert args.profile_steps == 3 and args.compile_backend == 'inductor' and not args.no_twin
    args = parse(['backbone', '--compile', 'default', '--fla-compile', 'none', '--device', 'cpu'])
    assert (args.compile, args.fla_compile) == (['default'], ['none'])
    with pytest.raises(SystemExit):
        parse(['backbone', '--compile', 'fastest', '--device', 'cpu'])
    args = parse(['mixer', '--op-shapes', 'backbone', '--device', 'cpu'])
    assert args.levels == ['op'] and args.op_rows == ['two_call', 'fused']
    assert args.op_backbones == ['FLAPyramid:tiny', 'FLAPlain:small']
    assert args.resolutions == [512, 1024] and args.profile_steps == 0
    assert parse(['mixer', '--device', 'cpu']).op_rows == ['uni', 'two_call', 'fused']
    with pytest.raises(SystemExit):
        parse(['mixer', '--op-shapes', 'backbone', '--levels', 'mixer', '--device', 'cpu'])


def test_list_cases_runs_nothing(tmp_path):
    """--list-cases: the cases of a command in run order, nothing measured or written."""
    out = str(tmp_path / 'never')
    listed = run_tool('benchmark', 'mixer', '--op-shapes', 'backbone', '--families', 'gla',
                      'retnet', '--batch-size', '2', '8', '--mode', 'fwdbwd', '--list-cases',
                      '--device', 'cpu', '--out', out)['cases']
    # FLAPyramid-T's 4 stages and FLAPlain-S's 1, at 512 and 1024 px, B = 2 and 8;
    # each: sdpa, gla two-call and fused, retnet two-call and fused
    assert len(listed) == 5 * 2 * 2 * 5 and not os.path.exists(out)
    assert listed[0]['batch'] == 8 and listed[0]['name'] == 'sdpa'


def test_compile_modes_that_need_cuda_are_rows_that_say_so():
    """On CPU with Inductor, 'default' runs and the GPU-only modes become rows that say
    why they did not run; fla_mm's cuda_graph=True is such a row too."""
    args = bench('cli').parse_args(
        ['backbone', '--backbones', 'FLAPyramid', '--arch', json.dumps(PYRAMID),
         '--resolutions', '64', '--baselines', '--compile', 'none', 'default',
         'max-autotune-no-cudagraphs', 'reduce-overhead', '--backbone-cuda-graph',
         '--device', 'cpu', '--mode', 'fwdbwd'])
    cases = bench('level_backbone').backbone_cases(args)
    skips = {(c.meta['family'], c.meta['variant']): c.skip for c in cases}
    modes = ('default', 'max-autotune-no-cudagraphs', 'reduce-overhead')
    assert set(skips) == {(f, v) for f in ('transformer', 'gla') for v in (
        'eager', 'cuda_graph=True', *(f'compile {m}' for m in modes),
        *(f'cuda_graph=True + compile {m}' for m in modes))}
    assert skips[('gla', 'eager')] is None and skips[('gla', 'compile default')] is None
    assert 'needs CUDA' in skips[('gla', 'compile max-autotune-no-cudagraphs')]
    assert 'CUDA graphs' in skips[('gla', 'compile reduce-overhead')]
    assert all('only in training on CUDA' in skip for (f, v), skip in skips.items()
               if v.startswith('cuda_graph=True'))
    assert [c.capture for c in cases if c.meta['variant'].startswith('cuda_graph=True')
            ] == [False] * 8
    # on CUDA (cases only: nothing runs): a mode with CUDA graphs of its own is refused inside
    # cuda_graph=True; the others are the backbone's compile option, not a wrapper
    args.device, args.no_twin = 'cuda', True
    skips = {c.meta['variant']: c.skip for c in bench('level_backbone').backbone_cases(args)}
    assert 'captures CUDA graphs itself' in skips['cuda_graph=True + compile reduce-overhead']
    assert skips['cuda_graph=True + compile default'] is None
    assert skips['cuda_graph=True'] is None and skips['compile reduce-overhead'] is None
    # 'only': the fla_mm backbone runs with cuda_graph=True alone
    args.backbone_cuda_graph = 'only'
    assert {c.meta['variant'] for c in bench('level_backbone').backbone_cases(args)} == {
        'cuda_graph=True', *(f'cuda_graph=True + compile {m}' for m in modes)}


def test_backbone_compile_option_row_compiles_the_backbone_itself():
    """A 'cuda_graph=True + compile default' row builds the backbone with its compile option
    and no torch.compile wrapper around it (here on CPU, where no graph is captured, the
    backbone runs eagerly: its compile option serves the graphs only)."""
    from torch._dynamo.utils import counters
    args = bench('cli').parse_args(
        ['backbone', '--backbones', 'FLAPyramid', '--arch', json.dumps(PYRAMID),
         '--resolutions', '32', '--baselines', '--compile', 'default', '--compile-backend',
         'aot_eager', '--backbone-cuda-graph', '--device', 'cpu', '--mode', 'fwdbwd',
         '--no-twin', '--batch-size', '1'])
    case = next(c for c in bench('level_backbone').backbone_cases(args)
                if c.meta['variant'] == 'cuda_graph=True + compile default (aot_eager)')
    counters.clear()
    step = case.setup()
    step()
    assert counters['stats']['unique_graphs'] == 0
    assert not any('OptimizedModule' in type(v).__name__ for v in vars(step).values())


def test_backbone_ways_of_running_against_the_fastest_swin(tmp_path):
    """A tiny backbone run with every way of running: eager and compiled rows carry the
    profiler's kernel time, kernels and launches per step, the compiled ones their compile
    time (first call) and Dynamo's graph breaks (none over a FLAPyramid), every timed row
    its ratio to the fastest Swin row; the ways that cannot run on CPU are rows that say so,
    and the second table has one line per way."""
    pytest.importorskip('mmseg.models')
    out = str(tmp_path / 'ways')
    result = run_tool('benchmark', 'backbone', '--backbones', 'FLAPyramid', '--arch',
                      json.dumps(PYRAMID), '--families', 'gla', '--resolutions', '64',
                      '--mode', 'fwdbwd', '--baselines', 'swin', '--compile', 'none', 'default',
                      'max-autotune-no-cudagraphs', '--compile-backend', 'aot_eager',
                      '--backbone-cuda-graph', '--profile-steps', '1', '--no-plots',
                      '--out', out, *TINY)
    rows = {(r['name'], r['family'], r['variant']): r for r in result['rows']}
    swin = next(n for n, _, _ in rows if n.startswith(('SwinTransformer', 'swin')))
    # cheap ways first, the baseline first within each: a cut-off run keeps what ratios need
    assert [(r['name'] == swin, r['variant']) for r in result['rows']][:4] == [
        (True, 'eager'), (False, 'eager'), (False, 'eager'), (False, 'cuda_graph=True')]
    assert 'compile max-autotune' in result['rows'][-1]['variant']
    ran = [k for k, r in rows.items() if r['status'] == 'ok']
    assert sorted(ran) == sorted([(n, f, v) for n, f in (('FLAPyramid', 'transformer'),
                                                         ('FLAPyramid', 'gla'), (swin, '-'))
                                  for v in ('eager', 'compile default (aot_eager)')])
    for key in ran:
        r = rows[key]
        assert r['kernel_ms'] > 0 and r['kernels'] >= 10 and r['launches'] == r['kernels']
        assert r['kernel_ms'] < 3 * r['median_ms']
        # the breakdown adds up to the kernel time; on CPU the leaf ATen ops are grouped
        assert sum(r['kernel_groups'].values()) == pytest.approx(r['kernel_ms'])
        assert set(r['kernel_groups']) <= {g for g, _ in bench('timing').KERNEL_GROUPS} | {
            'fused bi-scan (fla_mm)', 'other'}
        assert 'ATen elementwise / reduction / copy' in r['kernel_groups']
        assert len(r['top_kernels']) == 12
        assert sum(n for _, _, n in r['top_kernels']) <= r['kernels']
        assert [ms for _, ms, _ in r['top_kernels']] == sorted(
            (ms for _, ms, _ in r['top_kernels']), reverse=True)
        assert r['vs_swin'] > 0 and r.get('vs_convnext') is None
        if key[2].startswith('compile'):
            assert r['compile_s'] * 1e3 == pytest.approx(r['first_call_ms'])
            assert r['compile_s'] * 1e3 > r['median_ms']
        else:
            assert r.get('compile_s') is None
    assert rows[('FLAPyramid', 'gla', 'compile default (aot_eager)')]['graph_breaks'] == 0
    assert min(rows[(swin, '-', v)]['vs_swin'] for v in ('eager', 'compile default (aot_eager)')
               ) == pytest.approx(1.0)
    skipped = {k: r['status'] for k, r in rows.items() if k not in ran}
    # max-autotune (3 models); cuda_graph=True alone and with each compile mode (2 x 3)
    assert len(skipped) == 3 + 2 * 3
    assert all(s.startswith('skipped: ') for s in skipped.values())
    with open(os.path.join(out, 'results.md')) as f:
        md = f.read()
    assert len(first_table(md)) == len(rows) + 1
    best = md.split('## Each way a model ran')[1]
    header = next(line for line in best.splitlines() if line.startswith('| '))
    for col in ('step ms (median)', 'kernel ms/step', 'kernels/step', 'launches/step',
                '/ fastest Swin', 'compile s (first call)'):
        assert f' {col} |' in header
    assert len([line for line in best.splitlines() if line.startswith('| ')]) == len(rows) + 1
    where = md.split('## Where the kernel time goes')[1]
    assert len([line for line in where.splitlines() if line.startswith('- ')]) == len(ran)
    assert 'ATen elementwise' in where and where.count('  - `') == 5 * len(ran)
    assert 'PyTorch profiler' in md and 'torch._dynamo.reset()' not in md   # method in json
    assert 'torch._dynamo.reset()' in result['method']['compile']['note']


@torch._dynamo.register_backend
def _failing_backend(gm, example_inputs):
    raise RuntimeError('no code for this graph\nsecond line of the report')


def test_failed_compile_is_a_row_and_the_run_goes_on(tmp_path):
    """A compile that fails (here a backend that raises) is recorded as failed with the
    error's first line; the next case still runs."""
    result = run_tool('benchmark', 'backbone', '--backbones', 'FLAPyramid', '--arch',
                      json.dumps(PYRAMID), '--families', 'gla', '--no-twin',
                      '--resolutions', '64', '--mode', 'fwd', '--baselines', '--compile',
                      'default', 'none', '--compile-backend', '_failing_backend',
                      '--profile-steps', '0', '--no-plots', '--out', str(tmp_path), *TINY)
    status = {r['variant']: r['status'] for r in result['rows']}
    failed = status['compile default (_failing_backend)']
    assert failed.startswith('compile failed: ') and 'no code for this graph' in failed
    assert 'second line' not in failed
    assert status['eager'] == 'ok'


def test_op_shapes_backbone_times_each_stage_with_bandwidth(tmp_path):
    """`mixer --op-shapes backbone`: one group per stage of FLAPyramid-T (its arch table:
    the stride-4 stage has 3 heads of width 32), SDPA beside the bi-scans, and the minimal
    traffic of each row (the formula of the header) as GB/s and % of the copy bandwidth
    measured in the run."""
    out = str(tmp_path / 'ops')
    result = run_tool('benchmark', 'mixer', '--op-shapes', 'backbone', '--op-backbones',
                      'FLAPyramid:tiny', '--resolutions', '64', '--families', 'gla',
                      '--mode', 'fwdbwd', '--no-plots', '--out', out, *TINY)
    rows = result['rows']
    assert len(rows) == 4 * 3             # 4 stages x (sdpa, gla two-call, gla fused)
    shapes = sorted({r['shape'] for r in rows})
    assert shapes[0] == 'FLAPyramid:tiny 64px stage 0 (stride 4, 16x16, C=96, H=3)'
    assert shapes[3] == 'FLAPyramid:tiny 64px stage 3 (stride 32, 2x2, C=768, H=24)'
    copy = result['method']['copy_bandwidth']['gbps']
    for r in rows:
        assert r['status'] == 'ok' and r['copy_gbps'] == copy > 0
        assert r['gbps'] == pytest.approx(r['traffic_bytes'] / (r['median_ms'] * 1e-3) / 1e9)
        assert r['pct_copy'] == pytest.approx(100 * r['gbps'] / copy)
    stage0 = [r for r in rows if r['shape'] == shapes[0]]
    sdpa = next(r for r in stage0 if r['name'] == 'sdpa')
    assert sdpa['inputs'] == ', '.join(['[1, 256, 3, 32] float32'] * 3)
    # q, k, v read, o written; do read, dq, dk, dv written: 8 tensors of 1*256*3*32 floats
    assert sdpa['traffic_bytes'] == 8 * 256 * 3 * 32 * 4
    gla = next(r for r in stage0 if r['name'] == 'ops.gla fused')
    assert gla['inputs'].startswith('[1, 256, 3, 16] float32, [1, 256, 3, 16] float32, '
                                    '[1, 256, 3, 32] float32, [1, 256, 3, 16] float32')
    # q, k, g (16 wide) and v (32) read and their gradients written; o (32) written, do read
    assert gla['traffic_bytes'] == 2 * 256 * 3 * (16 * 3 + 32) * 4 + 2 * 256 * 3 * 32 * 4
    assert gla['backbone_bi'] == 'fused'
    with open(os.path.join(out, 'results.md')) as f:
        md = f.read()
    assert 'minimal traffic = the bytes a call must move at least once' in md
    assert f'{copy:.0f} GB/s (a device-to-device copy' in md
    assert '| GB/s (min traffic) | % of copy BW |' in first_table(md)[0]


@pytest.mark.parametrize('spec,family', [('FLAPyramid:tiny', 'gla'),
                                         ('FLAPyramid:tiny', 'retnet'),
                                         ('FLAPlain:small', 'simple_gla')])
def test_op_shapes_match_the_backbone_stages(spec, family, monkeypatch):
    """The op inputs --op-shapes backbone derives from the arch tables are the ones the real
    backbone's mixers hand their op, stage by stage: built, run, and hooked where each mixer
    calls its op (the fused bi-scan, or the one-direction op on both directions stacked)."""
    B, res = 2, 64
    args = bench('cli').parse_args(['mixer', '--op-shapes', 'backbone', '--op-backbones', spec,
                                    '--resolutions', str(res), '--device', 'cpu'])
    level = bench('level_mixer')
    groups = level.backbone_op_groups(args, [family])
    derived = []
    for g in groups:
        op_args, op_kwargs = level.capture_op_inputs(family, B, g['L'], g['H'], g['d'], 'cpu',
                                                     'fp32', mixer_cfg=g['cfgs'][family])
        derived.append([tuple(t.shape) for t in list(op_args) + list(op_kwargs.values())
                        if torch.is_tensor(t)])

    name, arch = spec.split(':')
    model = getattr(fla_mm, name)(arch=arch, mixer=family, scan='bi', drop_path_rate=0.0)
    first = [st.blocks[0].attn for st in model.stages] if hasattr(model, 'stages') else [
        model.blocks[0].attn]
    current, seen = {}, {}          # the stage running now; each stage's first op inputs
    real_bi = fla_mm.ops.bi_decay_attn

    def fused(q, k, v, gf, *a, **kw):           # both directions in one call: [B, L, ...]
        seen.setdefault(current['stage'], [tuple(t.shape) for t in (q, k, v, gf)])
        return real_bi(q, k, v, gf, *a, **kw)

    def two_call(op):                           # directions stacked on the batch: [2B, L, ...]
        def call(*tensors, **kw):
            seen.setdefault(current['stage'], [(t.shape[0] // 2, *t.shape[1:]) for t in tensors])
            return op(*tensors, **kw)
        return call

    monkeypatch.setattr(fla_mm.ops, 'bi_decay_attn', fused)
    for i, m in enumerate(first):
        m.register_forward_pre_hook(lambda mod, inp, i=i: current.update(stage=i))
        m.op = two_call(m.op)
    with torch.no_grad():
        outs = model(torch.randn(B, 3, res, res))
    assert len(outs) == 4
    actual = [seen[i] for i in range(len(first))]
    if family == 'retnet':      # the retnet op takes no gate; the fused rows add its decay,
        # as the mixer's fused call (rotary in the kernels) does: [B, L, H]
        assert all(len(s) == 4 and s[3] == s[0][:3] for s in actual), actual
        actual = [s[:3] for s in actual]
    assert actual == derived, (actual, derived)
    assert [g['L'] for g in groups] == [math.prod(model.out_hw((res, res), s)) for s in (
        [4, 8, 16, 32] if name == 'FLAPyramid' else [16])]


def test_trace_counts_read_kernels_and_launches_as_the_cuda_profiler_writes_them():
    """The CUDA side of the profile, on a trace written as PyTorch's profiler writes one:
    eager kernels one launch each (also a Triton kernel launched through the driver), a
    graph replay's kernels one launch together; memcpy and CPU ops are not kernels."""
    def kernel(name, ts, dur, corr):
        return dict(ph='X', cat='kernel', name=name, ts=ts, dur=dur,
                    args=dict(correlation=corr))
    events = [
        dict(ph='X', cat='cpu_op', name='aten::mm', ts=0, dur=5),
        dict(ph='X', cat='cuda_runtime', name='cudaLaunchKernel', ts=1, dur=2,
             args=dict(correlation=1)),
        kernel('gemm', 10, 30, 1),
        dict(ph='X', cat='cuda_driver', name='cuLaunchKernelEx', ts=3, dur=2,
             args=dict(correlation=2)),
        kernel('_bi_gla_fwd_kernel', 40, 50, 2),
        dict(ph='X', cat='gpu_memcpy', name='Memcpy DtoD', ts=95, dur=100,
             args=dict(correlation=3)),
        dict(ph='X', cat='cuda_runtime', name='cudaGraphLaunch', ts=6, dur=2,
             args=dict(correlation=4)),
        kernel('a', 200, 10, 4), kernel('b', 210, 10, 4), kernel('c', 220, 10, 4),
        dict(ph='f', cat='ac2g', name='flow', ts=1, id=1),
    ]
    counts = bench('timing').trace_counts(events, 'cuda', steps=1)
    groups, top = counts.pop('kernel_groups'), counts.pop('top_kernels')
    assert counts == dict(kernel_ms=0.11, kernels=5, launches=3)
    # by name: fla_mm's fused kernel exactly, the library's GEMM, the rest 'other'
    assert groups == {'fused bi-scan (fla_mm)': 0.05, 'GEMM': 0.03,
                      'other': pytest.approx(0.03)}
    assert top[:2] == [['_bi_gla_fwd_kernel', 0.05, 1], ['gemm', 0.03, 1]] and len(top) == 5
    for e in events:                 # without correlation ids: the launch calls are counted
        e.get('args', {}).pop('correlation', None)
    assert bench('timing').trace_counts(events, 'cuda', steps=2)['launches'] == 1.5


def test_report_holds_rows_against_the_fastest_swin_of_all_runs_when_asked(tmp_path):
    """Commands split by a time limit: the Swin rows in one run, FLAPyramid's in another.
    Merged, a row has no ratio to another run's Swin unless --best-across-runs."""
    pytest.importorskip('mmseg.models')
    common = ['backbone', '--backbones', 'FLAPyramid', '--arch', json.dumps(PYRAMID),
              '--resolutions', '64', '--mode', 'fwd', '--no-twin', '--profile-steps', '0',
              '--no-plots', *TINY]
    swin, fla, out = (str(tmp_path / n) for n in ('swin', 'fla', 'merged'))
    run_tool('benchmark', *common, '--families', 'transformer', '--baselines', 'swin',
             '--out', swin)
    run_tool('benchmark', *common, '--families', 'gla', '--baselines', '--out', fla)
    merged = run_tool('benchmark', 'report', swin, fla, '--out', out, '--no-plots')['rows']
    assert [r['family'] for r in merged] == ['-', 'gla']
    assert merged[1].get('vs_swin') is None
    merged = run_tool('benchmark', 'report', swin, fla, '--out', out, '--no-plots',
                      '--best-across-runs')['rows']
    assert merged[1]['vs_swin'] == pytest.approx(merged[1]['median_ms'] / merged[0]['median_ms'])
    with open(os.path.join(out, 'results.md')) as f:
        assert 'all its runs, merged with --best-across-runs' in f.read()
