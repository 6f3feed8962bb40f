"""The fused bidirectional kernel (fla_mm/ops/fused_bi/) against the two-call reference and
the token-by-token recurrence (fused_bi/naive.py), which itself is checked against the
two-call reference here.

On CPU the Triton kernels run under TRITON_INTERPRET=1 (in a subprocess: the interpreter is
chosen when triton is imported), so CI checks the kernel's math, forward and every gradient.
The same comparison on a GPU, at the issue's lengths, is in tests/test_gpu_fused_bi.py.
"""
import inspect
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from fla_mm import ops
from fla_mm.layers.mixer import TokenMixer
from fla_mm.ops.fused_bi import FusedBiConfig, naive_bi_decay_attn
from fla_mm.ops.fused_bi.launch import _chunked, _gate_grad_of_tokens, _segments
from fla_mm.ops.reference import chunk_decay_attn_ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def two_call(q, k, v, gf, gb, scale):
    cat = lambda a, b: torch.cat([a, b.flip(1)], 0)  # noqa: E731
    o = chunk_decay_attn_ref(cat(q, q), cat(k, k), cat(v, v), cat(gf, gb), scale)
    a, b = o.chunk(2, 0)
    return a + b.flip(1)


# Both interpreted scripts start with this: the two-call reference on the CPU.
PRELUDE = r'''
import torch, torch.nn.functional as F
import fla_mm.ops.fused_bi.launch as launch
from fla_mm.ops.fused_bi import FusedBiConfig, fused_bi_decay_attn, naive_bi_decay_attn
from fla_mm.ops.reference import chunk_decay_attn_ref

''' + inspect.getsource(two_call)

INTERPRETED = PRELUDE + r'''

def errors(o, r, a, b):
    """Relative errors of the output and of every gradient asked for."""
    errs = [(o - r).abs().max() / r.abs().max()]
    # (at T=1 the gate gradient is exactly 0 and ours is q.dq - k.dk ~ 1e-7: floor 1)
    errs += [(p.grad - q.grad).abs().max() / q.grad.abs().max().clamp_min(1.0)
             for p, q in zip(a, b) if q.requires_grad]
    return errs

torch.manual_seed(0)
worst = worst_naive = 0.0
CASES = [(T, gates, 1) for T in (1, 17, 64, 100)
         for gates in ('shared', 'separate', 'constant', 'shared-gla', 'separate-gla')]
CASES += [(T, gates, 3) for T in (130, 300)                                    # segments
          for gates in ('shared', 'separate', 'shared-gla', 'separate-gla')]
# GLA chunks that decay past exp(-GLA_SAFE) in a channel take the exact 16-token steps
CASES += [(150, 'shared-strong-gla', 1), (150, 'separate-strong-gla', 1),
          (200, 'separate-strong-gla', 2)]
# frozen gates (no gradient asked for them): the kernels skip the gate-gradient pieces
CASES += [(100, 'shared-frozen-gla', 1), (130, 'shared-frozen-gla', 3)]
# GLA's forward in 3 segments, its backward in one (gla_fwd_segments from long_tokens = 128)
CASES += [(300, 'separate-gla', 'fwd3'), (300, 'separate-strong-gla', 'fwd3')]
for T, gates, segments in CASES:
        fwd3 = segments == 'fwd3'
        config = (FusedBiConfig(gla_fwd_segments=3, long_tokens=128) if fwd3 else
                  FusedBiConfig(segments=segments))
        B, H, K, V = 2, 2, 16, 32
        x = [torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)]
        shape = (B, T, H, K) if gates.endswith('gla') else (B, T, H)
        gf = F.logsigmoid(torch.randn(*shape) + 2) / 2
        gb = F.logsigmoid(torch.randn(*shape) + 2) / 2 if gates.startswith('separate') else gf
        if 'strong' in gates:     # the second chunk decays by ~exp(-800): the exact steps
            gf, gb = gf.clone(), gb.clone()
            gf[:, 64:128] *= 100
            gb[:, 64:128] *= 100
        if gates == 'constant':   # RetNet: one decay per head, read through stride 0
            gf = gb = torch.log1p(-2.0 ** (-5.0 - torch.arange(H))).expand(B, T, H)
        sep, shared = gates.startswith('separate'), gates.startswith('shared')
        leaves = x + ([gf, gb] if sep else [gf] if shared else [])
        a, b, c = ([t.clone().requires_grad_(i < 3 or 'frozen' not in gates)
                    for i, t in enumerate(leaves)] for _ in range(3))
        g_a = (a[3], a[4]) if sep else (a[3], None) if shared else (gf, None)
        g_b = (b[3], b[4]) if sep else (b[3], b[3]) if shared else (gf, gf)
        g_c = (c[3], c[4]) if sep else (c[3], None) if shared else (gf, None)
        if sep and T in (100, 300):     # both directions' gates as one [B, T, 2, H(, K)] view
            o = fused_bi_decay_attn(*a[:3], torch.stack(g_a, 2), scale=0.3, stacked=True,
                                    config=config)
        else:
            o = fused_bi_decay_attn(*a[:3], *g_a, scale=0.3, config=config)
        r = two_call(*b[:3], *g_b, 0.3)
        n = naive_bi_decay_attn(*c[:3], *g_c, scale=0.3)
        do = torch.randn_like(r)
        o.backward(do)
        r.backward(do)
        n.backward(do)
        errs = errors(o, r, a, b)
        print(T, gates, segments, ' '.join('%.1e' % e for e in errs))
        worst = max(worst, max(e.item() for e in errs))
        errs = errors(o, n, a, c)       # against the token-by-token definition
        print('  naive', ' '.join('%.1e' % e for e in errs))
        worst_naive = max(worst_naive, max(e.item() for e in errs))
print('WORST_NAIVE', worst_naive)
print('WORST', worst)
'''


