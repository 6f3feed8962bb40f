"""GPU only: torch.compile through the fused bi-scan's custom ops (fla_mm::fused_bi_fwd /
fused_bi_bwd) and FLA's kernels.

- A block of each fused family (GLA, simple_gla, RetNet; bi-scan) traces as one graph with
  no break, and the graph calls the fused op (so the CUDA path, not the reference, was traced).
- A block of every other family / scan traces as one graph with no break too, through
  fla_mm::fla_forward (fla_mm.ops.fla_calls: FLA's own ops are ``torch.compiler.disable``d,
  which broke the graph once per call), and trains as eager does (aot_eager, bf16).
- A compiled small FLAPyramid (GLA, bi-scan) matches eager in bf16 autocast, forward and
  backward.
- The backbone of configs/upernet_gla_ade20k.py compiles (default Inductor) from empty
  Inductor and Triton caches in a fresh process at 256x256 and 512x512, batch 2, where the
  autograd.Function version failed in Inductor's compile workers on the fused GLA backward.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import ROOT, gpu_report

import fla_mm  # noqa: F401  (registers)
from fla_mm import ops
from fla_mm.backbones import FLAPyramid
from fla_mm.layers import FAMILIES, Block

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or not ops.fla_available(),
                                reason='needs a CUDA GPU and an importable fla + triton')

FUSED = {'gla': {}, 'simple_gla': {}, 'retnet': {}}    # RetNet with rotary (in the kernels)
DIM, HEADS, HW = 64, 2, (16, 16)
SMALL = dict(embed_dims=[32, 64, 64, 64], depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 2])


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _explain_block(family, scan, **options):
    block = Block(DIM, HEADS, mixer=dict(family=family, scan=scan, **options)).cuda()
    x = torch.randn(2, HW[0] * HW[1], DIM, device='cuda', requires_grad=True)
    with torch.autocast('cuda', dtype=torch.bfloat16):
        return block, torch._dynamo.explain(block)(x, HW)


@pytest.mark.parametrize('family', sorted(FUSED))
def test_fused_block_traces_as_one_graph(family):
    block, explained = _explain_block(family, 'bi', **FUSED[family])
    assert block.attn.fused_bi()
    gpu_report(f'\ncompile: {family:16s} bi    graphs={explained.graph_count} '
               f'breaks={explained.graph_break_count} (fused)')
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), [
        str(r) for r in explained.break_reasons]
    assert 'fla_mm.fused_bi_fwd' in explained.graphs[0].code


SOFTMAX = ('bitnet', 'transformer')      # SDPA: no FLA call
OTHERS = [(f, 'bi') for f in sorted(FAMILIES) if f not in FUSED]
OTHERS += [(f, s) for f in sorted(FUSED) for s in ('uni', 'cross')]


def _calls_fla(family):
    """The family's block runs an FLA call here (gated_delta_net trains through the
    reference where FLA refuses its chunk backward, see ops.triton_bwd_broken)."""
    return family not in SOFTMAX and not (family == 'gated_delta_net'
                                          and ops.triton_bwd_broken())


@pytest.mark.parametrize('family,scan', OTHERS)
def test_other_block_traces_as_one_graph(family, scan):
    _, explained = _explain_block(family, scan)
    code = explained.graphs[0].code if explained.graphs else ''
    gpu_report(f'\ncompile: {family:16s} {scan:5s} graphs={explained.graph_count} '
               f'breaks={explained.graph_break_count} '
               f'({"fla_forward" if "fla_mm.fla_forward" in code else "no FLA op"})')
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), [
        str(r) for r in explained.break_reasons]
    assert ('fla_mm.fla_forward' in code) == _calls_fla(family)


@pytest.mark.parametrize('family', [f for f in sorted(FAMILIES)
                                    if f not in FUSED and f not in SOFTMAX])
def test_block_through_fla_forward_trains_as_eager(family):
    """Compiled (aot_eager: the same PyTorch ops as eager around the op, fullgraph) and eager
    bf16-autocast steps of a bi-scan block: output and every gradient within 1e-2 (max
    |a - b| / max |b|): the same FLA kernels, the backward through the recomputed forward."""
    if not _calls_fla(family):
        pytest.skip(f'{family} trains through the reference here')
    torch.manual_seed(0)
    block = Block(DIM, HEADS, mixer=dict(family=family, scan='bi')).cuda()
    x = torch.randn(2, HW[0] * HW[1], DIM, device='cuda')
    runs = []
    for fn in (block, torch.compile(block, backend='aot_eager', fullgraph=True)):
        xi = x.clone().requires_grad_()
        with torch.autocast('cuda', dtype=torch.bfloat16):
            o = fn(xi, HW)
        o.float().square().mean().backward()
        runs.append([o, xi.grad, *(p.grad for p in block.parameters())])
        block.zero_grad(set_to_none=True)
    errs = [_rel(a, b) for a, b in zip(runs[1], runs[0]) if b is not None]
    gpu_report(f'\ncompile: {family:16s} bi    fla_forward vs eager, worst {max(errs):.2e}')
    assert max(errs) <= 1e-2, errs


def _rel(a, b):
    a, b = a.float(), b.float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-3)).item()


def _step(model, fn, x, dtype):
    """The four maps and the gradients of the input and of every parameter of one
    forward/backward (loss: sum of the maps' means), under ``dtype`` autocast (None: fp32)."""
    xi = x.clone().requires_grad_()
    with torch.autocast('cuda', dtype=dtype or torch.float32, enabled=dtype is not None):
        outs = fn(xi)
        loss = sum(o.float().mean() for o in outs)
    loss.backward()
    grads = {f'out{i}': o for i, o in enumerate(outs)}
    grads['dx'] = xi.grad
    grads.update({n: p.grad for n, p in model.named_parameters()})
    model.zero_grad(set_to_none=True)
    return grads


def test_compiled_pyramid_matches_eager_in_bf16():
    """Compiled and eager bf16-autocast steps of a small FLAPyramid (GLA, bi-scan, fused op),
    each against the eager fp32 step: the compiled step's error (max |a - b| / max |b|, per
    map and per gradient) stays within twice the eager bf16 step's plus 1e-2."""
    torch.manual_seed(0)
    model = FLAPyramid(arch=SMALL, mixer='gla', scan='bi', drop_path_rate=0.0).cuda()
    model.init_weights()
    model.eval()     # BatchNorm of the stem with fixed statistics: three steps, one function
    x = torch.randn(2, 3, 256, 256, device='cuda')
    ref = _step(model, model, x, None)
    eager = _step(model, model, x, torch.bfloat16)
    compiled = _step(model, torch.compile(model), x, torch.bfloat16)
    e_eager = {n: _rel(eager[n], ref[n]) for n in ref}
    e_compiled = {n: _rel(compiled[n], ref[n]) for n in ref}
    worst = max(ref, key=lambda n: e_compiled[n] - 2 * e_eager[n])
    gpu_report(f'\ncompile: pyramid gla bi bf16 vs fp32: maps eager '
               f'{max(e_eager[f"out{i}"] for i in range(4)):.2e} compiled '
               f'{max(e_compiled[f"out{i}"] for i in range(4)):.2e}; dx eager '
               f'{e_eager["dx"]:.2e} compiled {e_compiled["dx"]:.2e}; worst {worst}: eager '
               f'{e_eager[worst]:.2e} compiled {e_compiled[worst]:.2e}')
    assert all(e_compiled[n] <= 2 * e_eager[n] + 1e-2 for n in ref), (e_eager, e_compiled)


COLD = textwrap.dedent('''
    import sys, time, torch
    from mmengine.config import Config
    from mmengine.registry import MODELS
    import fla_mm  # noqa: F401
    from torch._dynamo.utils import counters
    size = int(sys.argv[1])
    cfg = Config.fromfile('configs/upernet_gla_ade20k.py')
    backbone = MODELS.build(cfg.model.backbone).cuda().train()
    compiled = torch.compile(backbone)
    x = torch.randn(2, 3, size, size, device='cuda', requires_grad=True)
    t0 = time.perf_counter()
    for step in range(2):
        with torch.autocast('cuda', dtype=torch.bfloat16):
            outs = compiled(x)
            loss = sum(o.float().mean() for o in outs)
        loss.backward()
        torch.cuda.synchronize()
        if step == 0:
            first = time.perf_counter() - t0
    assert all(torch.isfinite(o).all() for o in outs) and torch.isfinite(x.grad).all()
    print('COLD', size, f'first step {first:.1f} s', 'graphs',
          counters['stats']['unique_graphs'], 'breaks', sum(counters['graph_break'].values()))
''')


@pytest.mark.parametrize('size', [256, 512])
def test_config_backbone_compiles_from_a_cold_cache(size, tmp_path):
    # (the caller's PYTHONPATH kept behind ROOT: an environment whose packages it names)
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')]))
    env = dict(os.environ, PYTHONPATH=path, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / 'inductor'),
               TRITON_CACHE_DIR=str(tmp_path / 'triton'))
    res = subprocess.run([sys.executable, '-c', COLD, str(size)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-4000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith('COLD')]
    assert line, res.stdout
    gpu_report(f'\ncompile: cold cache, upernet_gla_ade20k backbone, B=2, {line[0]}')
    assert '_bi_gla' not in res.stderr
    assert line[0].endswith('breaks 0'), line[0]
