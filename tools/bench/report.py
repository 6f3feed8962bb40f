"""Results: the method record of a run, the markdown table, the plots, ratios against the
baseline, and results.json (written after every case, resumed, merged across runs)."""
import datetime
import importlib.metadata
import json
import os
import os.path as osp
import platform

import torch

from fla_mm.ops import fla_available

from .timing import MODES, TOP_KERNELS


CPU_LABEL = 'CPU (reference path)'
COLUMNS = [  # (key, header) of the markdown table
    ('run', 'run'), ('level', 'level'), ('name', 'model'), ('arch', 'arch'), ('shape', 'shape'),
    ('family', 'family'), ('scan', 'scan'), ('variant', 'variant'), ('size', 'size'),
    ('batch', 'B'), ('dtype', 'dtype'), ('mode', 'mode'),
    ('median_ms', 'median ms'), ('p10_ms', 'p10 ms'), ('p90_ms', 'p90 ms'),
    ('first_call_ms', 'first call ms'), ('compile_s', 'compile s'),
    ('graph_breaks', 'graph breaks'), ('peak_mem_mib', 'peak MiB'),
    ('kernel_ms', 'kernel ms/step'), ('kernels', 'kernels/step'), ('launches', 'launches/step'),
    ('time_ratio', 'time / base'), ('mem_ratio', 'mem / base'), ('img_per_s', 'img/s'),
    ('gbps', 'GB/s (min traffic)'), ('pct_copy', '% of copy BW'),
    ('graph_median_ms', 'graph median ms'), ('graph_ratio', 'graph / base'),
    ('graph_kernel_ms', 'graph kernel ms/step'), ('graph_kernels', 'graph kernels/step'),
    ('graph_launches', 'graph launches/step'), ('graph_gbps', 'graph GB/s'),
    ('graph_pct_copy', 'graph % of copy BW'), ('status', 'status'),
]
# the backbone level's second table: one line per way a row was timed, against the fastest
# Swin and ConvNeXt line of the same run, resolution, batch, dtype and mode
BEST_COLUMNS = [
    ('run', 'run'), ('size', 'size'), ('batch', 'B'), ('dtype', 'dtype'), ('mode', 'mode'),
    ('name', 'model'), ('family', 'family'), ('scan', 'scan'), ('how', 'how'),
    ('ms', 'step ms (median)'), ('kernel_ms', 'kernel ms/step'),
    ('kernels', 'kernels/step'), ('launches', 'launches/step'),
    ('vs_swin', '/ fastest Swin'), ('vs_convnext', '/ fastest ConvNeXt'),
    ('compile_s', 'compile s (first call)'), ('status', 'status'),
]
REFERENCES = ('swin', 'convnext')       # Case meta 'reference' of the Swin / ConvNeXt rows
KEY_FIELDS = ('level', 'name', 'arch', 'shape', 'family', 'scan', 'variant', 'size', 'batch',
              'dtype', 'mode')
LEVEL_ORDER = {'op': 0, 'mixer': 1, 'backbone': 2, 'model': 3}


def case_key(meta):
    """What identifies a case across runs (--resume, report)."""
    return tuple(meta.get(k) for k in KEY_FIELDS)


def add_ratios(rows, best_across_runs=False):
    """time_ratio / mem_ratio / graph_ratio of each row against its group's baseline, and
    the backbone level's ratios to the fastest Swin / ConvNeXt (:func:`add_best_ratios`)."""
    base = {(row.get('run'), row['group']): row for row in rows if row.get('is_baseline')}
    for row in rows:
        for key in ('time_ratio', 'mem_ratio', 'graph_ratio'):
            row.pop(key, None)
        b = base.get((row.get('run'), row['group']))
        row['baseline'] = b['name'] + ('/' + b['family'] if b.get('family') not in (None, '-')
                                      else '') if b else None
        for key, bkey, out in (('median_ms', 'median_ms', 'time_ratio'),
                               ('peak_mem_mib', 'peak_mem_mib', 'mem_ratio'),
                               ('graph_median_ms', 'graph_median_ms', 'graph_ratio')):
            if b and row.get(key) and b.get(bkey):
                row[out] = row[key] / b[bkey]
        for prefix in ('', 'graph_'):
            row.pop(prefix + 'gbps', None)
            row.pop(prefix + 'pct_copy', None)
            ms = row.get(prefix + 'median_ms')
            if ms and row.get('traffic_bytes'):
                row[prefix + 'gbps'] = row['traffic_bytes'] / (ms * 1e-3) / 1e9
                if row.get('copy_gbps'):
                    row[prefix + 'pct_copy'] = 100 * row[prefix + 'gbps'] / row['copy_gbps']
    add_best_ratios(rows, best_across_runs)