def test_fused_kernel_matches_two_call_in_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET='1', PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, '-c', INTERPRETED], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    worst = {line.split()[0]: float(line.split()[1]) for line in res.stdout.splitlines()
             if line.startswith('WORST')}
    assert worst.keys() == {'WORST', 'WORST_NAIVE'}, res.stdout
    assert max(worst.values()) < 1e-4, res.stdout


# The chunk-parallel form (fused_bi/chunked.py, FusedBiConfig(form='chunked')) against the
# token loop and against the sweep form: output and every gradient, fp32 with IEEE dots.
# Each run notes which kernels ran: the chunked ones, no sweep. Gates ending in '-qkb': the
# backward scan has its own q and k (qb, kb: the form='auto' call, chunked at every shape, as
# the sweep cannot read them), against the token loop only; ending in '-rot': rotary_base,
# which the scalar-decay kernels apply themselves (no rotated pair made: PAIRS 0), against the
# token loop on the rotated pairs (ops.rotary).
CHUNKED = PRELUDE + r"""
import sys
import fla_mm.ops.fused_bi.op as op
from fla_mm.ops import rotary
launched = []
pairs = []
made_pairs = op.rotated_pairs
op.rotated_pairs = lambda *a: pairs.append(1) or made_pairs(*a)

class Counted:      # a kernel whose launches are noted in ``launched`` by name
    def __init__(self, name):
        self.name, self.kernel = name, getattr(launch, name)

    def __getitem__(self, grid):
        launched.append(self.name)
        return self.kernel[grid]

for name in ('_chunk_state_kernel', '_chunk_scan_kernel', '_chunk_fwd_kernel',
             '_chunk_bwd_kernel', '_chunk_gla_fwd_kernel', '_chunk_gla_bwd_kernel',
             '_chunk_gate_grad_kernel',
             '_bi_fwd_kernel', '_bi_bwd_kernel', '_bi_gla_fwd_kernel', '_bi_gla_bwd_kernel'):
    setattr(launch, name, Counted(name))
gates = sys.argv[1]
per_direction, rotated = gates.endswith('-qkb'), gates.endswith('-rot')
gates = gates.removesuffix('-qkb').removesuffix('-rot')
torch.manual_seed(0)
worst = {'naive': 0.0, 'sweep': 0.0}
# (1,100 tokens: 18 chunks, more than a load group of the pass over chunk states, 16)
for T, B, H in [(T, B, H) for T in (1, 49, 64, 100, 130)
                for B, H in ((1, 1), (3, 1) if gates.startswith('separate') else (1, 3))] + (
        [(1100, 1, 1)] if gates == 'shared' else []):
    K, V = 16, 32
    x = [torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)]
    qkb = [torch.randn(B, T, H, K), torch.randn(B, T, H, K)] if per_direction else []
    shape = (B, T, H, K) if gates.endswith('gla') else (B, T, H)
    gf = F.logsigmoid(torch.randn(*shape) + 2) / 2
    gb = F.logsigmoid(torch.randn(*shape) + 2) / 2 if gates.startswith('separate') else None
    if 'strong' in gates:     # the second chunk decays by ~exp(-800): GLA's exact steps
        gf[:, 64:128] *= 100
        gb[:, 64:128] *= 100
    if gates == 'constant':   # RetNet: one decay per head, read through stride 0
        gf = torch.log1p(-2.0 ** (-5.0 - torch.arange(H))).expand(B, T, H)
    do = torch.randn(B, T, H, V)
    runs = {}
    refs = ('naive',) if per_direction or rotated else ('naive', 'sweep')
    for form in ('chunked',) + refs:
        leaves = [t.clone().requires_grad_() for t in x]
        leaves += [t.clone().requires_grad_(gates != 'constant') for t in (gf, gb)
                   if t is not None]
        own = dict(zip(('qb', 'kb'), [t.clone().requires_grad_() for t in qkb]))
        launched.clear()
        config = dict(form='auto' if per_direction or rotated else form)
        if form == 'naive' and rotated:
            q, k = leaves[:2]
            o = naive_bi_decay_attn(rotary(q), rotary(k), leaves[2], *leaves[3:], scale=0.3,
                                    qb=rotary(q, reverse=True), kb=rotary(k, reverse=True))
        elif form == 'naive':
            o = naive_bi_decay_attn(*leaves[:3], *leaves[3:], scale=0.3, **own)
        elif rotated:
            o = fused_bi_decay_attn(*leaves[:3], *leaves[3:], scale=0.3, config=config,
                                    rotary_base=10000.0)
        elif per_direction:
            o = fused_bi_decay_attn(*leaves[:3], *leaves[3:], scale=0.3, config=config, **own)
        elif gates.startswith('separate') and T == 100:  # one [B, T, 2, H(, K)] view
            o = fused_bi_decay_attn(*leaves[:3], torch.stack(leaves[3:], 2), scale=0.3,
                                    stacked=True, config=config)
        else:
            o = fused_bi_decay_attn(*leaves[:3], *leaves[3:], scale=0.3, config=config)
        forward = sorted(set(launched))
        launched.clear()
        o.backward(do)
        runs[form] = [o] + [t.grad for t in leaves + list(own.values()) if t.requires_grad]
        if form == 'chunked':
            print('LAUNCHED', T, ','.join(forward), ','.join(sorted(set(launched))))
    for ref in refs:
        # (at T=1 the gate gradient is exactly 0 and ours is q.dq - k.dk ~ 1e-7: floor 1)
        errs = [((a - b).abs().max() / b.abs().max().clamp_min(1.0 if i > 3 else 0)).item()
                for i, (a, b) in enumerate(zip(runs['chunked'], runs[ref]))]
        print(T, B, H, gates, ref, ' '.join('%.1e' % e for e in errs))
        worst[ref] = max(worst[ref], max(errs))
print('WORST', *(worst[ref] for ref in refs))
print('PAIRS', len(pairs))
"""


