"""Speed and memory of fla_mm mixers, backbones and models against softmax attention.

Three levels, one subcommand each; every run writes DIR/results.md, DIR/results.json and
log-log PNG plots of time and memory against token count or resolution::

    # raw ops ([B, L, H, d] q/k/v vs F.scaled_dot_product_attention) and TokenMixer
    python tools/benchmark.py mixer --families gla simple_gla retnet transformer --scans bi \
        --dtype bf16 --out work_dirs/bench/mixer
    # fla_mm backbones vs the same layout with mixer='transformer' (+ Swin / ConvNeXt)
    python tools/benchmark.py backbone --families gla --resolutions 224 512 1024 2048
    # a whole segmentor / detector from its config, forward ('tensor') or loss + backward
    python tools/benchmark.py model configs/upernet_gla_ade20k.py --resolutions 512
    # one table and plots from several runs (e.g. each cut off by a GPU time limit)
    python tools/benchmark.py report work_dirs/bench/run1 work_dirs/bench/run2 --out DIR
    # cold compile time of the fused bi-scan kernels for sm_90 (no GPU needed)
    python tools/benchmark.py compile --kernels gla

Method (printed with the results and stored in results.json): a cold first call (Triton
compile + autotune included, timed on its own), warm-up calls, then ``--iters`` calls each
timed with CUDA events (time.perf_counter on CPU); median, p10 and p90 over them; peak
``torch.cuda.max_memory_allocated`` over the timed calls, reset per case (parameters and
inputs included). Ratios are against the softmax baseline measured in the same run. A case
that runs out of memory or fails records that in its row and the run goes on. bf16/fp16 run
under ``torch.autocast`` with fp32 parameters (as in AMP training); raw ops take the dtypes
the mixer hands them (bf16 q/k/v, fp32 decays).

Only torch, mmengine and fla_mm are needed for the ``mixer`` and ``backbone`` levels;
matplotlib (plots), mmseg/mmdet (``model`` level, Swin baseline) and torchvision (ConvNeXt,
Swin fallback) are imported only where used.
"""
import argparse
import copy
import datetime
import gc
import json
import math
import os
import os.path as osp
import platform
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

DTYPES = {'bf16': 'bfloat16', 'fp16': 'float16', 'fp32': 'float32'}
MODES = ('fwd', 'fwdbwd')
DEFAULT_TOKENS = (196, 1024, 4096, 16384)
DEFAULT_RESOLUTIONS = (224, 512, 1024, 2048)
BASELINE_FAMILY = 'transformer'
CPU_LABEL = 'CPU (reference path)'

COLUMNS = [  # (key, header) of the markdown table
    ('run', 'run'), ('level', 'level'), ('name', 'model'), ('arch', 'arch'), ('family', 'family'),
    ('scan', 'scan'), ('size', 'size'), ('batch', 'B'), ('dtype', 'dtype'), ('mode', 'mode'),
    ('median_ms', 'median ms'), ('p10_ms', 'p10 ms'), ('p90_ms', 'p90 ms'),
    ('first_call_ms', 'first call ms'), ('peak_mem_mib', 'peak MiB'),
    ('time_ratio', 'time / base'), ('mem_ratio', 'mem / base'), ('img_per_s', 'img/s'),
    ('graph_median_ms', 'graph median ms'), ('graph_ratio', 'graph / base'), ('status', 'status'),
]


# ----------------------------------------------------------------------------- arguments

def _add_fused_bi(p):
    p.add_argument('--fused-bi', type=json.loads, default=None, metavar='JSON',
                   help='the fused bi-scan kernel variant, fields of '
                        'fla_mm.ops.fused_bi.FusedBiConfig, e.g. \'{"bwd_warps": 8, '
                        '"long_tokens": 2048}\': passed as config= to the op level\'s fused '
                        'ops and as the bi_config option to the mixers of the fused families')


