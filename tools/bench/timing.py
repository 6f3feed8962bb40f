"""Timing one case: the Case record, the step it builds (autocast, backward), and the
measurement (first call, warm-up, CUDA-event or perf_counter timings, peak memory, a
profile of the kernels per step, an optional CUDA-graph replay), with errors and OOM kept in
the row."""
import contextlib
import gc
import json
import math
import os
import tempfile
import time
import warnings

import torch


DTYPES = {'bf16': 'bfloat16', 'fp16': 'float16', 'fp32': 'float32'}
MODES = ('fwd', 'fwdbwd')
BASELINE_FAMILY = 'transformer'       # the softmax-attention family ratios are taken against


class Case:
    """One row: what it measures (``meta``) and how to build its step (``setup``).

    ``setup()`` returns ``step``, a callable that runs one forward (mode fwd) or one forward
    and backward (mode fwdbwd) on static inputs; a ``step.traffic(out)`` attribute, where
    the level defines one, gives the minimal bytes a call moves for its output ``out``.
    ``group`` is shared by a row and its baseline; ``baseline`` marks the baseline row of its
    group. ``skip``: why this case is not run here (its row says so, the run goes on).
    ``capture=False``: no whole-step CUDA-graph capture under ``--cuda-graph`` (the model
    replays a graph of its own). ``meta['compile']``, where set and not 'none', marks a
    ``torch.compile`` case: its first call is its compile time, and an error there is a
    failed compile.
    """

    def __init__(self, meta, setup, group, baseline=False, images=None, skip=None,
                 capture=True):
        self.meta, self.setup, self.group, self.baseline = meta, setup, group, baseline
        self.images, self.skip, self.capture = images, skip, capture


def _sync(device):
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
    return isinstance(exc, torch.cuda.OutOfMemoryError) or 'out of memory' in str(exc).lower()


def _short_error(exc, what='error'):
    """``what: Type: first line of the message`` (Inductor's errors run to many lines); a
    first line that only announces the next (ends with ':', as Dynamo's "backend='inductor'
    raised:") is joined with it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    msg = lines[0] if lines else ''
    for line in lines[1:3]:
        if not msg.endswith(':'):
            break
        msg += ' ' + line
    return f'{what}: {type(exc).__name__}: {msg[:240]}'


def _free(device):
    gc.collect()
    if device == 'cuda':
        torch.cuda.empty_cache()


LAUNCH_CALLS = ('LaunchKernel', 'GraphLaunch', 'LaunchCooperativeKernel')  # host API names


def profile_step(fn, device, steps):
    """Per-step device work of ``fn`` from the PyTorch profiler, over ``steps`` calls.

    CUDA: ``kernel_ms`` = summed durations of the GPU kernels (memcpy / memset not counted),
    ``kernels`` = kernels run on the GPU, ``launches`` = host calls that launched them (by
    the kernels' correlation ids, else by the CUDA runtime / driver launch calls in the
    trace: a replayed CUDA graph is one launch for all its kernels), each divided by
    ``steps``. CPU, where there are no kernels: the
    leaf ATen ops (ops that call no other op) stand for them, ``kernel_ms`` their summed
    time and ``kernels`` = ``launches`` their count. Read from the exported Chrome trace,
    whose event categories name kernels and launches the same way across torch versions.
    """
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device == 'cuda')
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        _sync(device)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'trace.json')
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)['traceEvents']
    return trace_counts(events, device, steps)


def trace_counts(events, device, steps):
    """:func:`profile_step`'s numbers from the events of a Chrome trace of ``steps`` steps."""
    events = [e for e in events if e.get('ph') == 'X']
    if device == 'cuda':
        kernels = [e for e in events if e.get('cat') == 'kernel']
        # a kernel carries the correlation id of the host call that launched it (all the
        # kernels of a graph replay that of its cudaGraphLaunch): one launch per id
        launched = {e.get('args', {}).get('correlation') for e in kernels} - {None}
        launches = len(launched) or len([
            e for e in events if e.get('cat') in ('cuda_runtime', 'cuda_driver')
            and any(n in e['name'] for n in LAUNCH_CALLS)])
    else:
        kernels = _leaf_ops([e for e in events if e.get('cat') == 'cpu_op'])
        launches = len(kernels)
    return dict(kernel_ms=sum(e.get('dur', 0) for e in kernels) / 1e3 / steps,
                kernels=len(kernels) / steps, launches=launches / steps,
                **kernel_breakdown(kernels, steps))


