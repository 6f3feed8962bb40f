"""RetNet's rotary bi-scan at FLAPyramid-T's stage shapes (1024², B=2, head dim 32), bf16,
forward + backward, each compiled (torch.compile, default mode, whole graph) as the backbone's
fast path compiles it: rotary in the kernels (rotary_base) against the rotated pairs made in
PyTorch around the op (qb / kb, the path before). Prints per shape the GPU kernel time per
call (PyTorch profiler, summed kernel durations) and the kernels launched."""
import torch
from torch.profiler import ProfilerActivity, profile

from fla_mm import ops

B, D = 2, 32
SHAPES = [(65536, 3), (16384, 6), (4096, 12), (1024, 24)]


def in_kernels(q, k, v, g):
    return ops.bi_decay_attn(q, k, v, g, rotary_base=ops.ROTARY_BASE)


def pairs_in_torch(q, k, v, g):
    return ops.bi_decay_attn(ops.rotary(q), ops.rotary(k), v, g, qb=ops.rotary(q, reverse=True),
                             kb=ops.rotary(k, reverse=True))


def step(fn, q, k, v, g, do):
    o = fn(q, k, v, g)
    o.backward(do)


for L, H in SHAPES:
    x = [torch.randn(B, L, H, D, device='cuda', dtype=torch.bfloat16, requires_grad=True)
         for _ in range(3)]
    g = ops.retnet_decay(H, 'cuda').expand(B, L, H)
    do = torch.randn(B, L, H, D, device='cuda', dtype=torch.bfloat16)
    outs = {}
    for name, fn in (('in kernels', in_kernels), ('pairs in torch', pairs_in_torch)):
        cfn = torch.compile(fn, fullgraph=True)
        for _ in range(3):
            step(cfn, *x, g, do)
        for t in x:
            t.grad = None
        step(cfn, *x, g, do)                    # one step's gradients, to compare
        outs[name] = [cfn(*x, g).detach()] + [t.grad.clone() for t in x]
        for t in x:
            t.grad = None
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step(cfn, *x, g, do)
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type.name == 'CUDA']
        ms = sum(e.device_time for e in kernels) / 1e3 / 5
        names = sorted({e.name for e in kernels})
        print(f'L={L:6d} H={H:2d} {name:15s} kernels {ms:7.3f} ms/call  launches '
              f'{len(kernels) // 5}: {", ".join(n[:40] for n in names)}', flush=True)
    a, b = outs['in kernels'], outs['pairs in torch']
    errs = [((p.float() - r.float()).abs().max() / r.float().abs().max()).item()
            for p, r in zip(a, b)]
    print(f'L={L:6d} H={H:2d} in kernels vs pairs (o, dq, dk, dv): '
          + ' '.join(f'{e:.1e}' for e in errs), flush=True)

# fp32, eager: the two ways agree to float rounding (IEEE dots in the kernels)
L, H = 4096, 12
x = [torch.randn(B, L, H, D, device='cuda', requires_grad=True) for _ in range(3)]
g = ops.retnet_decay(H, 'cuda').expand(B, L, H)
do = torch.randn(B, L, H, D, device='cuda')
outs = {}
for name, fn in (('in kernels', in_kernels), ('pairs in torch', pairs_in_torch)):
    for t in x:
        t.grad = None
    step(fn, *x, g, do)
    outs[name] = [fn(*x, g).detach()] + [t.grad.clone() for t in x]
errs = [((p - r).abs().max() / r.abs().max()).item()
        for p, r in zip(outs['in kernels'], outs['pairs in torch'])]
print(f'L={L:6d} H={H:2d} fp32 in kernels vs pairs (o, dq, dk, dv): '
      + ' '.join(f'{e:.1e}' for e in errs), flush=True)