def _add_common(p, default_batch):
    p.add_argument('--batch-size', type=int, nargs='+', default=list(default_batch),
                   help='batch size, or several for a sweep')
    p.add_argument('--dtype', nargs='+', choices=list(DTYPES), default=None,
                   help='default: bf16 on cuda, fp32 on cpu')
    p.add_argument('--mode', nargs='+', choices=MODES, default=list(MODES),
                   help="fwd = inference (eval, no_grad); fwdbwd = train forward + backward")
    p.add_argument('--iters', type=int, default=20, help='timed calls per case')
    p.add_argument('--warmup', type=int, default=5, help='untimed calls after the first one')
    p.add_argument('--device', choices=['cuda', 'cpu'], default=None,
                   help='default: cuda when available')
    p.add_argument('--out', default=None, help='output folder (default work_dirs/benchmark/LEVEL)')
    p.add_argument('--cuda-graph', action='store_true',
                   help='also capture each case in a torch.cuda.CUDAGraph and time its replay')
    p.add_argument('--case-budget', type=float, default=120.0,
                   help='seconds one case may spend timing; slower cases run fewer iterations '
                        '(at least 3, the count is in the row)')
    p.add_argument('--fresh-triton-cache', action='store_true',
                   help='compile into an empty Triton cache so that first calls include compiling')
    p.add_argument('--threads', type=int, default=None,
                   help='torch CPU threads (default: torch\'s own choice)')
    p.add_argument('--seed', type=int, default=0)
    _add_fused_bi(p)
    p.add_argument('--no-plots', action='store_true')
    p.add_argument('--size-order', choices=['desc', 'asc', 'given'], default='desc',
                   help="order of sizes and batch sizes: FLA's autotune keys leave out L and B, "
                        'so each kernel is tuned on the first shape it meets (desc: the largest)')
    p.add_argument('--resume', action='store_true',
                   help='keep the rows already in DIR/results.json: cases done there (status ok) '
                        'are not run again, other rows stay in the table (so several commands, '
                        'or a run cut off by a time limit, fill one table)')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Speed and memory of fla_mm mixers / backbones / models vs softmax attention',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest='level', required=True)

    p = sub.add_parser('mixer', help='raw ops and TokenMixer at token counts',
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--families', nargs='+', default=['gla', 'simple_gla', 'retnet', 'transformer'],
                   help="mixer families; 'all' = every family of fla_mm.layers.FAMILIES")
    p.add_argument('--scans', nargs='+', default=['bi'], help='scan orders of the mixer level')
    p.add_argument('--tokens', type=int, nargs='+', default=list(DEFAULT_TOKENS),
                   help='sequence lengths L (laid out as a near-square grid for the scans)')
    p.add_argument('--heads', type=int, default=6)
    p.add_argument('--head-dim', type=int, default=64)
    p.add_argument('--levels', nargs='+', choices=['op', 'mixer'], default=['op', 'mixer'],
                   help='op = fla_mm.ops functions vs SDPA on [B, L, H, d]; mixer = TokenMixer')
    p.add_argument('--op-shapes', choices=['qkv', 'mixer'], default='qkv',
                   help="op level inputs: 'qkv' = q, k, v all [B, L, H, d]; 'mixer' = the "
                        "widths the family's TokenMixer uses (e.g. GLA's expand_k=0.5), which "
                        'shares compiled and autotuned kernels with the mixer level')
    p.add_argument('--mixer-cfg', type=json.loads, default=None,
                   help='extra TokenMixer options as JSON, e.g. \'{"direction_gates": true}\'')
    p.add_argument('--fused-segments', type=int, nargs='+', default=[0],
                   help='op level: time the fused bi-scan kernel with each of these numbers '
                        'of segments per sweep (FusedBiConfig.segments); 0: as --fused-bi '
                        'says, by default by sequence length, as the mixers run it')
    p.add_argument('--op-rows', nargs='+', choices=OP_ROWS, default=list(OP_ROWS),
                   help="op level rows per family: 'uni' = the op over one direction, "
                        "'two_call' = both directions as two calls batched, 'fused' = "
                        "fla_mm's fused bi-scan kernel (SDPA is always timed); e.g. 'fused' "
                        "alone skips FLA's autotuning of its own kernels on a fresh GPU")
    _add_common(p, [8])

    p = sub.add_parser('backbone', help='fla_mm backbones at image resolutions',
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--backbones', nargs='+', default=None,
                   help='fla_mm backbone classes (default: every FLA* backbone fla_mm exports)')
    p.add_argument('--arch', default='tiny',
                   help='a named size of each backbone, or a JSON dict, e.g. '
                        '\'{"embed_dims": [32, 64, 128, 256], "depths": [1, 1, 1, 1], '
                        '"num_heads": [1, 2, 4, 8]}\'')
    p.add_argument('--families', nargs='+', default=['gla'],
                   help="mixer families ('transformer', the baseline, is always added)")
    p.add_argument('--scans', nargs='+', default=['bi'])
    p.add_argument('--backbone-cfg', type=json.loads, default=None,
                   help='extra backbone arguments as JSON, e.g. \'{"with_cp": true}\'')
    p.add_argument('--baselines', nargs='*', choices=['swin', 'convnext'],
                   default=['swin', 'convnext'],
                   help='other backbones, where importable (Swin: mmseg, else torchvision; '
                        'ConvNeXt: torchvision); named archs only')
    p.add_argument('--resolutions', type=int, nargs='+', default=list(DEFAULT_RESOLUTIONS))
    _add_common(p, [8])

    p = sub.add_parser('model', help='a segmentor / detector built from a config',
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('config', help='config file path (mmseg or mmdet, by its default_scope)')
    p.add_argument('--resolutions', type=int, nargs='+', default=[512])
    p.add_argument('--no-baseline', action='store_true',
                   help="skip the same model with backbone.mixer='transformer'")
    p.add_argument('--cfg-options', nargs='+', default=None,
                   help='override config entries, e.g. model.backbone.scan=uni')
    _add_common(p, [2])

    p = sub.add_parser('compile', help="cold compile time of fla_mm's fused bi-scan kernels "
                       'for a GPU architecture; needs no GPU (Triton + its ptxas)',
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--kernels', nargs='+', choices=['scalar', 'gla'], default=['scalar', 'gla'],
                   help='scalar: simple_gla / RetNet decay; gla: per key channel')
    p.add_argument('--arch', type=int, default=90, help='CUDA compute capability (90: Hopper)')
    p.add_argument('--dtype', choices=list(DTYPES), default='bf16')
    p.add_argument('--head-dim', type=int, default=64)
    _add_fused_bi(p)

    p = sub.add_parser('report', help='merge the results.json of several runs (e.g. runs cut '
                       'off by a time limit) into one table, JSON and plots',
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('runs', nargs='+', help='output folders (or results.json files) of earlier '
                   'runs on one device; where two runs measured the same case, the later wins')
    p.add_argument('--out', required=True, help='output folder')
    p.add_argument('--no-plots', action='store_true')

    args = parser.parse_args(argv)
    if getattr(args, 'fused_bi', None) is not None:
        from fla_mm.ops.fused_bi import FusedBiConfig
        if not isinstance(args.fused_bi, dict):
            raise SystemExit('--fused-bi: a JSON object of FusedBiConfig fields expected')
        try:
            args.fused_bi = FusedBiConfig.from_dict(args.fused_bi)
        except (TypeError, ValueError) as exc:
            raise SystemExit(f'--fused-bi: {exc}')
    if args.level in ('report', 'compile'):
        return args
    import torch
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda: no CUDA device is visible (use --device cpu)')
    if args.dtype is None:
        args.dtype = ['bf16'] if args.device == 'cuda' else ['fp32']
    if args.cuda_graph and args.device != 'cuda':
        parser.error('--cuda-graph needs --device cuda')
    if args.iters < 1 or args.warmup < 0:
        parser.error('--iters must be >= 1 and --warmup >= 0')
    if min(getattr(args, 'fused_segments', [0])) < 0:
        parser.error('--fused-segments: segment counts must be >= 1, or 0 for the default')
    if args.out is None:
        args.out = osp.join('work_dirs', 'benchmark', args.level)
    return args


# ----------------------------------------------------------------------------- measurement

class Case:
    """One row: what it measures (``meta``) and how to build its step (``setup``).

    ``setup()`` returns ``step``, a callable that runs one forward (mode fwd) or one forward
    and backward (mode fwdbwd) on static inputs. ``group`` is shared by a row and its
    baseline; ``baseline`` marks the baseline row of its group.
    """

    def __init__(self, meta, setup, group, baseline=False, images=None):
        self.meta, self.setup, self.group, self.baseline = meta, setup, group, baseline
        self.images = images


def _sync(device):
    import torch
    if device == 'cuda':
        torch.cuda.synchronize()


def _percentile(xs, q):
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _time_calls(fn, n, device):
    """Per-call milliseconds of ``n`` calls (CUDA events, or perf_counter on CPU)."""
    import torch
    times = []
    if device == 'cuda':
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(n)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in events]
    else:
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def _is_oom(exc):
    import torch
    return isinstance(exc, torch.cuda.OutOfMemoryError) or 'out of memory' in str(exc).lower()


def _short_error(exc):
    msg = ' '.join(str(exc).split())
    return f'error: {type(exc).__name__}: {msg[:160]}'


def _free(device):
    import torch
    gc.collect()
    if device == 'cuda':
        torch.cuda.empty_cache()


_GRAPH_STREAM = {}


def _graph_replay(step, device):
    """Capture ``step`` (forward, and backward when it has one) in a CUDA graph."""
    import torch
    if 'stream' not in _GRAPH_STREAM:      # one side stream: cuBLAS keeps a workspace per stream
        _GRAPH_STREAM['stream'] = torch.cuda.Stream()
    stream = _GRAPH_STREAM['stream']
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    torch.cuda.synchronize()
    return graph


def measure(case, args):
    """Time one case; errors and OOM become the row's status, warnings go into the row."""
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        row = _measure(case, args)
    notes = []
    for w in caught:
        msg = ' '.join(str(w.message).split())
        if ('fla' in msg.lower() or 'fla' in str(w.filename)) and msg not in notes:
            notes.append(msg[:300])
    if notes:
        row['warnings'] = notes
    return row


def _measure(case, args):
    import torch
    row = dict(case.meta, median_ms=None, p10_ms=None, p90_ms=None, first_call_ms=None,
               peak_mem_mib=None, iters=0, warmup=0, status='ok',
               group='|'.join(map(str, case.group)), is_baseline=case.baseline)
    device = args.device
    step = graph = None
    try:
        torch.manual_seed(args.seed)
        _free(device)
        before = torch.cuda.memory_allocated() if device == 'cuda' else 0
        row['mem_before_mib'] = before / 2 ** 20 if device == 'cuda' else None
        step = case.setup()
        if getattr(step, 'info', None):
            row['inputs'] = step.info
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        first = time.perf_counter() - t0
        row['first_call_ms'] = first * 1e3
        spent, n_warm = 0.0, 0
        while n_warm < args.warmup and spent < args.case_budget / 4:
            t0 = time.perf_counter()
            step()
            _sync(device)
            spent += time.perf_counter() - t0
            n_warm += 1
        row['warmup'] = n_warm
        per_call = spent / n_warm if n_warm else first
        iters = args.iters
        if per_call * iters > args.case_budget:
            iters = max(3, int(args.case_budget / per_call))
            row['status'] = f'ok (iters cut to {iters} by --case-budget)'
        if device == 'cuda':
            torch.cuda.reset_peak_memory_stats()
        times = _time_calls(step, iters, device)
        if device == 'cuda':
            row['peak_mem_mib'] = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
        row.update(iters=iters, median_ms=_percentile(times, 0.5), p10_ms=_percentile(times, 0.1),
                   p90_ms=_percentile(times, 0.9))
        if case.images:
            row['img_per_s'] = case.images / (row['median_ms'] / 1e3)
        if args.cuda_graph:
            try:
                graph = _graph_replay(step, device)
                gtimes = _time_calls(graph.replay, iters, device)
                row.update(graph_median_ms=_percentile(gtimes, 0.5),
                           graph_p10_ms=_percentile(gtimes, 0.1),
                           graph_p90_ms=_percentile(gtimes, 0.9))
            except Exception as exc:  # capture is best effort: record why it did not work
                row['graph_status'] = 'OOM' if _is_oom(exc) else _short_error(exc)
                row['status'] += '; graph: ' + row['graph_status']
                if device == 'cuda':
                    torch.cuda.synchronize()
    except Exception as exc:
        row['status'] = 'OOM' if _is_oom(exc) else _short_error(exc)
    finally:
        del step, graph
        _free(device)
    return row


def add_ratios(rows):
    """time_ratio / mem_ratio / graph_ratio of each row against its group's baseline."""
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


# ----------------------------------------------------------------------------- helpers

def _torch_dtype(name):
    import torch
    return getattr(torch, DTYPES[name])


def _autocast(device, dtype):
    import contextlib

    import torch
    if dtype == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=_torch_dtype(dtype), cache_enabled=False)


