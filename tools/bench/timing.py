"""Timing one case: the Case record, the step it builds (autocast, backward), and the
measurement (first call, warm-up, CUDA-event or perf_counter timings, peak memory, an
optional CUDA-graph replay), with errors and OOM kept in the row."""
import contextlib
import gc
import math
import time
import warnings

import torch


DTYPES = {'bf16': 'bfloat16', 'fp16': 'float16', 'fp32': 'float32'}
MODES = ('fwd', 'fwdbwd')
BASELINE_FAMILY = 'transformer'       # the softmax-attention family ratios are taken against


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


def _short_error(exc):
    msg = ' '.join(str(exc).split())
    return f'error: {type(exc).__name__}: {msg[:160]}'


def _free(device):
    gc.collect()
    if device == 'cuda':
        torch.cuda.empty_cache()


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


def _measure(case, args):
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