@pytest.mark.parametrize('gates', ['shared', 'separate', 'constant', 'shared-gla',
                                   'separate-strong-gla', 'constant-qkb',
                                   'separate-strong-gla-qkb', 'constant-rot', 'separate-rot',
                                   'shared-gla-rot'])
def test_chunked_form_matches_naive_and_sweep_in_triton_interpreter(gates):
    """form='chunked': lengths of one chunk, a partial chunk, and 2-3 chunks with a partial
    last one (the pass over chunk states, both ways), B*H 1 and 3, shared, separate (also as
    one stacked view) and RetNet's constant gates (no gate gradient); per key channel (GLA)
    also with a chunk that takes the exact steps: the output and every gradient within 1e-5
    of the token loop and of the sweep form. '-qkb': each direction its own q and k (RetNet's
    rotary), which form='auto' runs chunked at every length, against the token loop (q, k,
    qb, kb and their gradients). '-rot': rotary_base, which the scalar-decay kernels apply to
    their one q, k at each direction's positions (no rotated pair made) and GLA's kernels
    take as the rotated pair, against the token loop on ``ops.rotary``'s pairs."""
    env = dict(os.environ, TRITON_INTERPRET='1', PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, '-c', CHUNKED, gates], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    launched = {int(line.split()[1]): [names.split(',') for names in line.split()[2:]]
                for line in lines if line.startswith('LAUNCHED')}
    gla = gates.removesuffix('-qkb').removesuffix('-rot').endswith('gla')
    states = ['_chunk_scan_kernel', '_chunk_state_kernel']
    fwd = ['_chunk_gla_fwd_kernel' if gla else '_chunk_fwd_kernel']
    # per key channel with a gate gradient, its pieces are summed by one more kernel
    bwd = (['_chunk_gate_grad_kernel', '_chunk_gla_bwd_kernel'] if gla else
           ['_chunk_bwd_kernel'])
    one = [fwd, bwd]                                    # one chunk: no states to pass on
    several = [sorted(fwd + states), sorted(bwd + states)]
    assert launched == {1: one, 49: one, 64: one, 100: several, 130: several,
                        **({1100: several} if gates == 'shared' else {})}, res.stdout
    worst = [float(x) for line in lines if line.startswith('WORST') for x in line.split()[1:]]
    assert len(worst) == (1 if gates.endswith(('-qkb', '-rot')) else 2), res.stdout
    assert max(worst) < 1e-5, res.stdout
    # one rotated pair per call (5 lengths x 2 batch shapes) where GLA's kernels need it
    pairs = 10 if gla and gates.endswith('-rot') else 0
    assert f'PAIRS {pairs}' in lines, res.stdout


@pytest.mark.parametrize('T', [1, 63, 64, 130, 1100])
@pytest.mark.parametrize('channels', [(), (4,)])
def test_gate_gradient_of_tokens_is_a_suffix_and_a_prefix_sum(T, channels):
    """launch._gate_grad_of_tokens (the segmented sweep's last step of the gate gradient)
    against its definition in float64: direction 0 sums every later token, direction 1 every
    earlier."""
    d = torch.randn(2, 2, T, 3, *channels)
    want = torch.stack([d[0].double().flip(1).cumsum(1).flip(1), d[1].double().cumsum(1)])
    got = _gate_grad_of_tokens(d)
    assert got.shape == d.shape and got.dtype == d.dtype
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


# The chunked form's pass over chunk states (chunked._chunk_scan_kernel) against a loop over
# chunks, both kinds (sweep order and reversed), for chunk counts around its load group, with
# one decay per row (scalar) and one per key channel of a [BK, BV] state.
SCAN_PASS = r"""
import torch
from fla_mm.ops.fused_bi.chunked import _chunk_scan_kernel
from fla_mm.ops.fused_bi.config import DEFAULT_CONFIG
torch.manual_seed(0)
ROWS, BK, BV = 3, 16, 16
# the default tiles, and a group of 8 chunks over whole [BK, BV] states
for GROUP, BLOCK, channels in [(DEFAULT_CONFIG.scan_group, DEFAULT_CONFIG.scan_block, 0),
                               (DEFAULT_CONFIG.scan_group, DEFAULT_CONFIG.scan_block, BK),
                               (8, BK * BV, 0), (8, BK * BV, BK)]:
    for NT in (1, 7, GROUP, GROUP + 1, 2 * GROUP + 1):
        S = torch.randn(2, ROWS, NT, BK, BV)
        G = -torch.rand(ROWS, NT, *([BK] if channels else []))
        decay = (G if channels else G[..., None]).exp()[..., None]      # [ROWS, NT, BK or 1, 1]
        want = S.clone()
        for kind, order in enumerate((range(NT), range(NT - 1, -1, -1))):
            for r in range(ROWS):
                carry = torch.zeros(BK, BV)
                for i in order:
                    want[kind, r, i] = carry
                    carry = carry * decay[r, i] + S[kind, r, i]
        got = S.clone()
        _chunk_scan_kernel[(ROWS, BK * BV // BLOCK, 2)](
            got, G, NT, ROWS, SIZE=BK * BV, BLOCK=BLOCK, GROUP=GROUP, CHANNELS=channels, BV=BV)
        err = (got - want).abs().max() / want.abs().max().clamp_min(1)
        print('ERR', GROUP, BLOCK, channels, NT, err.item())
"""