def _ordered(args, values):
    values = list(dict.fromkeys(values))
    if args.size_order == 'given':
        return values
    return sorted(values, reverse=args.size_order == 'desc')


def grid_hw(L):
    """A near-square (h, w) grid of exactly L tokens."""
    h = int(math.isqrt(L))
    while L % h:
        h -= 1
    return h, L // h


def make_step(forward, leaves, mode, device, dtype, train_module=None):
    """One call of the case: ``forward()`` under autocast, then backward in mode fwdbwd.

    ``leaves`` (parameters, inputs that require grad) get ``.grad = None`` first, so that every
    call, eager or graph-captured, does the same work.
    """
    import torch
    state = {}

    if mode == 'fwd':
        if train_module is not None:
            train_module.eval()

        def step():
            with torch.no_grad(), _autocast(device, dtype):
                return forward()
        return step

    if train_module is not None:
        train_module.train()

    def step():
        for t in leaves:
            t.grad = None
        with _autocast(device, dtype):
            out = forward()
        outs = [o for o in (out if isinstance(out, (tuple, list)) else [out])
                if torch.is_tensor(o) and o.requires_grad]
        if outs and outs[0].dim() == 0:       # a loss
            torch.autograd.backward(outs)
            return out
        if 'grads' not in state:
            gen = torch.Generator(device=outs[0].device).manual_seed(0)
            state['grads'] = [torch.randn(o.shape, dtype=o.dtype, device=o.device, generator=gen)
                              for o in outs]
        torch.autograd.backward(outs, state['grads'])
        return out
    return step


