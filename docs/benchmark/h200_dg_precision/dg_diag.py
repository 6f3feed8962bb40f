"""Per-tensor errors of the fused bi-scan backward variants at long lengths (bf16)."""
import sys, time, torch, torch.nn.functional as F
sys.path.insert(0, 'tests')
from test_gpu_fused_bi import _run, _reference_run, _rel, NAMES, B, H, D
from fla_mm import ops
from fla_mm.ops import fused_bi

VARIANTS = [('tf32', False), ('tf32', True), ('tf32x3', True)]

def leaves_for(gates, L, exact):
    gen = torch.Generator(device='cuda').manual_seed(L)
    r = (lambda *s: torch.randn(*s, device='cuda', generator=gen))
    shape = (B, L, H, D) if gates.endswith('gla') else (B, L, H)
    leaves = [r(B, L, H, D), r(B, L, H, D), r(B, L, H, D)]
    g = F.logsigmoid(r(*shape) + 3) / 4
    if exact:
        g[:, 640:1280] *= 400
    leaves += [g, F.logsigmoid(r(*shape) + 3) / 4]
    return leaves, r(B, L, H, D)

def errs(out, grads, ref_out, ref_grads):
    return ' '.join(f'{n}={_rel(a, b):.2e}' for a, b, n in zip([out] + grads, [ref_out] + ref_grads, NAMES))

for gates, L, exact in [('separate-gla', 16384, False), ('separate-gla', 16384, True),
                        ('separate-gla', 3136, False), ('separate', 16384, False)]:
    leaves, do = leaves_for(gates, L, exact)
    ref = _reference_run(leaves, gates, torch.bfloat16, do)
    two = _run(lambda q, k, v, gf, gb: ops.bi_decay_attn(q, k, v, gf, gb, kernel='two_call'),
               leaves, gates, torch.bfloat16, do)
    print(f'{gates} L={L} exact={exact} two-call     {errs(*two, *ref)}', flush=True)
    for prec, sf32 in VARIANTS:
        fused_bi.BWD_DG_PRECISION, fused_bi.BWD_STATE_F32 = prec, sf32
        t0 = time.time()
        out = _run(lambda q, k, v, gf, gb: ops.bi_decay_attn(q, k, v, gf, gb, kernel='fused'),
                   leaves, gates, torch.bfloat16, do)
        print(f'{gates} L={L} exact={exact} {prec:6s} sf32={int(sf32)} {errs(*out, *ref)}  ({time.time() - t0:.1f}s)', flush=True)