def timed_lines(row):
    """The ways a row was timed: its steps, and with a CUDA graph the replay of the whole
    step; each (how, ms, kernel_ms, kernels, launches)."""
    how = row.get('variant') or 'eager'
    lines = [(how, row.get('median_ms'), row.get('kernel_ms'), row.get('kernels'),
              row.get('launches'))]
    if row.get('graph_median_ms'):
        lines.append((how + ' + whole-step CUDA graph', row['graph_median_ms'],
                      row.get('graph_kernel_ms'), row.get('graph_kernels'),
                      row.get('graph_launches')))
    return lines


def add_best_ratios(rows, across_runs=False):
    """``vs_swin`` / ``vs_convnext`` (and ``graph_vs_*`` for the replay) of each backbone
    row: its time over the fastest Swin (ConvNeXt) time of the same run, resolution, batch,
    dtype and mode, over every way those were timed (eager, compiled, graph replay); with
    ``across_runs`` over the rows of every merged run (one device model, checked)."""
    run = (lambda row: None) if across_runs else (lambda row: row.get('run'))
    fastest = {}
    for row in rows:
        if row.get('level') == 'backbone' and row.get('reference') in REFERENCES:
            key = (run(row), row['reference'], row['size'], row['batch'], row['dtype'],
                   row['mode'])
            for _, ms, *_ in timed_lines(row):
                if ms and (key not in fastest or ms < fastest[key]):
                    fastest[key] = ms
    for row in rows:
        for ref in REFERENCES:
            for prefix in ('', 'graph_'):
                row.pop(f'{prefix}vs_{ref}', None)
                best = fastest.get((run(row), ref, row['size'], row['batch'],
                                    row['dtype'], row['mode']))
                if row.get('level') == 'backbone' and best and row.get(prefix + 'median_ms'):
                    row[f'{prefix}vs_{ref}'] = row[prefix + 'median_ms'] / best


def _version(module):
    try:
        mod = __import__(module)
        return getattr(mod, '__version__', 'unknown')
    except Exception:
        return None