def test_chunk_state_pass_in_triton_interpreter():
    """The states entering each chunk, in both orders, for 1 chunk to more than two load
    groups (a partial last group included), scalar and per-key-channel decays, with the
    default tiles and with another group size and block."""
    env = dict(os.environ, TRITON_INTERPRET='1', PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, '-c', SCAN_PASS], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    errs = [float(line.split()[5]) for line in res.stdout.splitlines() if line.startswith('ERR')]
    assert len(errs) == 20 and max(errs) < 1e-6, res.stdout


# Hopper's TF32 dots on CPU: the interpreter multiplies fp32 exactly, so round the operands of
# every dot that asks for 'tf32' to 10 mantissa bits, as the tensor cores do, and ask for
# 'tf32' as the kernel does for 16-bit inputs (the interpreter cannot run bf16 itself).
TF32_EMULATED = PRELUDE + r'''
import numpy as np
import triton.runtime.interpreter as interp

def tf32(x):
    if x.dtype != np.float32:
        return x
    i = x.view(np.int32).astype(np.int64)
    return ((i + 0x0FFF + ((i >> 13) & 1)) & ~0x1FFF).astype(np.int32).view(np.float32)

create_dot = interp.InterpreterBuilder.create_dot
def tf32_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
    if 'TF32' in str(input_precision).upper() and 'X3' not in str(input_precision).upper():
        a = interp.TensorHandle(tf32(a.data), a.dtype.scalar)
        b = interp.TensorHandle(tf32(b.data), b.dtype.scalar)
    return create_dot(self, a, b, d, input_precision, max_num_imprecise_acc)
interp.InterpreterBuilder.create_dot = tf32_dot
meta = launch._meta
launch._meta = lambda q, v, per_channel: dict(meta(q, v, per_channel), PRECISION='tf32')

B, H, D = 2, 3, 64
for T, form in [(T, form) for T in (1, 49) for form in ('sweep', 'chunked')]:
    gen = torch.Generator().manual_seed(T)
    r = lambda *s: torch.randn(*s, generator=gen)
    leaves = [r(B, T, H, D) for _ in range(3)] + [F.logsigmoid(r(B, T, H, D) + 3) / 4
                                                  for _ in range(2)]
    do = r(B, T, H, D)
    a = [t.clone().requires_grad_() for t in leaves]
    b = [t.clone().requires_grad_() for t in leaves]
    fused_bi_decay_attn(*a, scale=D ** -0.5, config=dict(form=form)).backward(do)
    two_call(*b, D ** -0.5).backward(do)
    # the metric of tests/test_gpu_fused_bi.py: max |a - b| / max(max |b|, 1e-2)
    errs = [((x.grad - y.grad).abs().max() / y.grad.abs().max().clamp_min(1e-2)).item()
            for x, y in zip(a, b)]
    print(T, form, ' '.join('%.1e' % e for e in errs))
    print('WORST_DG', T, form, max(errs[3:]))
'''


def test_gla_gate_gradient_under_emulated_tf32_dots():
    """Seen on an H200 (bf16, T=1): the GLA kernel's gate gradient was off by 0.34 / 0.48 of
    the test's scale, while its true value is 0 (q.dq and k.dk cancel, and TF32 rounding of
    k exp(-C) in dq left ~5e-4 of each). The diagonal now goes outside the factorised dots;
    under emulated TF32 the gate gradient must be as good as the others, in the sweep and
    in the chunked form."""
    env = dict(os.environ, TRITON_INTERPRET='1', PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, '-c', TF32_EMULATED], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    worst = {(int(line.split()[1]), line.split()[2]): float(line.split()[3])
             for line in res.stdout.splitlines() if line.startswith('WORST_DG')}
    assert worst.keys() == {(T, form) for T in (1, 49) for form in ('sweep', 'chunked')}
    assert max(worst.values()) < 2e-3, res.stdout


