"""A/B of the fused bi-scan's chunked kernels at FLAPyramid-T's stage shapes (B=2, d=32,
bf16, forward + backward through launch.run_forward / run_backward, one CUDA graph per step,
replayed): old (HEAD: per-direction programs, pairs summed after), v1 (one program per chunk
sums both directions, unrolled), rolled (the same, a rolled loop over directions), with
bwd_warps 4 and 8."""
import importlib
import sys
import time

import torch

sys.path.insert(0, '.gpu/ab')
from fla_mm import ops  # noqa: E402

B, D = 2, 32
SHAPES = {1024: [(65536, 3), (16384, 6), (4096, 12), (1024, 24)],
          512: [(16384, 3), (4096, 6), (1024, 12), (256, 24)]}
MODS = {n: importlib.import_module(f'{n}.launch') for n in ('old', 'v1', 'rolled')}
VARIANTS = [(n, w) for n in ('old', 'v1', 'rolled') for w in (4, 8)]
sizes = [int(s) for s in sys.argv[1:]] or [1024, 512]


def inputs(family, L, H):
    gen = torch.Generator(device='cuda').manual_seed(L + H)
    r = (lambda *s: torch.randn(*s, device='cuda', generator=gen))
    q, k, v, do = [r(B, L, H, D).bfloat16() for _ in range(4)]
    if family == 'retnet-rot':
        g = ops.retnet_decay(H, 'cuda').expand(B, L, H)
        g2 = g.unsqueeze(0).expand(2, *g.shape)
        rot = ops.rotary_table(L, D, ops.ROTARY_BASE, 'cuda')
        need_dg = False
    else:
        g2 = torch.nn.functional.logsigmoid(r(2, B, L, H) + 3) / 16
        rot, need_dg = None, True
    return q, k, v, g2, do, rot, need_dg


for size in sizes:
    for family in ('retnet-rot', 'simple_gla'):
        for L, H in SHAPES[size]:
            x = inputs(family, L, H)
            res, outs = {}, {}
            for name, warps in VARIANTS:
                mod = MODS[name]
                cfg = importlib.import_module(f'{name}.config').FusedBiConfig(
                    form='chunked', bwd_warps=warps)
                q, k, v, g2, do, rot, need_dg = x

                def step():
                    o = mod.run_forward(q, k, v, g2, D ** -0.5, cfg, rot)
                    return [o] + mod.run_backward(q, k, v, g2, do, D ** -0.5, cfg, need_dg, rot)
                t0 = time.perf_counter()
                out = step()
                torch.cuda.synchronize()
                first = time.perf_counter() - t0
                outs[(name, warps)] = [t.float() for t in out]
                for _ in range(3):
                    step()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    step()
                times = []
                for _ in range(5):
                    graph.replay()
                for _ in range(7):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    for _ in range(20):
                        graph.replay()
                    b.record()
                    torch.cuda.synchronize()
                    times.append(a.elapsed_time(b) / 20)
                res[(name, warps)] = sorted(times)[3]
                print(f'{size} {family:10s} L={L:6d} H={H:2d} {name:6s} w{warps} '
                      f'{res[(name, warps)]:7.4f} ms (first {first:5.1f} s)', flush=True)
            ref = outs[('old', 4)]
            for key, o in outs.items():
                errs = [((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                        for a, b in zip(o, ref)]
                print(f'   {key[0]:6s} w{key[1]} vs old w4: ' + ' '.join(f'{e:.1e}' for e in errs))
            best = min(res, key=res.get)
            print(f'== {size} {family} L={L} H={H}: old {res[("old", 4)]:.4f} best {best} '
                  f'{res[best]:.4f} ({res[("old", 4)] / res[best]:.2f}x)', flush=True)