def method_info(args, argv):
    cuda = args.device == 'cuda'
    if cuda:
        device = torch.cuda.get_device_name()
    else:
        device = f'{CPU_LABEL}: {platform.processor() or platform.machine()}, ' \
                 f'{torch.get_num_threads()} threads'
    try:
        kernels = cuda and fla_available()
    except Exception:
        kernels = False
    level_mode = dict(fwd='inference: eval(), torch.no_grad()',
                      fwdbwd='training: train(), forward then backward of a fixed random '
                             'output gradient (or the summed loss at the model level), '
                             'grads set to None before each call')
    return {
        'tool': 'tools/benchmark.py',
        'command': 'python tools/benchmark.py ' + ' '.join(argv),
        'date': datetime.datetime.now().isoformat(timespec='seconds'),
        'level': args.level,
        'fused_bi_config': args.fused_bi.to_dict() if args.fused_bi else None,
        'device': device,
        'device_kind': 'cuda' if cuda else CPU_LABEL,
        'ops_backend': 'FLA Triton kernels (fla.ops)' if kernels else
                       'chunked PyTorch reference (fla_mm.ops.reference)',
        'versions': {
            'python': platform.python_version(), 'torch': torch.__version__,
            'cuda': torch.version.cuda, 'triton': _version('triton'), 'fla': _fla_version(),
            'fla_mm': _version('fla_mm'), 'mmengine': _version('mmengine'),
        },
        'dtypes': args.dtype,
        'precision': 'bf16/fp16: torch.autocast (cache off), fp32 parameters; raw ops: inputs '
                     'in the dtypes the mixer produces them (q/k/v in the autocast dtype, '
                     'decays fp32); sdpa baseline: q/k/v in the dtype; fp32: no autocast',
        'modes': {m: level_mode[m] for m in args.mode},
        'warmup_iters': args.warmup,
        'iters': args.iters,
        'timing': 'CUDA events around each call' if cuda else 'time.perf_counter around each call',
        'statistics': 'median, p10, p90 of the timed calls (ms)',
        'first_call': 'first call of each case on its own (perf_counter + synchronize): '
                      'includes Triton compile + autotune for kernels not yet compiled in this '
                      'process; cached on disk under TRITON_CACHE_DIR across processes' +
                      (' (fresh cache for this run)' if args.fresh_triton_cache else ''),
        'memory': 'torch.cuda.max_memory_allocated over the timed calls (peak stats reset '
                  'after warm-up) minus what was allocated before the case was built; '
                  'includes parameters and inputs' if cuda else
                  'not measured on CPU',
        'ratios': 'time / base and mem / base against the softmax baseline of the same run '
                  '(op: F.scaled_dot_product_attention on the same [B, L, H, d]; mixer: '
                  "TokenMixer family 'transformer'; backbone: the same backbone with "
                  "mixer='transformer' run the same way; model: backbone.mixer='transformer')"
                  + ('; and / fastest Swin, / fastest ConvNeXt: against the fastest way those '
                     'ran in this run at the same resolution, batch, dtype and mode'
                     if args.level == 'backbone' else ''),
        'autotune': "FLA's Triton autotune keys leave out L and B: each kernel is tuned on the "
                    'first shape it meets in a process, and with FLA_CACHE_RESULTS=1 that '
                    'choice is cached on disk under TRITON_CACHE_DIR for later processes; '
                    f'this run met sizes in {args.size_order} order'
                    + (' with a fresh cache' if args.fresh_triton_cache else ''),
        'case_budget_s': args.case_budget,
        'cuda_graph': bool(args.cuda_graph),
        'profile_steps': args.profile_steps,
        'compile': ({'modes': args.compile, 'fla_modes': args.fla_compile,
                     'backend': args.compile_backend,
                     'note': 'torch.compile(model, mode=...) after torch._dynamo.reset() per '
                             'case; first call = compile (Dynamo + Inductor, forward and '
                             'backward) + one step; Inductor caches on disk under '
                             'TORCHINDUCTOR_CACHE_DIR (' +
                             os.environ.get('TORCHINDUCTOR_CACHE_DIR', 'default') + ')'}
                    if args.level == 'backbone' else None),
        'compile_caches': {'TRITON_CACHE_DIR': os.environ.get('TRITON_CACHE_DIR',
                                                              '~/.triton/cache'),
                           'FLA_CACHE_RESULTS': os.environ.get('FLA_CACHE_RESULTS', '1')},
        'tf32_matmul': torch.backends.cuda.matmul.allow_tf32 if cuda else None,
        'shapes': _shape_note(args),
    }


def _fla_version():
    try:
        return importlib.metadata.version('flash-linear-attention')
    except Exception:
        return _version('fla')


def _shape_note(args):
    if args.level == 'mixer' and args.op_shapes == 'backbone':
        return ('op: the q/k/v and gate shapes of each stage of ' + ', '.join(args.op_backbones)
                + f' at {args.resolutions} px (read off the arch tables: a stage of C '
                'channels and H heads on its token grid, inputs made by the stage\'s '
                'TokenMixer; see each row\'s inputs); sdpa on [B, L, H, C/H]; size = L')
    if args.level == 'mixer':
        op = (f'q/k/v [B, L, H={args.heads}, d={args.head_dim}]' if args.op_shapes == 'qkv' else
              "the widths of the family's TokenMixer (--op-shapes mixer)")
        return (f'op: {op}, inputs made by the family\'s TokenMixer (see each row\'s inputs); '
                f'mixer: TokenMixer('
                f'dim={args.heads * args.head_dim}, num_heads={args.heads}) on [B, L, C] with '
                f'a near-square grid of L tokens; size = L')
    if args.level == 'backbone':
        return f'input [B, 3, R, R], arch {args.arch}; size = R'
    return f'{args.config} on random [B, 3, R, R] inputs and random labels; size = R'