# The custom ops (fused_bi/op.py) under torch.library.opcheck: schema (no input mutated or
# aliased), fake implementation (shapes, dtypes, strides of the real outputs), autograd
# registration, and AOT dispatch with dynamic shapes; then the compiled entry (Dynamo + AOT
# autograd, one graph) against eager bit for bit and against naive.py.
OPCHECKED = PRELUDE + r"""
import torch._dynamo
from fla_mm.ops.fused_bi import op
from fla_mm.ops.rotary import rotary_table, rotated_pairs

torch.manual_seed(0)
B, H, K, V = 1, 2, 16, 16
def inputs(T, per_channel, gates, per_direction=False):
    qk = (2, B, T, H, K) if per_direction else (B, T, H, K)   # each direction its own q, k
    q, k, v = torch.randn(qk), torch.randn(qk), torch.randn(B, T, H, V)
    shape = (H, K) if per_channel else (H,)
    if gates == 'stacked':      # the layout fused_bi_decay_attn hands over for stacked=True
        g = (F.logsigmoid(torch.randn(B, T, 2, *shape) + 2) / 2).movedim(2, 0)
    else:                       # one tensor for both directions, read through stride 0
        g = (F.logsigmoid(torch.randn(B, T, *shape) + 2) / 2).expand(2, B, T, *shape)
    return q, k, v, g
for T, per_channel, gates, segments, need_dg, form, own in [
        (70, False, 'stacked', 2, True, 'sweep', False),
        (70, False, 'shared', None, False, 'sweep', False),
        (70, True, 'stacked', None, True, 'sweep', False),
        (70, True, 'shared', 2, True, 'sweep', False),
        (20, True, 'stacked', None, False, 'sweep', False),
        (70, False, 'stacked', None, True, 'chunked', False),
        (70, False, 'shared', None, False, 'chunked', False),
        (70, True, 'stacked', None, True, 'chunked', False),
        (70, False, 'shared', None, False, 'auto', True),
        (20, True, 'stacked', None, True, 'auto', True),
        (70, False, 'shared', None, False, 'auto', 'rot'),     # rotary in the kernels
        (70, False, 'stacked', None, True, 'chunked', 'rot')]:
    q, k, v, g = inputs(T, per_channel, gates, own is True)
    cfg = FusedBiConfig(segments=segments, form=form).to_op_args()
    cfg += (rotary_table(T, K),) if own == 'rot' else ()
    torch.library.opcheck(op.fused_bi_fwd, (q, k, v, g, 0.3, *cfg))
    torch.library.opcheck(op.fused_bi_bwd, (q, k, v, g, torch.randn(B, T, H, V), 0.3, *cfg[:2],
                                           need_dg, *cfg[2:]))
    # each gradient has its input's shape (autograd would sum a [2, ...] pair silently)
    grads = op.fused_bi_bwd(q, k, v, g, torch.randn(B, T, H, V), 0.3, *cfg[:2], need_dg,
                            *cfg[2:])
    print('SHAPES', [t.shape for t in grads] == [t.shape for t in (q, k, v, g)[:len(grads)]])
    print('OPCHECK', T, per_channel, gates, segments, need_dg)

def loss(q, k, v, gf, gb, config, own, fn=fused_bi_decay_attn):
    # glue on both sides of the op, as in a mixer: Dynamo must trace through it in one graph;
    # ``own``: the backward scan has its own q, k (made from q, k, as rotary would); 'rot':
    # rotary_base (in the kernels; naive.py on ops.rotary's pairs)
    q = q * 2
    qkb = dict(qb=q.cos(), kb=k.flip(1)) if own is True else {}
    if own == 'rot' and fn is naive_bi_decay_attn:
        q, k, qb, kb = rotated_pairs(q, k, None, None, 10000.0)
        qkb = dict(qb=qb, kb=kb)
    elif own == 'rot':
        qkb = dict(rotary_base=10000.0)
    kw = {} if fn is naive_bi_decay_attn else dict(config=config)
    return fn(q, k, v, -F.softplus(gf), gb, scale=0.3, **qkb, **kw).square().sum()
for per_channel, separate, config, own in [(True, True, dict(segments=2), False),
                                           (False, False, FusedBiConfig(), False),
                                           (False, True, dict(form='chunked'), False),
                                           (True, True, dict(form='chunked'), False),
                                           (True, True, None, True),
                                           (False, True, None, 'rot')]:
    T = 70
    q, k, v, _ = inputs(T, per_channel, 'shared')
    gshape = (B, T, H, K) if per_channel else (B, T, H)
    gf, gb = torch.randn(gshape), (-F.softplus(torch.randn(gshape)) if separate else None)
    leaves = [t.requires_grad_() for t in (q, k, v, gf) + ((gb,) if separate else ())]
    explained = torch._dynamo.explain(loss)(q, k, v, gf, gb, config, own)
    print('GRAPHS', explained.graph_count, explained.graph_break_count)
    compiled = torch.compile(loss, backend='aot_eager', fullgraph=True)
    got = torch.autograd.grad(compiled(q, k, v, gf, gb, config, own), leaves)
    want = torch.autograd.grad(loss(q, k, v, gf, gb, config, own), leaves)
    print('EQUAL', all(torch.equal(a, b) for a, b in zip(got, want)))
    ref = torch.autograd.grad(loss(q, k, v, gf, gb, config, own, naive_bi_decay_attn), leaves)
    print('NAIVE', max(((a - b).abs().max() / b.abs().max()).item()
                       for a, b in zip(got, ref)))
"""


def test_custom_ops_pass_opcheck_and_compile_in_one_graph():
    """The fused bi-scan reaches torch.compile as the custom ops fla_mm::fused_bi_fwd /
    fused_bi_bwd: opcheck passes for both (scalar and per-channel gates, stacked and stride-0
    gates, one and two segments, with and without the gate gradient), and the entry with glue
    on both sides traces as one graph whose compiled gradients equal eager's exactly and the
    token loop's within float error; the same for the chunked form, for per-direction
    q, k ([2, B, T, H, K], which the default config runs chunked), and for rotary in the
    kernels (the rotary table an optional tensor argument of both ops)."""
    env = dict(os.environ, TRITON_INTERPRET='1', PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, '-c', OPCHECKED], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert sum(line.startswith('OPCHECK') for line in lines) == 12, res.stdout
    assert [line for line in lines if line.startswith('SHAPES')] == ['SHAPES True'] * 12, \
        res.stdout
    assert [line for line in lines if line.startswith(('GRAPHS', 'EQUAL'))] == [
        'GRAPHS 1 0', 'EQUAL True'] * 6, res.stdout
    assert max(float(line.split()[1]) for line in lines if line.startswith('NAIVE')) < 1e-4