# Where a step's kernel time goes, by kernel name (lower case; the first group whose
# substring a name holds); fla_mm's own kernels are named exactly (_fused_bi_kernels).
# CUDA kernels carry the library's naming (cuBLAS 'nvjet' / 'xmma' / 'gemm', cuDNN, ATen's
# 'at::native'); on CPU the leaf ATen ops do ('aten::mm', ...). Triton kernels that are
# neither fla_mm's nor Inductor's ('triton_' prefix), FLA's among them, are 'other'.
KERNEL_GROUPS = (
    ('Inductor (fused glue)', ('triton_',)),
    ('convolution', ('conv', 'cudnn', 'fprop', 'dgrad', 'wgrad', 'winograd')),
    ('GEMM', ('gemm', 'nvjet', 'xmma', 'cutlass', 'cublas', 'aten::mm', 'aten::addmm',
              'aten::bmm', 'aten::linear', 'aten::matmul')),
    ('softmax attention', ('flash', 'fmha', 'attention')),
    ('norm', ('norm',)),
    ('ATen elementwise / reduction / copy', ('at::native', 'aten::', 'elementwise', 'reduce')),
)
TOP_KERNELS = 12


def _fused_bi_kernels():
    from fla_mm.ops.fused_bi import launch
    return frozenset(n for n in dir(launch) if n.endswith('_kernel'))


def kernel_group(name, fused_bi_kernels):
    """The group of a kernel (or leaf op) name: fla_mm's fused bi-scan, a
    :data:`KERNEL_GROUPS` group, or 'other'."""
    if name in fused_bi_kernels:
        return 'fused bi-scan (fla_mm)'
    low = name.lower()
    for group, keys in KERNEL_GROUPS:
        if any(k in low for k in keys):
            return group
    return 'other'


def kernel_breakdown(kernels, steps):
    """``kernel_groups``: ms per step of each group that ran (largest first);
    ``top_kernels``: the :data:`TOP_KERNELS` costliest names as [name, ms/step, runs/step]."""
    fused = _fused_bi_kernels()
    by_name = {}
    for e in kernels:
        ms, n = by_name.get(e['name'], (0.0, 0))
        by_name[e['name']] = (ms + e.get('dur', 0) / 1e3, n + 1)
    groups = {}
    for name, (ms, _) in by_name.items():
        group = kernel_group(name, fused)
        groups[group] = groups.get(group, 0.0) + ms / steps
    top = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:TOP_KERNELS]
    return dict(kernel_groups=dict(sorted(groups.items(), key=lambda kv: -kv[1])),
                top_kernels=[[name, ms / steps, n / steps] for name, (ms, n) in top])


def _leaf_ops(ops):
    """The ops of a trace inside which no other op of the same thread runs."""
    ops = sorted(ops, key=lambda e: (e.get('tid'), e['ts'], -e.get('dur', 0)))
    leaves = []
    for i, e in enumerate(ops):
        nxt = ops[i + 1] if i + 1 < len(ops) else None
        inside = (nxt is not None and nxt.get('tid') == e.get('tid')
                  and nxt['ts'] < e['ts'] + e.get('dur', 0))
        if not inside:
            leaves.append(e)
    return leaves


_GRAPH_STREAM = {}


def _graph_replay(step, device):
    """Capture ``step`` (forward, and backward when it has one) in a CUDA graph."""
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


def _compiled(case):
    return case.meta.get('compile', 'none') not in (None, 'none')


def _dynamo_counters():
    from torch._dynamo.utils import counters      # Dynamo's graph-break tally, per process
    return counters


def _profile_into(row, prefix, fn, device, steps):
    """``row[prefix + kernel_ms / kernels / launches]`` from :func:`profile_step`; a profiler
    that fails leaves the timings and says why in ``profile_status``."""
    if not steps:
        return
    try:
        row.update({prefix + k: v for k, v in profile_step(fn, device, steps).items()})
    except Exception as exc:
        row['profile_status'] = _short_error(exc)