def fmt(v):
    if v is None:
        return '-'
    if isinstance(v, float):
        if v >= 100:
            return f'{v:.0f}'
        if v >= 1:
            return f'{v:.2f}'
        return f'{v:.3f}'
    return str(v).replace('|', '/')


def to_markdown(method, rows):
    commands = method.get('commands') or [method['command']]
    cols = [(k, h) for k, h in COLUMNS
            if k in ('status', 'level', 'name', 'size') or any(r.get(k) is not None for r in rows)]
    if len(commands) < 2:
        cols = [(k, h) for k, h in cols if k != 'run']
    lines = [f"# fla_mm benchmark: {method['level']} level", '',
             f"- device: **{method['device']}**" +
             (' — timings of the CPU reference path, not of the GPU kernels'
              if method['device_kind'] == CPU_LABEL else ''),
             f"- ops backend: {method['ops_backend']}",
             '- versions: ' + ', '.join(f'{k} {v}' for k, v in method['versions'].items()),
             f"- method: {method['first_call']}; then {method['warmup_iters']} warm-up calls; "
             f"{method['iters']} timed calls ({method['timing']}); {method['statistics']}",
             f"- memory: {method['memory']}",
             f"- precision: {method['precision']}",
             '- modes: ' + '; '.join(f'{k} = {v}' for k, v in method['modes'].items()),
             f"- shapes: {method['shapes']}",
             f"- ratios: {method['ratios']}"]
    if len(commands) < 2:
        lines.append(f"- command: `{commands[0]}`")
    else:
        lines.append('- commands (column run; ratios are taken within one run):')
        lines += [f'  {i}. `{c}`' for i, c in enumerate(commands, 1)]
    if any(r.get('traffic_bytes') for r in rows):
        lines.append(f'- bandwidth: {TRAFFIC_NOTE}; GB/s = those bytes / median time; % of '
                     'the peak copy bandwidth ' + _copy_note(method))
    if any(r.get('kernels') is not None for r in rows):
        lines.append(f'- profile: {PROFILE_NOTE}')
    lines += [f'- warning seen: {n}' for n in method.get('warnings', [])]
    lines += [''] + _table(cols, rows)
    backbone = [r for r in rows if r.get('level') == 'backbone']
    if backbone:
        lines += ['', '## Each way a model ran, against the fastest Swin and ConvNeXt', '',
                  'One line per way each row was timed (its steps; with a CUDA graph also the '
                  'replay of the whole captured step); ratios: the line\'s step time over the '
                  'fastest Swin (ConvNeXt) line of the same '
                  + ('table (all its runs, merged with --best-across-runs)'
                     if method.get('best_across_runs') else 'run') +
                  ', resolution, batch, dtype and mode. Compile time is the first call, kept '
                  'out of the step times.', '']
        best = []
        for r in backbone:
            for i, (how, ms, kms, kernels, launches) in enumerate(timed_lines(r)):
                prefix = 'graph_' if i else ''
                best.append(dict(r, how=how, ms=ms, kernel_ms=kms, kernels=kernels,
                                 launches=launches, vs_swin=r.get(prefix + 'vs_swin'),
                                 vs_convnext=r.get(prefix + 'vs_convnext')))
        best.sort(key=lambda b: (b['dtype'], b['mode'], b['batch'], b['size'],
                                 b['ms'] if b['ms'] else float('inf')))
        cols = [(k, h) for k, h in BEST_COLUMNS
                if k in ('status', 'name', 'size', 'how', 'ms') or
                any(b.get(k) is not None for b in best)]
        if len(commands) < 2:
            cols = [(k, h) for k, h in cols if k != 'run']
        lines += _table(cols, best)
    lines += _breakdown_lines(rows)
    return '\n'.join(lines) + '\n'