def test_config_crosses_the_op_boundary_as_ints():
    """FusedBiConfig reaches the custom ops as (segments or None, [the other fields]) and comes
    back equal; the schema holds no object and mutates nothing."""
    from fla_mm.ops.fused_bi import op  # noqa: F401  (registers the ops)
    for config in (FusedBiConfig(), FusedBiConfig(segments=3, long_tokens=128, bwd_warps=8),
                   FusedBiConfig(form='chunked'), FusedBiConfig(form='sweep'),
                   FusedBiConfig(chunked_max_heads=6, chunked_min_tokens=1024)):
        segments, counts = config.to_op_args()
        assert segments is config.segments and all(type(c) is int for c in counts)
        assert FusedBiConfig.from_op_args(segments, counts) == config
    for name in ('fused_bi_fwd', 'fused_bi_bwd'):
        schema = getattr(torch.ops.fla_mm, name).default._schema
        assert not any(a.alias_info for a in schema.arguments), schema
        assert 'SymInt? segments, SymInt[] counts' in str(schema), schema


@pytest.mark.parametrize('family,options', [
    ('simple_gla', {}), ('simple_gla', dict(direction_gates=True)),
    ('retnet', dict(rotary=False)), ('retnet', {}), ('simple_gla', dict(feature_map='relu')),
    ('gla', {}), ('gla', dict(direction_gates=True))])
def test_mixer_fused_path_is_the_two_call_function(family, options):
    """bi_kernel='fused' feeds q, k, v and the per-direction gates to ops.bi_decay_attn in
    raster order; on CPU that op is the two-call reference, so any plumbing error (gate
    slices, heads) shows up as a difference to the scanned two-call mixer (an O(1) one: the
    tolerance only absorbs the output RMSNorm amplifying float reordering on tiny heads)."""
    torch.manual_seed(0)
    fused = TokenMixer(32, 2, family=family, scan='bi', bi_kernel='fused', **options)
    two = TokenMixer(32, 2, family=family, scan='bi', bi_kernel='two_call', **options)
    two.load_state_dict(fused.state_dict())
    x = torch.randn(2, 35, 32)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = fused(xa, (5, 7)), two(xb, (5, 7))
    torch.testing.assert_close(ya, yb, rtol=1e-4, atol=1e-4)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-4)
    for (n, p), q in zip(fused.named_parameters(), two.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4, msg=n)


def test_unknown_bi_kernel_lists_the_valid_ones():
    with pytest.raises(ValueError, match='valid: fused, two_call'):
        TokenMixer(32, 2, family='simple_gla', scan='bi', bi_kernel='fast')


def test_default_fuses_the_decay_families():
    """The default bi_kernel ('fused') takes the fused path for simple_gla, RetNet and GLA,
    RetNet with its rotary embeddings too (each direction's own q, k) unless its bi_config
    forces the sweep; short conv, other scans and 'two_call' never do. 'auto', the old
    default, still builds the fused mixer, with a FutureWarning."""
    def fused_bi(family, scan='bi', **kw):
        return TokenMixer(32, 2, family=family, scan=scan, **kw).fused_bi()
    fused = {f: fused_bi(f, **o)
             for f, o in (('simple_gla', {}), ('retnet', dict(rotary=False)), ('gla', {}))}
    assert fused == dict(simple_gla=True, retnet=True, gla=True)
    with pytest.warns(FutureWarning, match="'auto' is read as 'fused'"):
        assert fused_bi('gla', bi_kernel='auto')
    assert not fused_bi('gla', use_short_conv=True)
    assert fused_bi('retnet')          # rotary default: per-direction q, k
    assert fused_bi('retnet', bi_config=dict(form='chunked'))
    assert not fused_bi('retnet', bi_config=dict(form='sweep'))
    assert not fused_bi('retnet', bi_config=dict(segments=2))
    assert fused_bi('retnet', rotary=False, bi_config=dict(form='sweep'))
    assert not fused_bi('simple_gla', scan='cross')
    assert not fused_bi('simple_gla', bi_kernel='two_call')


def test_sweeps_are_cut_into_segments_from_4096_tokens():
    """By default (scalar decay) one segment per sweep below long_tokens and long_segments
    from there; GLA's backward one at every length, its forward gla_fwd_segments from
    long_tokens (the counts measured fastest); ``segments`` forces a count; no segment is
    ever empty."""
    default = FusedBiConfig()
    assert (default.segments, default.long_tokens, default.long_segments,
            default.gla_fwd_segments) == (None, 4096, 8, 8)
    assert [_segments(T, 64) for T in (1, 1024, 4095, 4096, 16384)] == [
        (1, 1), (1, 16), (1, 64), (8, 8), (8, 32)]
    assert [_segments(T, 64, per_channel=True, backward=True)
            for T in (1, 4096, 16384)] == [(1, 1), (1, 64), (1, 256)]
    assert [_segments(T, 64, True, backward) for T, backward in
            ((1024, False), (16384, False), (16384, True))] == [(1, 16), (8, 32), (1, 256)]
    six = FusedBiConfig(segments=6)
    assert [_segments(T, 64, config=six) for T in (100, 1024, 16384)] == [
        (2, 1), (6, 3), (6, 43)]
    short = FusedBiConfig(long_tokens=128, long_segments=3, gla_fwd_segments=2)
    assert [_segments(300, 64, per_channel, backward, short) for per_channel, backward in
            ((False, False), (False, True), (True, False), (True, True))] == [
        (3, 2), (3, 2), (2, 3), (1, 5)]