def _leaves(module, *tensors):
    return [p for p in module.parameters() if p.requires_grad] + list(tensors)


# ----------------------------------------------------------------------------- level: mixer

class _OpCall(Exception):
    """Raised by the recorder that stands in for a mixer's op: carries the op's inputs."""

    def __init__(self, args, kwargs):
        super().__init__('op call captured')
        self.args, self.kwargs = args, kwargs


def capture_op_inputs(family, B, L, H, d, device, dtype, seed=0, mixer_cfg=None):
    """The exact (args, kwargs) a TokenMixer of ``family`` hands its op, with q/k/v [B, L, H, d].

    A mixer with expand_k = expand_v = 1 and scan 'uni' runs up to its op call under autocast,
    where a recorder stops it: decays and gates come out as the mixer makes them (dtype, range,
    shape), whatever the family's op takes, and no kernel runs (first calls stay cold).
    """
    import torch

    from fla_mm.layers import TokenMixer
    torch.manual_seed(seed)
    cfg = dict(expand_k=1.0, expand_v=1.0) if mixer_cfg is None else mixer_cfg
    mixer = TokenMixer(H * d, H, family=family, scan='uni', **cfg)
    mixer.to(device).eval()

    def recorder(*a, **kw):
        raise _OpCall(a, kw)

    mixer.op = recorder
    x = torch.randn(B, L, H * d, device=device)
    try:
        with torch.no_grad(), _autocast(device, dtype):
            mixer(x, grid_hw(L))
    except _OpCall as call:
        return call.args, call.kwargs
    raise RuntimeError(f'TokenMixer({family!r}) never called its op (mixer.op)')


def _describe(t):
    return f"{list(t.shape)} {str(t.dtype).replace('torch.', '')}"


def _op_of(family):
    from fla_mm import ops
    from fla_mm.layers import FAMILIES
    return getattr(ops, 'OPS', {}).get(family) or FAMILIES[family]['op']


OP_ROWS = ('uni', 'two_call', 'fused')            # --op-rows


def _bi_op(family, fn, B, L, bi, segments=0, config=None):
    """The op over both scan directions of [B, L, ...] inputs: 'two_call' = ``fn`` on
    [x, flip(x)] batched, then flip back and add (what TokenMixer's 'bi' scan does);
    'fused' = ops.bi_decay_attn, one kernel for both directions (gla / simple_gla / retnet),
    in the variant ``config`` (a FusedBiConfig; None: the default) with its sweeps cut into
    ``segments`` parallel runs (0: as ``config`` says)."""
    import dataclasses

    import torch

    from fla_mm import ops
    from fla_mm.ops.fused_bi import FusedBiConfig
    if bi == 'fused':
        config = FusedBiConfig.coerce(config)
        if segments:
            config = dataclasses.replace(config, segments=segments)

        def fused(q, k, v, g=None, **kw):
            if g is None:   # retnet: its fixed per-head decay
                g = ops.retnet_decay(q.shape[2], q.device).expand(*q.shape[:3])
            return ops.bi_decay_attn(q, k, v, g, kernel='fused', config=config, **kw)
        return fused

    def scanned(t):
        if torch.is_tensor(t) and t.dim() >= 2 and tuple(t.shape[:2]) == (B, L):
            return torch.cat([t, t.flip(1)], 0)
        return t

    def two_call(*args, **kwargs):
        o = fn(*[scanned(a) for a in args], **{k: scanned(v) for k, v in kwargs.items()})
        o_f, o_b = o.chunk(2, 0)
        return o_f + o_b.flip(1)
    return two_call