def _measure(case, args):
    row = dict(case.meta, median_ms=None, p10_ms=None, p90_ms=None, first_call_ms=None,
               peak_mem_mib=None, iters=0, warmup=0, status='ok',
               group='|'.join(map(str, case.group)), is_baseline=case.baseline)
    if case.skip:
        row['status'] = f'skipped: {case.skip}'
        return row
    device = args.device
    step = graph = out = None
    phase = 'setup'
    try:
        torch.manual_seed(args.seed)
        _free(device)
        before = torch.cuda.memory_allocated() if device == 'cuda' else 0
        row['mem_before_mib'] = before / 2 ** 20 if device == 'cuda' else None
        step = case.setup()
        if getattr(step, 'info', None):
            row['inputs'] = step.info
        _sync(device)
        if _compiled(case):
            _dynamo_counters().clear()
        phase = 'first call'
        t0 = time.perf_counter()
        out = step()
        _sync(device)
        first = time.perf_counter() - t0
        phase = 'timing'
        row['first_call_ms'] = first * 1e3
        if _compiled(case):      # the first call compiled: its time is the compile time
            row['compile_s'] = first
            row['graph_breaks'] = sum(_dynamo_counters()['graph_break'].values())
        if getattr(step, 'traffic', None):
            row['traffic_bytes'] = step.traffic(out)
        out = None
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
        _profile_into(row, '', step, device, args.profile_steps)
        if args.cuda_graph and not case.capture:
            row['graph_status'] = 'not captured: the model replays a CUDA graph of its own'
        elif args.cuda_graph:
            try:
                graph = _graph_replay(step, device)
                gtimes = _time_calls(graph.replay, iters, device)
                row.update(graph_median_ms=_percentile(gtimes, 0.5),
                           graph_p10_ms=_percentile(gtimes, 0.1),
                           graph_p90_ms=_percentile(gtimes, 0.9))
                _profile_into(row, 'graph_', graph.replay, device, args.profile_steps)
            except Exception as exc:  # capture is best effort: record why it did not work
                row['graph_status'] = 'OOM' if _is_oom(exc) else _short_error(exc)
                row['status'] += '; graph: ' + row['graph_status']
                if device == 'cuda':
                    torch.cuda.synchronize()
    except Exception as exc:
        failed = 'compile failed' if _compiled(case) and phase == 'first call' else 'error'
        row['status'] = 'OOM' if _is_oom(exc) else _short_error(exc, failed)
    finally:
        del step, graph, out
        if _compiled(case):      # Dynamo's caches hold the compiled model and its memory
            torch._dynamo.reset()
        _free(device)
    return row


def torch_dtype(name):
    return getattr(torch, DTYPES[name])


def autocast(device, dtype):
    if dtype == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch_dtype(dtype), cache_enabled=False)


def ordered(args, values):
    values = list(dict.fromkeys(values))
    if args.size_order == 'given':
        return values
    return sorted(values, reverse=args.size_order == 'desc')


def make_step(forward, leaves, mode, device, dtype, train_module=None):
    """One call of the case: ``forward()`` under autocast, then backward in mode fwdbwd.

    ``leaves`` (parameters, inputs that require grad) get ``.grad = None`` first, so that every
    call, eager or graph-captured, does the same work.
    """
    state = {}

    if mode == 'fwd':
        if train_module is not None:
            train_module.eval()

        def step():
            with torch.no_grad(), autocast(device, dtype):
                return forward()
        return step

    if train_module is not None:
        train_module.train()

    def step():
        for t in leaves:
            t.grad = None
        with autocast(device, dtype):
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


def grad_leaves(module, *tensors):
    """What a training step's backward writes .grad into: trainable parameters and inputs."""
    return [p for p in module.parameters() if p.requires_grad] + list(tensors)


def warm_device(device):
    """Create the CUDA context, cuBLAS handle and workspace before the first case, so that
    the first case is not charged for them (time or memory)."""
    if device != 'cuda':
        return
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.ones(64, 64, device=device, dtype=dtype)
        (a @ a).sum().item()
    torch.cuda.synchronize()


def copy_bandwidth(device, mib=None):
    """The peak a bandwidth is held against: GB/s of a device-to-device copy of one large
    tensor (2 GiB on CUDA, far past L2; 256 MiB on CPU), counting the bytes read and the
    bytes written, median of 10 copies after 3 warm-ups."""
    mib = mib or (2048 if device == 'cuda' else 256)
    src = torch.empty(mib * 2 ** 20, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    _sync(device)
    ms = _percentile(_time_calls(lambda: dst.copy_(src), 10, device), 0.5)
    del src, dst
    _free(device)
    return dict(gbps=2 * mib * 2 ** 20 / (ms * 1e-3) / 1e9, mib=mib, ms=ms)