def test_auto_form_runs_chunked_where_the_sweep_has_few_programs():
    """form='auto' (the default) runs a pass in the chunked form, for both decay kinds, at up
    to chunked_max_heads (batch x heads) and from chunked_min_tokens tokens, as every stage of
    FLAPyramid-T at B=2 and B=8 has from 1024 tokens up to 96 sequences, and the sweep
    elsewhere: many sequences, short ones, or a forced segment count; 'sweep' and 'chunked'
    are what they say at every shape."""
    def runs_chunked(config, B, T, H, K=32):
        return _chunked(FusedBiConfig.coerce(config), torch.empty(B, T, H, K))
    default = FusedBiConfig()
    assert (default.form, default.chunked_max_heads, default.chunked_min_tokens) == (
        'auto', 96, 1024)
    # FLAPyramid-T at B=2: 512² stages 0-2 and 1024² stages 0-3 (3, 6, 12, 24 heads); at B=8
    # 512² stages 0-2 and 1024² stages 0-2
    for B in (2, 8):
        for T, H in ((16384, 3), (4096, 6), (1024, 12), (65536, 3), (16384, 6), (4096, 12)):
            assert runs_chunked(None, B, T, H), (B, T, H)
    assert runs_chunked(None, 2, 1024, 24)
    assert not runs_chunked(None, 2, 256, 24)       # 512², stage 3: 4 chunks a sequence
    assert not runs_chunked(None, 2, 1023, 3)       # short
    assert not runs_chunked(None, 8, 1024, 24)      # 192 sequences
    assert not runs_chunked(dict(segments=2), 2, 65536, 3)
    assert runs_chunked(dict(chunked_max_heads=192), 8, 1024, 24)
    for B, T, H in ((2, 65536, 3), (8, 64, 6), (1, 1, 1)):
        assert runs_chunked(dict(form='chunked'), B, T, H)
        assert not runs_chunked(dict(form='sweep'), B, T, H)


def test_per_direction_q_k_run_chunked_and_refuse_a_forced_sweep():
    """q, k [2, B, T, H, K] (each direction its own, qb / kb) run the chunked form at every
    shape, the sweep's too (its programs read both directions' q, k); a config that forces
    the sweep is an error that says so."""
    q = torch.empty(2, 8, 256, 24, 32)
    assert not _chunked(FusedBiConfig(), q[0])
    assert _chunked(FusedBiConfig(), q) and _chunked(FusedBiConfig(form='chunked'), q)
    for forced in (dict(form='sweep'), dict(segments=2)):
        with pytest.raises(ValueError, match='chunked form only.*forces the sweep'):
            _chunked(FusedBiConfig(**forced), q)


def test_rotary_in_the_kernels_runs_chunked_where_the_kernels_can_rotate():
    """A rotary table handed to the op makes q, k per direction (the chunked form at every
    shape, a forced sweep an error); the kernels take it with a scalar decay, one q, k and a
    head dim they can halve, [2, T, K / 2] fp32; anything else is an error that says what it
    needs, and fused_bi_decay_attn makes the rotated pair instead (GLA, odd head dims)."""
    from fla_mm.ops import rotary
    from fla_mm.ops.fused_bi.launch import check_rotary, rotary_supported
    from fla_mm.ops.rotary import rotary_table
    q, g, rot = torch.empty(2, 256, 24, 32), torch.empty(2, 2, 256, 24), rotary_table(256, 32)
    assert _chunked(FusedBiConfig(), q, rot) and not _chunked(FusedBiConfig(), q)
    with pytest.raises(ValueError, match='chunked form only.*forces the sweep'):
        _chunked(FusedBiConfig(form='sweep'), q, rot)
    check_rotary(rot, q, g)
    assert [rotary_supported(torch.empty(1, 1, 1, K), False) for K in (16, 24, 64, 128, 256)] \
        == [True, False, True, True, False]
    assert not rotary_supported(q, per_channel=True)
    for bad_q, bad_g, bad_rot, match in [
            (q, torch.empty(2, 2, 256, 24, 32), rot, 'scalar decay'),
            (torch.empty(2, 256, 24, 24), g, rotary_table(256, 24), 'K in 16, 32, 64, 128'),
            (q, g, rotary_table(256, 64), r'\[2, T, K / 2\] float32'),
            (q, g, rotary_table(255, 32), r'\[2, T, K / 2\] float32'),
            (q, g, rot.double(), r'\[2, T, K / 2\] float32')]:
        with pytest.raises(ValueError, match=match):
            check_rotary(bad_rot, bad_q, bad_g)
    with pytest.raises(ValueError, match='either rotary_base or'):
        ops.bi_decay_attn(q, q, q, g[0], qb=q, rotary_base=10000.0)
    with torch.autocast('cpu', dtype=torch.bfloat16):      # the table stays fp32 under AMP
        assert rotary_table(8, 32).dtype == torch.float32
    # reversed positions: the backward scan's own, without a flip
    x = torch.randn(2, 9, 3, 16)
    torch.testing.assert_close(rotary(x, reverse=True), rotary(x.flip(1)).flip(1),
                               rtol=0, atol=0)