def op_setup(family, B, L, H, d, mode, device, dtype, mixer_cfg=None, bi=None, segments=0,
             config=None):
    """fla_mm.ops.<family> (or SDPA when family is None) on q/k/v [B, L, H, d]; with ``bi``
    ('two_call' or 'fused') over both scan directions (see :func:`_bi_op`)."""
    import torch
    import torch.nn.functional as F

    def setup():
        if family is None:
            tdt = torch.float32 if dtype == 'fp32' else _torch_dtype(dtype)
            args = [torch.randn(B, L, H, d, device=device, dtype=tdt) for _ in range(3)]
            kwargs = {}

            def fn(q, k, v):
                return F.scaled_dot_product_attention(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        else:
            args, kwargs = capture_op_inputs(family, B, L, H, d, device, dtype,
                                             mixer_cfg=mixer_cfg)
            args = [a.detach().clone() if torch.is_tensor(a) else a for a in args]
            kwargs = {k: v.detach().clone() if torch.is_tensor(v) else v
                      for k, v in kwargs.items()}
            fn = _op_of(family)
            if bi is not None:
                fn = _bi_op(family, fn, B, L, bi, segments, config)
        leaves = []
        if mode == 'fwdbwd':
            for t in list(args) + list(kwargs.values()):
                if torch.is_tensor(t) and t.is_floating_point():
                    t.requires_grad_(True)
                    leaves.append(t)
        # inputs already carry their dtypes: no autocast around the op itself
        step = make_step(lambda: fn(*args, **kwargs), leaves, mode, device, 'fp32')
        step.info = ', '.join(_describe(t) for t in list(args) + list(kwargs.values())
                              if torch.is_tensor(t))
        return step
    return setup


def with_bi_config(mixer_cfg, config):
    """Mixer options (None, a dict, or one dict per stage or block, as backbones take them)
    with ``bi_config`` set to ``config`` (a FusedBiConfig) in each; unchanged for None."""
    if config is None:
        return mixer_cfg
    if isinstance(mixer_cfg, (list, tuple)):
        return [dict(c or {}, bi_config=config.to_dict()) for c in mixer_cfg]
    return dict(mixer_cfg or {}, bi_config=config.to_dict())


def _bi_config_for(family, config):
    """``config`` for a family whose bi-scan the fused kernel computes, else None."""
    from fla_mm import ops
    families = [family] if isinstance(family, str) else list(family)
    return config if any(f in ops.BI_FUSED_FAMILIES for f in families) else None


def mixer_setup(family, scan, B, L, H, d, mode, device, dtype, mixer_cfg):
    import torch

    from fla_mm.layers import TokenMixer

    def setup():
        m = TokenMixer(H * d, H, family=family, scan=scan, **(mixer_cfg or {})).to(device)
        x = torch.randn(B, L, H * d, device=device, requires_grad=mode == 'fwdbwd')
        hw = grid_hw(L)
        return make_step(lambda: m(x, hw), _leaves(m, x) if mode == 'fwdbwd' else [], mode,
                         device, dtype, train_module=m)
    return setup


def mixer_cases(args):
    from fla_mm import ops
    from fla_mm.layers import FAMILIES
    from fla_mm.layers.scan import SCANS
    families = sorted(FAMILIES) if args.families == ['all'] else list(args.families)
    for f in families:
        if f not in FAMILIES:
            raise SystemExit(f'Unknown family {f!r}; valid families: {", ".join(sorted(FAMILIES))}'
                             f' (or all)')
    for s in args.scans:
        if s not in SCANS:
            raise SystemExit(f'Unknown scan {s!r}; valid scans: {", ".join(SCANS)}')
    H, d = args.heads, args.head_dim
    op_cfg = None if args.op_shapes == 'mixer' else dict(expand_k=1.0, expand_v=1.0)
    if args.op_shapes == 'mixer':
        op_cfg = dict(args.mixer_cfg or {})
    op_tag = ' (mixer widths)' if args.op_shapes == 'mixer' else ''
    cases = []
    for dtype in args.dtype:
        for mode in args.mode:
            for B in _ordered(args, args.batch_size):
                for L in _ordered(args, args.tokens):
                    common = dict(size=L, batch=B, dtype=dtype, mode=mode)
                    if 'op' in args.levels:
                        group = ('op', L, B, dtype, mode)
                        cases.append(Case(dict(common, level='op', name='sdpa', family='-',
                                               scan='-'),
                                          op_setup(None, B, L, H, d, mode, args.device, dtype),
                                          group, baseline=True))
                        for f in families:
                            if f == BASELINE_FAMILY:
                                continue
                            # (scan, bi kernel, name tag, fused segments: only 'fused' reads it)
                            variants = [('-', None, '', 0)] * ('uni' in args.op_rows)
                            if 'bi' in args.scans and FAMILIES[f].get('causal', True):
                                variants += [('bi', 'two_call', ' two-call', 0)] * (
                                    'two_call' in args.op_rows)
                                if f in ops.BI_FUSED_FAMILIES and 'fused' in args.op_rows:
                                    variants += [('bi', 'fused', ' fused' + (
                                        f" {n} segment{'s' * (n > 1)}" if n else ''), n)
                                        for n in args.fused_segments]
                            for scan, bi, tag, n in variants:
                                cases.append(Case(
                                    dict(common, level='op', name=f'ops.{f}{tag}' + op_tag,
                                         family=f, scan=scan),
                                    op_setup(f, B, L, H, d, mode, args.device, dtype,
                                             op_cfg, bi, n, args.fused_bi), group))
                    if 'mixer' in args.levels:
                        group = ('mixer', L, B, dtype, mode)
                        for f in families:
                            causal = FAMILIES[f].get('causal', True)
                            for s in (args.scans if causal else ['-']):
                                cases.append(Case(
                                    dict(common, level='mixer', name='TokenMixer', family=f,
                                         scan=s),
                                    mixer_setup(f, s if causal else 'uni', B, L, H, d, mode,
                                                args.device, dtype, with_bi_config(
                                                    args.mixer_cfg,
                                                    _bi_config_for(f, args.fused_bi))),
                                    group, baseline=f == BASELINE_FAMILY))
    return cases


# ----------------------------------------------------------------------------- level: backbone

def fla_backbones():
    """Backbone classes fla_mm exports (FLAPyramid, FLAPlain, ...)."""
    import fla_mm
    import torch.nn as nn
    names = getattr(fla_mm, '__all__', dir(fla_mm))
    found = {}
    for n in names:
        obj = getattr(fla_mm, n, None)
        if (isinstance(obj, type) and issubclass(obj, nn.Module)
                and obj.__module__.startswith('fla_mm.backbones')):
            found[n] = obj
    return found


def parse_arch(text, names):
    """``--arch``: a size name, a JSON dict, or a JSON dict of such per backbone name."""
    if not text.strip().startswith('{'):
        return {n: text for n in names}
    arch = json.loads(text)
    if arch and all(k in names or k.startswith('FLA') for k in arch):
        missing = [n for n in names if n not in arch]
        if missing:
            raise SystemExit(f'--arch names backbones {sorted(arch)} but not {missing}')
        return arch
    return {n: arch for n in names}


def swin_builder(arch):
    """Swin of the same size: mmseg's SwinTransformer, else torchvision's; None if neither."""
    sizes = dict(tiny=((2, 2, 6, 2), (3, 6, 12, 24), 96), small=((2, 2, 18, 2), (3, 6, 12, 24), 96),
                 base=((2, 2, 18, 2), (4, 8, 16, 32), 128))
    if isinstance(arch, dict):
        depths, heads, dim = arch['depths'], arch['num_heads'], arch['embed_dims'][0]
    elif arch in sizes:
        depths, heads, dim = sizes[arch]
    else:
        return None
    try:
        from mmseg.models.backbones import SwinTransformer
        return 'SwinTransformer (mmseg)', lambda: SwinTransformer(
            embed_dims=dim, depths=depths, num_heads=heads)
    except Exception:
        pass
    if not isinstance(arch, str):
        return None
    try:
        import torchvision.models as tvm
    except Exception:
        return None
    ctor = dict(tiny=tvm.swin_t, small=tvm.swin_s, base=tvm.swin_b)[arch]
    return 'swin_' + arch[0] + ' (torchvision)', lambda: _Features(ctor(weights=None).features)


def convnext_builder(arch):
    if not isinstance(arch, str):
        return None
    try:
        import torchvision.models as tvm
    except Exception:
        return None
    ctor = dict(tiny=tvm.convnext_tiny, small=tvm.convnext_small, base=tvm.convnext_base).get(arch)
    if ctor is None:
        return None
    return f'convnext_{arch} (torchvision)', lambda: _Features(ctor(weights=None).features)


def _Features(features):
    """Wrap a torchvision ``features`` Sequential to return its four stage outputs."""
    import torch.nn as nn

    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = features

        def forward(self, x):
            outs = []
            for i, layer in enumerate(self.features):
                x = layer(x)
                if i % 2 == 1:
                    outs.append(x)
            return tuple(outs)
    return Features()


def backbone_setup(build, res, B, mode, device, dtype):
    import torch

    def setup():
        model = build().to(device)
        if hasattr(model, 'init_weights'):
            model.init_weights()
        x = torch.randn(B, 3, res, res, device=device)
        return make_step(lambda: model(x), _leaves(model) if mode == 'fwdbwd' else [], mode,
                         device, dtype, train_module=model)
    return setup


def backbone_cases(args):
    import fla_mm  # noqa: F401  (registers the backbones)
    from fla_mm.layers import FAMILIES
    available = fla_backbones()
    names = args.backbones or sorted(available)
    for n in names:
        if n not in available:
            raise SystemExit(f'Unknown backbone {n!r}; fla_mm exports: '
                             f'{", ".join(sorted(available))}')
    families = [f for f in args.families if f != BASELINE_FAMILY]
    for f in families:
        if f not in FAMILIES:
            raise SystemExit(f'Unknown family {f!r}; valid families: {", ".join(sorted(FAMILIES))}')
    archs = parse_arch(args.arch, names)
    label = {n: a if isinstance(a, str) else 'custom' for n, a in archs.items()}
    extra = dict(args.backbone_cfg or {})
    ref = 'FLAPyramid' if 'FLAPyramid' in names else (names[0] if names else None)
    ref_arch = archs.get(ref, args.arch)
    others = []
    for kind in args.baselines or []:
        built = None
        if isinstance(ref_arch, str) or {'embed_dims', 'depths', 'num_heads'} <= set(ref_arch):
            built = (swin_builder if kind == 'swin' else convnext_builder)(ref_arch)
        if built is None:
            print(f'[benchmark] {kind} baseline skipped: not importable here or no matching size '
                  f'for arch {label.get(ref)!r}')
        else:
            others.append(built)

    def fla_build(cls, n, family, scan):
        kwargs = dict(extra)
        config = _bi_config_for(family, args.fused_bi)
        if config is not None:
            kwargs['mixer_cfg'] = with_bi_config(kwargs.get('mixer_cfg'), config)
        return lambda: cls(arch=archs[n], mixer=family, scan=scan, drop_path_rate=0.0, **kwargs)

    cases = []
    for dtype in args.dtype:
        for mode in args.mode:
            for B in _ordered(args, args.batch_size):
                for res in _ordered(args, args.resolutions):
                    common = dict(level='backbone', size=res, batch=B, dtype=dtype, mode=mode)
                    for n in names:
                        cls = available[n]
                        common['arch'] = label[n]
                        group = ('backbone', n, res, B, dtype, mode)
                        cases.append(Case(dict(common, name=n, family=BASELINE_FAMILY, scan='-'),
                                          backbone_setup(fla_build(cls, n, BASELINE_FAMILY, 'uni'),
                                                         res, B, mode, args.device, dtype),
                                          group, baseline=True, images=B))
                        for f in families:
                            for s in args.scans:
                                cases.append(Case(dict(common, name=n, family=f, scan=s),
                                                  backbone_setup(fla_build(cls, n, f, s), res, B,
                                                                 mode, args.device, dtype),
                                                  group, images=B))
                    for other, build in others:
                        group = ('backbone', ref, res, B, dtype, mode)
                        cases.append(Case(dict(common, name=other, arch=label.get(ref),
                                               family='-', scan='-'),
                                          backbone_setup(build, res, B, mode, args.device, dtype),
                                          group, images=B))
    return cases


# ----------------------------------------------------------------------------- level: model

def _import_scope(scope):
    import importlib
    try:
        importlib.import_module(f'{scope}.utils').register_all_modules(init_default_scope=False)
    except ImportError as exc:
        raise SystemExit(f'model level: the config needs {scope!r}, which does not import here '
                         f'({exc})')
    from mmengine.registry import init_default_scope
    init_default_scope(scope)


def _seg_samples(B, res, cfg):
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    num_classes = cfg.model.get('decode_head', {}).get('num_classes', 150)
    samples = []
    for _ in range(B):
        s = SegDataSample(metainfo=dict(img_shape=(res, res), ori_shape=(res, res),
                                        pad_shape=(res, res), batch_input_shape=(res, res),
                                        scale_factor=(1.0, 1.0), flip=False))
        s.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, res, res)))
        samples.append(s)
    return samples