def _breakdown_lines(rows):
    """A section on where each profiled row's kernel time goes: ms per step by kernel group,
    then its costliest kernels (of the whole-step CUDA graph's profile where there is one,
    the row's fastest)."""
    lines = []
    for r in rows:
        prefix = 'graph_' if r.get('graph_kernel_groups') else ''
        groups, top = r.get(prefix + 'kernel_groups'), r.get(prefix + 'top_kernels')
        if not groups:
            continue
        how = (r.get('variant') or 'eager') + (' + whole-step CUDA graph' if prefix else '')
        what = ' '.join(str(r[k]) for k in ('name', 'family', 'scan', 'shape', 'size')
                        if r.get(k) not in (None, '-'))
        lines.append(f"- {what}, B={r.get('batch')}, {r.get('dtype')} {r.get('mode')}, {how} "
                     f"({fmt(r.get(prefix + 'kernel_ms'))} ms/step): " + ', '.join(
                         f'{g} {fmt(ms)}' for g, ms in groups.items()))
        lines += [f'  - `{name[:90]}`: {fmt(ms)} ms, {n:.3g}x' for name, ms, n in top[:5]]
    if lines:
        lines = ['', '## Where the kernel time goes', '',
                 'Per profiled row, kernel ms per step by group (fla_mm\'s fused bi-scan kernels '
                 'by name, Inductor\'s by their triton_ prefix, libraries by their naming; '
                 'other Triton kernels, FLA\'s among them, under other; on CPU the leaf ATen '
                 'ops), then its five costliest '
                 'kernels with ms and runs per step; results.json holds the top '
                 f'{TOP_KERNELS}.', ''] + lines
    return lines


TRAFFIC_NOTE = ('minimal traffic = the bytes a call must move at least once: every input '
                'read and the output written (fwd), and in fwdbwd also the output gradient '
                'read and the input gradients written (a stride-0 input counts its stored '
                'elements only)')
PROFILE_NOTE = ('PyTorch profiler over --profile-steps steps, per step: kernel ms = summed '
                'GPU kernel durations, kernels = kernels run, launches = host launch calls '
                '(a whole-step CUDA graph replay is 1); on CPU the leaf ATen ops stand for '
                'kernels')


def _copy_note(method):
    copy = method.get('copy_bandwidth')
    if not copy or len(method.get('commands') or []) > 1:
        return 'measured by the command that measured each row (its copy_gbps in results.json)'
    return (f"measured in this run: {copy['gbps']:.0f} GB/s (a device-to-device copy of "
            f"{copy['mib']} MiB, bytes read + written, median of 10)")


def _table(cols, rows):
    """A markdown table of ``rows`` in columns ``cols`` ((key, header) pairs)."""
    lines = ['| ' + ' | '.join(h for _, h in cols) + ' |',
             '|' + '|'.join('---' for _ in cols) + '|']
    for r in rows:
        lines.append('| ' + ' | '.join(fmt(r.get(k)) for k, _ in cols) + ' |')
    return lines