def test_config_is_frozen_and_checked():
    """A config is a value: frozen, built from a dict whose unknown keys are an error naming
    the valid ones, and refusing counts a launch cannot use."""
    config = FusedBiConfig.from_dict({'segments': 3, 'bwd_warps': 8})
    assert config == FusedBiConfig(segments=3, bwd_warps=8) and config.fwd_warps == 4
    with pytest.raises(AttributeError):
        config.segments = 4
    with pytest.raises(ValueError, match='unknown key.*SEGMENTS; valid: segments, long_tokens'):
        FusedBiConfig.from_dict({'SEGMENTS': 3})
    for bad in (dict(segments=0), dict(long_segments=-1), dict(fwd_warps=3),
                dict(bwd_stages=1.5), dict(gla_fwd_segments=True), dict(form='tiled'),
                dict(form=1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            FusedBiConfig(**bad)
    assert FusedBiConfig.coerce(None) == FusedBiConfig()
    assert FusedBiConfig.coerce({'segments': 2}) == FusedBiConfig(segments=2)
    assert FusedBiConfig.coerce(config) is config
    with pytest.raises(TypeError):
        FusedBiConfig.coerce(3)
    with pytest.raises(ValueError, match='unknown key'):     # checked on the CPU path too
        from fla_mm import ops
        x = torch.randn(1, 4, 1, 16)
        ops.bi_decay_attn(x, x, x, torch.zeros(1, 4, 1), config={'nope': 1})


def _gates(gates, B, T, H, K, dtype):
    """(gf, gb, stacked) as the fused op takes them: shared, separate, stacked as one
    [B, T, 2, H(, K)] tensor, RetNet's constant decay (stride 0), or strong (a stretch of
    tokens decaying by ~exp(-300) per chunk)."""
    shape = (B, T, H, K) if 'gla' in gates else (B, T, H)
    gf = F.logsigmoid(torch.randn(*shape, dtype=dtype) + 2) / 2
    gb = F.logsigmoid(torch.randn(*shape, dtype=dtype) + 2) / 2
    if 'strong' in gates:
        gf[:, 5:12] *= 100
        gb[:, 5:12] *= 100
    if gates == 'constant':
        gf = gb = torch.log1p(-2.0 ** (-5.0 - torch.arange(H, dtype=dtype))).expand(B, T, H)
    if gates.startswith('shared'):
        return gf.requires_grad_(), None, False
    if gates.startswith('stacked'):
        return torch.stack([gf, gb], 2).requires_grad_(), None, True
    return gf.requires_grad_(gates != 'constant'), gb.requires_grad_(gates != 'constant'), False


@pytest.mark.parametrize('T', [1, 17, 40])
@pytest.mark.parametrize('gates', ['shared', 'separate', 'constant', 'stacked', 'shared-gla',
                                   'separate-gla', 'stacked-gla', 'separate-strong-gla'])
def test_naive_recurrence_is_the_two_call_function(gates, T):
    """naive.py's token loop, both directions, against the chunked two-call reference in
    fp64 (chunk 16: T=17 and 40 cross chunk boundaries): output and every gradient."""
    B, H, K, V = 2, 2, 4, 3
    q, k, v = (torch.randn(B, T, H, d, dtype=torch.float64, requires_grad=True)
               for d in (K, K, V))
    gf, gb, stacked = _gates(gates, B, T, H, K, torch.float64)
    leaves = [t for t in (q, k, v, gf, gb) if t is not None and t.requires_grad]
    o = naive_bi_decay_attn(q, k, v, gf, gb, scale=0.7, stacked=stacked)
    f, b = (gf[:, :, 0], gf[:, :, 1]) if stacked else (gf, gf if gb is None else gb)
    r = two_call(q, k, v, f, b, 0.7)
    assert o.dtype == torch.float64 and o.shape == (B, T, H, V)
    torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-12)
    do = torch.randn_like(r)
    for got, want in zip(torch.autograd.grad(o, leaves, do), torch.autograd.grad(r, leaves, do)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_mixer_hands_its_bi_config_to_the_op(monkeypatch):
    """``bi_config`` (a FusedBiConfig or a dict of its fields) is checked when the mixer is
    built and reaches ops.bi_decay_attn on every call of the fused path."""
    from fla_mm import ops
    from fla_mm.ops.fused_bi import FusedBiConfig
    with pytest.raises(ValueError, match='unknown key.*segs.*valid: segments'):
        TokenMixer(32, 2, family='gla', scan='bi', bi_config=dict(segs=2))
    seen, real = [], ops.bi_decay_attn
    monkeypatch.setattr(ops, 'bi_decay_attn',
                        lambda *a, **kw: seen.append(kw.get('config')) or real(*a, **kw))
    for family, opts in (('gla', dict(direction_gates=True)), ('simple_gla', {}),
                         ('retnet', dict(rotary=False))):
        m = TokenMixer(32, 2, family=family, scan='bi', bi_config=dict(segments=3), **opts)
        m(torch.randn(1, 12, 32), (3, 4))
    assert seen == [FusedBiConfig(segments=3)] * 3