def _det_samples(B, res, cfg):
    import numpy as np
    import torch
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    head = cfg.model.get('roi_head', {}).get('bbox_head', {})
    num_classes = head.get('num_classes', 80) if isinstance(head, dict) else 80
    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(B):
        s = DetDataSample(metainfo=dict(img_shape=(res, res), ori_shape=(res, res),
                                        pad_shape=(res, res), batch_input_shape=(res, res),
                                        scale_factor=(1.0, 1.0), flip=False))
        n = 4
        xy = torch.rand(n, 2, generator=g) * res * 0.6
        wh = torch.rand(n, 2, generator=g) * res * 0.3 + 8
        boxes = torch.cat([xy, (xy + wh).clamp(max=res - 1)], 1)
        masks = np.zeros((n, res, res), dtype=np.uint8)
        for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[i, y0:y1, x0:x1] = 1
        inst = InstanceData(bboxes=boxes, labels=torch.randint(0, num_classes, (n,), generator=g))
        inst.masks = BitmapMasks(masks, res, res)
        s.gt_instances = inst
        samples.append(s)
    return samples


def model_setup(cfg, res, B, mode, device, dtype):
    import torch

    def setup():
        from mmengine.registry import MODELS
        scope = cfg.get('default_scope')
        model = MODELS.build(cfg.model).to(device)
        model.init_weights()
        samples = (_seg_samples if scope == 'mmseg' else _det_samples)(B, res, cfg)
        samples = [s.to(device) for s in samples]
        x = torch.randn(B, 3, res, res, device=device)
        if mode == 'fwd':
            forward = lambda: model(x, samples, mode='tensor')  # noqa: E731
        else:
            def forward():
                loss, _ = model.parse_losses(model(x, samples, mode='loss'))
                return loss
        return make_step(forward, _leaves(model) if mode == 'fwdbwd' else [], mode, device, dtype,
                         train_module=model)
    return setup


