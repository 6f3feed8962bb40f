"""Chunk-state pass micro-benchmark: sequential vs parallel kernels at FLAPyramid-T's chunked
shapes, then the op (GLA chunked, fwd+bwd) with the best configs. Prints only measurements."""
import itertools, json, sys
import torch, triton
import torch.nn.functional as F
from fla_mm import ops
from fla_mm.ops.fused_bi.chunked import _chunk_scan_kernel as seq, _chunk_scan_parallel_kernel as par
dev = 'cuda'

def ref(S, G, NT, ch, kinds):
    decay = G.exp()[..., None] if ch else G.exp()[..., None, None]
    want = S.clone()
    for kind in range(kinds):
        carry = torch.zeros_like(S[0, :, 0])
        order = range(NT) if kind == 0 else range(NT - 1, -1, -1)
        for i in order:
            want[kind, :, i] = carry
            carry = carry * (decay[:, i] if ch else decay[:, i]) + S[kind, :, i]
    return want

SHAPES = [(12, 256, 32, 32, 2), (24, 64, 32, 32, 2), (12, 1024, 32, 32, 2), (24, 256, 32, 32, 2),
          (12, 1024, 32, 32, 1), (12, 256, 64, 64, 2)]
CONFIGS = [('sequential', 128, 8, 4), ('sequential', 64, 8, 4), ('sequential', 128, 16, 4), ('sequential', 32, 8, 4)] + \
    [('parallel', b, g, w) for b, g in [(128, 8), (64, 16), (32, 32), (32, 64), (16, 64), (64, 32), (16, 128), (32, 128), (64, 64)] for w in (4, 2)]
total = {c: 0. for c in CONFIGS}
for ROWS, NT, BK, BV, kinds in SHAPES:
    S = torch.randn(kinds, ROWS, NT, BK, BV, device=dev); G = -torch.rand(ROWS, NT, BK, device=dev) * 0.5
    want = ref(S, G, NT, True, kinds)
    for c in CONFIGS:
        name, BLOCK, GROUP, warps = c
        k = seq if name == 'sequential' else par
        got = S.clone()
        f = lambda: k[(ROWS, BK * BV // BLOCK, kinds)](got, G, NT, ROWS, SIZE=BK * BV, BLOCK=BLOCK, GROUP=GROUP, CHANNELS=BK, BV=BV, num_warps=warps)
        try:
            f(); torch.cuda.synchronize()
        except Exception as e:
            print(f'SCAN {name} BLOCK={BLOCK} GROUP={GROUP} warps={warps} FAILED {type(e).__name__}: {str(e)[:200]}', flush=True); total[c] = float('inf'); continue
        err = ((got - want).abs().max() / want.abs().max()).item()
        ms = triton.testing.do_bench(f, warmup=5, rep=40)
        total[c] += ms
        print(f'SCAN rows={ROWS} NT={NT} K={BK} V={BV} kinds={kinds} {name:10s} BLOCK={BLOCK:3d} GROUP={GROUP:3d} warps={warps} err={err:.1e} us={ms*1e3:8.1f}', flush=True)
rank = sorted(total, key=total.get)
for c in rank:
    print(f'SCAN-TOTAL {c} us={total[c]*1e3:.1f}', flush=True)
best_par = [c for c in rank if c[0] == 'parallel'][:2]
cands = [dict()] + [dict(state_pass='parallel', scan_block=b, scan_group=g) for _, b, g, _ in best_par]
json.dump(cands, open('/tmp/scan_cands.json', 'w'))
for (B, H, K), T in itertools.product([(2, 3, 32), (2, 6, 32)], (4096, 16384, 65536)):
    q, k = [torch.randn(B, T, H, K, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(2)]
    v = torch.randn(B, T, H, K, device=dev, dtype=torch.bfloat16, requires_grad=True)
    g = (F.logsigmoid(torch.randn(B, T, H, K, device=dev) + 3) / 16).requires_grad_()
    do = torch.randn(B, T, H, K, device=dev, dtype=torch.bfloat16)
    for cfg in cands + [dict(form='sweep')]:
        cfg = dict(dict(form='chunked'), **cfg)
        def step():
            o = ops.bi_decay_attn(q, k, v, g, g, kernel='fused', config=cfg)
            o.backward(do)
        step(); torch.cuda.synchronize()
        g_ = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            step()
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g_):
            step()
        ms = triton.testing.do_bench(g_.replay, warmup=5, rep=50)
        print(f'OP B={B} H={H} K={K} T={T} {json.dumps(cfg)} fwd+bwd graphed ms={ms:.3f}', flush=True)
