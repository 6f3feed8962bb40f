"""Time fused bi-scan variants (module switches) at B=8, H=6, d=64, bf16, fwd+bwd; CUDA events."""
import json, sys, time, torch, torch.nn.functional as F
from fla_mm import ops
from fla_mm.ops import fused_bi

B, H, D = 8, 6, 64
def case(family, L, stacked):
    mk = lambda: torch.randn(B, L, H, D, device='cuda', dtype=torch.bfloat16, requires_grad=True)
    q, k, v = mk(), mk(), mk()
    if family == 'gla':
        g = (F.logsigmoid(torch.randn(B, L, 2, H, D, device='cuda') + 3) / 16).requires_grad_()
    elif family == 'simple_gla':
        g = (F.logsigmoid(torch.randn(B, L, 2, H, device='cuda') + 3) / 16).requires_grad_()
    else:
        g = None
    do = torch.randn(B, L, H, D, device='cuda', dtype=torch.bfloat16)
    import os
    def fn():
        if os.environ.get('FWD_ONLY'):
            with torch.no_grad():
                return ops.bi_decay_attn(q, k, v, g, stacked=True) if g is not None else \
                    ops.bi_decay_attn(q, k, v, ops.retnet_decay(H, q.device).expand(B, L, H))
        if g is None:
            o = ops.bi_decay_attn(q, k, v, ops.retnet_decay(H, q.device).expand(B, L, H))
        elif stacked:
            o = ops.bi_decay_attn(q, k, v, g, stacked=True)
        else:
            o = ops.bi_decay_attn(q, k, v, g[:, :, 0], g[:, :, 1])
        o.backward(do)
    return fn, [q, k, v] + ([g] if g is not None else [])

def sdpa(L):
    q, k, v = [torch.randn(B, H, L, D, device='cuda', dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    do = torch.randn(B, H, L, D, device='cuda', dtype=torch.bfloat16)
    return (lambda: F.scaled_dot_product_attention(q, k, v).backward(do)), [q, k, v]

def timeit(fn, leaves, iters=20):
    t0 = time.time(); fn(); torch.cuda.synchronize(); first = time.time() - t0
    for _ in range(3):
        fn()
    for x in leaves: x.grad = None
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    ts = []
    for _ in range(iters):
        for x in leaves: x.grad = None
        a, b = torch.cuda.Event(True), torch.cuda.Event(True)
        a.record(); fn(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2], first, (torch.cuda.max_memory_allocated() - base) / 2**20

runs = json.loads(sys.argv[1])
for L in (16384, 4096, 1024):
    fn, leaves = sdpa(L)
    t, first, mem = timeit(fn, leaves)
    print(f'sdpa L={L} median {t:.3f} ms  peak+ {mem:.0f} MiB', flush=True)
    del fn, leaves
for name, family, stacked, switches in runs:
    saved = {n: getattr(fused_bi, n) for n in switches}
    for n, val in switches.items():
        setattr(fused_bi, n, val)
    for L in (16384, 4096, 1024):
        fn, leaves = case(family, L, stacked)
        t, first, mem = timeit(fn, leaves)
        print(f'{name:14s} {family:10s} L={L:5d} median {t:.3f} ms  first {first:.1f} s  peak+ {mem:.0f} MiB', flush=True)
        del fn, leaves
        torch.cuda.empty_cache()
    for n, val in saved.items():
        setattr(fused_bi, n, val)