def model_cases(args):
    from mmengine.config import Config, DictAction
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        ns = argparse.Namespace()
        DictAction(option_strings=[], dest='o')(None, ns, args.cfg_options)
        cfg.merge_from_dict(ns.o)
    scope = cfg.get('default_scope')
    if scope not in ('mmseg', 'mmdet'):
        raise SystemExit(f'model level: default_scope {scope!r} is not supported (mmseg, mmdet)')
    _import_scope(scope)
    cfg.model.pop('pretrained', None)
    backbone = cfg.model.get('backbone', {})
    backbone.pop('init_cfg', None)
    variants = [(backbone.get('mixer', '-'), cfg, False)]
    if not args.no_baseline and 'mixer' in backbone and backbone['mixer'] != BASELINE_FAMILY:
        base = copy.deepcopy(cfg)
        base.model.backbone.mixer = BASELINE_FAMILY
        variants.insert(0, (BASELINE_FAMILY, base, True))
    elif backbone.get('mixer') == BASELINE_FAMILY:
        variants = [(BASELINE_FAMILY, cfg, True)]
    config = _bi_config_for(backbone.get('mixer', '-'), args.fused_bi)
    if config is not None:         # after the baseline's copy: only the fla_mm model gets it
        backbone['mixer_cfg'] = with_bi_config(backbone.get('mixer_cfg'), config)
    name = osp.splitext(osp.basename(args.config))[0]
    cases = []
    for dtype in args.dtype:
        for mode in args.mode:
            for B in _ordered(args, args.batch_size):
                for res in _ordered(args, args.resolutions):
                    group = ('model', res, B, dtype, mode)
                    for family, c, is_base in variants:
                        mixer = family if isinstance(family, str) else '+'.join(family)
                        cases.append(Case(dict(level='model', name=name, family=mixer,
                                               scan='-' if is_base else
                                               str(c.model.backbone.get('scan', '-')),
                                               size=res, batch=B, dtype=dtype, mode=mode),
                                          model_setup(c, res, B, mode, args.device, dtype),
                                          group, baseline=is_base, images=B))
    return cases


# ----------------------------------------------------------------------------- reporting

def _version(module):
    try:
        mod = __import__(module)
        return getattr(mod, '__version__', 'unknown')
    except Exception:
        return None


def method_info(args, argv):
    import torch
    cuda = args.device == 'cuda'
    if cuda:
        device = torch.cuda.get_device_name()
    else:
        device = f'{CPU_LABEL}: {platform.processor() or platform.machine()}, ' \
                 f'{torch.get_num_threads()} threads'
    try:
        from fla_mm.ops import fla_available
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
                  "mixer='transformer'; model: backbone.mixer='transformer')",
        'autotune': "FLA's Triton autotune keys leave out L and B: each kernel is tuned on the "
                    'first shape it meets in a process, and with FLA_CACHE_RESULTS=1 that '
                    'choice is cached on disk under TRITON_CACHE_DIR for later processes; '
                    f'this run met sizes in {args.size_order} order'
                    + (' with a fresh cache' if args.fresh_triton_cache else ''),
        'case_budget_s': args.case_budget,
        'cuda_graph': bool(args.cuda_graph),
        'compile_caches': {'TRITON_CACHE_DIR': os.environ.get('TRITON_CACHE_DIR',
                                                              '~/.triton/cache'),
                           'FLA_CACHE_RESULTS': os.environ.get('FLA_CACHE_RESULTS', '1')},
        'tf32_matmul': torch.backends.cuda.matmul.allow_tf32 if cuda else None,
        'shapes': _shape_note(args),
    }


def _fla_version():
    try:
        from importlib.metadata import version
        return version('flash-linear-attention')
    except Exception:
        return _version('fla')


def _shape_note(args):
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


def _fmt(v):
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
    lines += [f'- warning seen: {n}' for n in method.get('warnings', [])]
    lines += ['', '| ' + ' | '.join(h for _, h in cols) + ' |',
              '|' + '|'.join('---' for _ in cols) + '|']
    for r in rows:
        lines.append('| ' + ' | '.join(_fmt(r.get(k)) for k, _ in cols) + ' |')
    return '\n'.join(lines) + '\n'


def write_plots(rows, out_dir, method):
    """Log-log time and memory against size, one PNG per level and metric."""
    try:
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


# ----------------------------------------------------------------------------- compile

def compile_times(args):
    """Compile every kernel variant a fused bi-scan launches (forward, backward, and with
    segments the two state kernels) into an empty Triton cache for ``args.arch``, as the first
    call on a fresh machine does, and print the seconds each took. No GPU is needed: Triton
    lowers to PTX and runs its bundled ptxas."""
    import tempfile
    from unittest import mock
    with mock.patch.dict(os.environ, TRITON_CACHE_DIR=tempfile.mkdtemp(prefix='triton_cache_')):
        return _compile_times(args)