def write_plots(rows, out_dir, method):
    """Log-log time and memory against size, one PNG per level and metric."""
    try:           # optional: without matplotlib the run still writes its table and JSON
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except Exception as exc:
        print(f'[benchmark] plots skipped: matplotlib does not import ({exc})')
        return []
    files = []
    xlabel = dict(op='tokens L', mixer='tokens L', backbone='resolution (px)',
                  model='resolution (px)')
    for level in sorted({r['level'] for r in rows}):
        lrows = [r for r in rows if r['level'] == level]
        panels = sorted({(r['dtype'], r['mode'], r['batch']) for r in lrows}, key=str)
        styles = {}
        for metric, label in (('median_ms', 'median time (ms)'),
                              ('peak_mem_mib', 'peak memory (MiB)')):
            fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2),
                                     squeeze=False)
            for ax, (dtype, mode, B) in zip(axes[0], panels):
                series = {}
                for r in lrows:
                    if (r['dtype'], r['mode'], r['batch']) != (dtype, mode, B):
                        continue
                    parts = [r['name']] + [str(x) for x in (r['family'], r['scan'])
                                           if x not in (None, '-') and str(x) not in r['name']]
                    key = ' / '.join(parts)
                    if r.get(metric):
                        series.setdefault((key, '-'), []).append((r['size'], r[metric]))
                    if metric == 'median_ms' and r.get('graph_median_ms'):
                        series.setdefault((key + ' (CUDA graph)', '--'), []).append(
                            (r['size'], r['graph_median_ms']))
                for (key, style), pts in sorted(series.items()):
                    pts.sort()    # one colour and marker per series in all panels of a level
                    i = styles.setdefault(key, len(styles))
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], label=key,
                            marker='os^vD'[i % 5], color=plt.cm.tab20(i % 20), linestyle=style)
                if series:
                    ax.set_xscale('log')
                    ax.set_yscale('log')
                    ax.legend(fontsize=7)
                else:
                    ax.text(0.5, 0.5, 'no data' + (' (memory is not measured on CPU)'
                                                   if metric == 'peak_mem_mib' else ''),
                            ha='center', va='center', transform=ax.transAxes)
                ax.set_xlabel(xlabel.get(level, 'size'))
                ax.set_ylabel(label)
                ax.set_title(f'{level}: {dtype}, {mode}, B={B}', fontsize=9)
                ax.grid(True, which='both', alpha=0.3)
            fig.suptitle(f"{method['device']}", fontsize=9)
            fig.tight_layout()
            path = osp.join(out_dir, f"{level}_{'time' if metric == 'median_ms' else 'memory'}.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            files.append(path)
    return files


def load_previous(args, method):
    path = osp.join(args.out, 'results.json')
    if not (args.resume and osp.exists(path)):
        return []
    with open(path) as f:
        prev = json.load(f)
    if prev['method'].get('device') != method['device']:
        raise SystemExit(f"--resume: {path} was measured on {prev['method'].get('device')!r}, "
                         f"this run is on {method['device']!r}; use another --out")
    method['commands'] = prev['method'].get('commands', [prev['method'].get('command')])
    method['commands'].append(method['command'])
    for row in prev['rows']:
        row.setdefault('run', 1)
    return prev['rows']


def merge_runs(paths):
    """(method, rows) of several results.json, rows tagged with the index of the command that
    measured them; ratios stay within one run (add_ratios groups by run)."""
    method, rows, keys = None, [], {}
    for path in paths:
        if osp.isdir(path):
            path = osp.join(path, 'results.json')
        with open(path) as f:
            run = json.load(f)
        m = run['method']
        cmds = m.get('commands', [m.get('command')])
        if method is None:
            method = dict(m, commands=[])
        elif m.get('device') != method['device']:
            raise SystemExit(f"report: {path} was measured on {m.get('device')!r}, the first run "
                             f"on {method['device']!r}; ratios across devices mean nothing")
        offset = len(method['commands'])
        method['commands'] += cmds
        for row in run['rows']:
            row['run'] = offset + row.get('run', len(cmds))
            key = case_key(row)
            if key in keys:
                rows[keys[key]] = row
            else:
                keys[key] = len(rows)
                rows.append(row)
    method['command'] = method['commands'][-1]
    return method, rows


def write_results(out, method, rows):
    notes = []
    for r in rows:
        for n in r.get('warnings', []):
            if n not in notes:
                notes.append(n)
    method['warnings'] = notes
    rows.sort(key=lambda r: (LEVEL_ORDER.get(r['level'], 9), r['dtype'],
                             MODES.index(r['mode']) if r['mode'] in MODES else 9,
                             r['batch'], r['size']))
    add_ratios(rows, method.get('best_across_runs', False))
    md = to_markdown(method, rows)
    with open(osp.join(out, 'results.md'), 'w') as f:
        f.write(md)
    tmp = osp.join(out, 'results.json.tmp')
    with open(tmp, 'w') as f:
        json.dump(dict(method=method, rows=rows), f, indent=1)
    os.replace(tmp, osp.join(out, 'results.json'))
    return md


def finish(args, method, rows):
    """Write the table, JSON and plots, print the table, and return what was written."""
    md = write_results(args.out, method, rows)
    plots = [] if args.no_plots else write_plots(rows, args.out, method)
    print(md)
    print(f"[benchmark] wrote {osp.join(args.out, 'results.md')}, results.json"
          + (', ' + ', '.join(osp.basename(p) for p in plots) if plots else ''))
    return dict(method=method, rows=rows, files=[osp.join(args.out, 'results.md'),
                                                 osp.join(args.out, 'results.json')] + plots)