def _compile_times(args):
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fla_mm.ops.fused_bi import FusedBiConfig
    from fla_mm.ops.fused_bi import launch as fb
    config = FusedBiConfig.coerce(args.fused_bi)
    dtype = _torch_dtype(args.dtype)
    data = {torch.bfloat16: '*bf16', torch.float16: '*fp16', torch.float32: '*fp32'}[dtype]
    fp32_buffers = {'g', 'dg', 'dg_tot', 'seg_S', 'seg_G', 'seg_dH', 'seg_E'}
    ints = {'T', 'H', 'sg_d', 'sg_b', 'sg_t', 'sg_h', 'CPS', 'NSEG'}
    d = args.head_dim
    target = GPUTarget('cuda', args.arch, 32)
    rows = []
    for kind in args.kernels:
        per_channel = kind == 'gla'
        meta = fb._meta(torch.empty(1, 1, 1, d, dtype=dtype), torch.empty(1, 1, 1, d), per_channel)
        state, state_meta, fwd, _ = fb._kernels(meta, per_channel, backward=False)
        _, _, bwd, _ = fb._kernels(meta, per_channel, backward=True)
        for segmented in (False, True):
            variants = [('forward', fwd, dict(meta, SEGMENTED=segmented), False),
                        ('backward', bwd, dict(meta, SEGMENTED=segmented, NEED_DG=True), True)]
            if segmented:
                variants += [('segment states, forward', state, dict(state_meta, BACKWARD=False),
                              False),
                             ('segment states, backward', state, dict(state_meta, BACKWARD=True),
                              True)]
            for name, fn, consts, backward in variants:
                sig, cx = {}, {}
                for i, n in enumerate(fn.arg_names):
                    if n in consts:
                        sig[n], cx[(i,)] = 'constexpr', consts[n]
                    else:
                        sig[n] = ('i32' if n in ints else 'fp32' if n == 'scale' else
                                  '*fp32' if n in fp32_buffers else data)
                t0 = time.perf_counter()
                compiled = triton.compile(ASTSource(fn, sig, cx), target=target,
                                          options=fb._launch_options(meta, backward, config))
                seconds = time.perf_counter() - t0
                row = dict(kernels=kind, segmented=segmented, kernel=name, seconds=seconds,
                           cubin_bytes=len(compiled.asm['cubin']),
                           **_ptxas_usage(compiled.asm['ptx'], args.arch))
                rows.append(row)
                print(f"[compile] {kind:6s} {'segmented' if segmented else 'one segment':11s} "
                      f'{name:26s} {seconds:6.1f} s  cubin {row["cubin_bytes"] // 1024} KiB  '
                      f'{row["registers"]} registers, spills {row["spill_store_bytes"]} B '
                      f'stored / {row["spill_load_bytes"]} B loaded', flush=True)
    for kind in args.kernels:
        for segmented in (False, True):
            total = sum(r['seconds'] for r in rows if r['kernels'] == kind
                        and r['segmented'] == segmented)
            print(f"[compile] {kind} {'segmented' if segmented else 'one segment'}: first call "
                  f'compiles {total:.1f} s (sm_{args.arch}, {args.dtype}, head dim {d}, triton '
                  f'{triton.__version__}, {os.cpu_count()} CPUs)')
    return rows


def _ptxas_usage(ptx, arch):
    """Registers per thread and register-spill bytes of a kernel, from ``ptxas -v`` (the
    ptxas Triton ships): spills mean local-memory traffic inside the kernel's loops."""
    import re
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas
    with tempfile.TemporaryDirectory() as d:
        path = osp.join(d, 'kernel.ptx')
        with open(path, 'w') as f:
            f.write(ptx)
        out = subprocess.run([get_ptxas(arch).path, f'-arch=sm_{arch}a', '-v', path, '-o',
                              osp.join(d, 'kernel.cubin')], capture_output=True, text=True)
    text = out.stdout + out.stderr
    num = (lambda pattern: int(m.group(1)) if (m := re.search(pattern, text)) else -1)
    return dict(registers=num(r'Used (\d+) registers'),
                spill_store_bytes=num(r'(\d+) bytes spill stores'),
                spill_load_bytes=num(r'(\d+) bytes spill loads'))


# ----------------------------------------------------------------------------- main

KEY_FIELDS = ('level', 'name', 'arch', 'family', 'scan', 'size', 'batch', 'dtype', 'mode')


def case_key(meta):
    return tuple(meta.get(k) for k in KEY_FIELDS)


def warm_device(device):
    """Create the CUDA context, cuBLAS handle and workspace before the first case, so that
    the first case is not charged for them (time or memory)."""
    import torch
    if device != 'cuda':
        return
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.ones(64, 64, device=device, dtype=dtype)
        (a @ a).sum().item()
    torch.cuda.synchronize()


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


LEVEL_ORDER = {'op': 0, 'mixer': 1, 'backbone': 2, 'model': 3}


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
    add_ratios(rows)
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


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.level == 'compile':
        return compile_times(args)
    if args.level == 'report':
        method, rows = merge_runs(args.runs)
        os.makedirs(args.out, exist_ok=True)
        return finish(args, method, rows)
    if args.fresh_triton_cache:
        import tempfile
        os.environ['TRITON_CACHE_DIR'] = tempfile.mkdtemp(prefix='triton_cache_')
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    import fla_mm  # noqa: F401
    cases = dict(mixer=mixer_cases, backbone=backbone_cases, model=model_cases)[args.level](args)
    method = method_info(args, argv)
    print(f"[benchmark] {len(cases)} cases on {method['device']} "
          f"(torch {torch.__version__}, triton {method['versions']['triton']}, "
          f"fla {method['versions']['fla']}; ops backend: {method['ops_backend']})", flush=True)
    warm_device(args.device)
    os.makedirs(args.out, exist_ok=True)
    old = load_previous(args, method)
    done = {}
    for row in old:
        if str(row.get('status', '')).startswith('ok'):
            done[case_key(row)] = row
    keys = [case_key(c.meta) for c in cases]
    rows = [r for r in old if case_key(r) not in set(keys)]
    for i, (case, key) in enumerate(zip(cases, keys)):
        if key in done:
            rows.append(done[key])
            print(f'[{i + 1}/{len(cases)}] kept from the previous run: {key}', flush=True)
            continue
        row = measure(case, args)
        if 'commands' in method:            # --resume: which command measured the row
            row['run'] = len(method['commands'])
        rows.append(row)
        print(f"[{i + 1}/{len(cases)}] {row['level']} {row['name']} {row['family']} "
              f"{row['scan']} size={row['size']} B={row['batch']} {row['dtype']} {row['mode']}: "
              f"median {_fmt(row['median_ms'])} ms, first {_fmt(row['first_call_ms'])} ms, "
              f"peak {_fmt(row['peak_mem_mib'])} MiB [{row['status']}]", flush=True)
        write_results(args.out, method, rows)     # after every case: a cut-off run keeps them
    return finish(args, method, rows)


if __name__ == '__main__':
    main()
