"""torch.compile over the backbones on CPU (the PyTorch reference path of every family).

Dynamo must trace a whole block of either layout as one graph, with no graph break, for
every mixer family (a break splits the block and keeps Inductor from fusing the glue around
the token mixing), and the compiled backbone must compute what the eager one does, forward
and gradients. The same on CUDA, through FLA's and fla_mm's kernels, is
tests/test_gpu_compile.py; the fused kernels' custom ops themselves are checked in
tests/test_fused_bi.py.
"""
import os
import time

import pytest
import torch

import fla_mm  # noqa: F401  (registers)
from fla_mm.backbones import FLAPlain, FLAPyramid
from fla_mm.layers import FAMILIES

PYR = dict(embed_dims=[16, 32, 32, 32], depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 2])
PLAIN = dict(embed_dims=32, depth=1, num_heads=2)
SCANS = [(f, 'bi') for f in sorted(FAMILIES)] + [('gla', 'uni'), ('gla', 'cross')]
# Inductor on a 2-core CPU compiles the tiny pyramid in tens of seconds; aot_eager traces the
# same graphs (Dynamo + AOT autograd, the custom ops' fake and autograd registrations) without
# generating code. FLA_MM_COMPILE_BACKEND=inductor runs the equality test through Inductor.
BACKEND = os.environ.get('FLA_MM_COMPILE_BACKEND', 'aot_eager')


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _one_block(layout, family, scan):
    """A block of a tiny backbone of ``layout`` (width 32, 2 heads) and its grid."""
    if layout == 'pyramid':
        backbone = FLAPyramid(arch=PYR, mixer=family, scan=scan, drop_path_rate=0.0)
        return backbone.stages[1].blocks[0], 32
    backbone = FLAPlain(arch=PLAIN, mixer=family, scan=scan, drop_path_rate=0.0,
                        pretrain_img_size=64)
    return backbone.blocks[0], 32


@pytest.mark.parametrize('layout', ['pyramid', 'plain'])
@pytest.mark.parametrize('family,scan', SCANS)
def test_block_traces_as_one_graph(layout, family, scan):
    block, dim = _one_block(layout, family, scan)
    x = torch.randn(2, 6 * 5, dim, requires_grad=True)
    explained = torch._dynamo.explain(block)(x, (6, 5))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), [
        str(r) for r in explained.break_reasons]


def test_compiled_pyramid_equals_eager():
    """torch.compile of a tiny FLAPyramid (GLA, bi-scan, training mode) in one graph
    (fullgraph=True): the four maps and the gradients of the input and of every parameter
    equal eager's (to float reordering, for Inductor)."""
    torch.manual_seed(0)
    eager = FLAPyramid(arch=PYR, mixer='gla', scan='bi', drop_path_rate=0.0)
    eager.init_weights()
    compiled = FLAPyramid(arch=PYR, mixer='gla', scan='bi', drop_path_rate=0.0)
    compiled.load_state_dict(eager.state_dict())
    runs = []
    t0 = time.perf_counter()
    for model, fn in ((eager, eager), (compiled, torch.compile(compiled, backend=BACKEND,
                                                               fullgraph=True))):
        x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1),
                        requires_grad=True)
        outs = fn(x)
        sum(o.square().mean() for o in outs).backward()
        runs.append((outs, x.grad, [p.grad for p in model.parameters()]))
    print(f'eager + {BACKEND} (cold) forward/backward: {time.perf_counter() - t0:.1f} s')
    (outs_e, dx_e, dp_e), (outs_c, dx_c, dp_c) = runs
    assert [tuple(o.shape) for o in outs_c] == [(2, c, 64 // s, 96 // s)
                                         for c, s in zip(PYR['embed_dims'], (4, 8, 16, 32))]
    tol = dict(rtol=1e-5, atol=1e-6) if BACKEND == 'aot_eager' else dict(rtol=1e-4, atol=1e-5)
    for a, b in zip(outs_c, outs_e):
        torch.testing.assert_close(a, b, **tol)
    torch.testing.assert_close(dx_c, dx_e, **tol)
    names = [n for n, _ in eager.named_parameters()]
    assert all(g is not None for g in dp_e)
    for name, a, b in zip(names, dp_c, dp_e):
        torch.testing.assert_close(a, b, **tol, msg=name)


def test_backbone_compile_option():
    """compile=dict(...) on the backbone: its forward runs through torch.compile (one Dynamo
    frame per backbone, compiled at the first call), with the eager backbone's maps and
    gradients and the same state_dict; a deep copy (an EMA model) compiles its own forward
    on its own parameters; bad arguments and a mode that captures CUDA graphs beside
    cuda_graph=True are refused, naming what is valid."""
    import copy

    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    eager = FLAPlain(arch=PLAIN, mixer='gla', scan='bi', drop_path_rate=0.0,
                     pretrain_img_size=64)
    compiled = FLAPlain(arch=PLAIN, mixer='gla', scan='bi', drop_path_rate=0.0,
                        pretrain_img_size=64, compile=dict(backend=BACKEND, fullgraph=True))
    compiled.load_state_dict(eager.state_dict())
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    assert compiled.compile == dict(backend=BACKEND, fullgraph=True)
    counters.clear()
    runs = []
    for model in (eager, compiled):
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1),
                        requires_grad=True)
        outs = model(x)
        sum(o.square().mean() for o in outs).backward()
        runs.append((outs, x.grad, [p.grad for p in model.parameters()]))
    assert counters['stats']['unique_graphs'] == 1 and list(compiled._compiled) == ['forward']
    tol = dict(rtol=1e-5, atol=1e-6) if BACKEND == 'aot_eager' else dict(rtol=1e-4, atol=1e-5)
    flat = [[*outs, dx, *dp] for outs, dx, dp in runs]
    assert all(t is not None for t in flat[0])
    for a, b in zip(flat[1], flat[0]):
        torch.testing.assert_close(a, b, **tol)
    twin = copy.deepcopy(compiled)
    assert twin._compiled == {} and twin.compile == compiled.compile
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
        x = torch.randn(1, 3, 64, 64)
        y_twin, y_orig = twin(x)[0], compiled(x)[0]
    assert not torch.allclose(y_twin, y_orig)
    assert list(twin._compiled) == ['forward'] and twin._compiled['forward'] is not (
        compiled._compiled['forward'])
    with pytest.raises(ValueError, match='unknown torch.compile argument.*mdoe; valid: backend'):
        FLAPyramid(arch=PYR, compile=dict(mdoe='default'))
    with pytest.raises(TypeError, match='bool or a dict'):
        FLAPyramid(arch=PYR, compile='default')
    with pytest.raises(ValueError, match="'reduce-overhead' captures CUDA graphs itself"):
        FLAPyramid(arch=PYR, cuda_graph=True, compile=dict(mode='reduce-overhead'))
    assert FLAPyramid(arch=PYR, compile=True).compile == {}
    assert FLAPyramid(arch=PYR).compile is None


def test_fast_path_is_eager_on_cpu():
    """cuda_graph=True with compile=True (the GPU configs' fast path) compiles only what the
    CUDA graphs capture: on CPU, in training and evaluation, the backbone runs its eager
    forward, compiles nothing and computes what a backbone without the switch does."""
    torch.manual_seed(0)
    plain = FLAPyramid(arch=PYR, mixer='gla', scan='bi', drop_path_rate=0.0)
    fast = FLAPyramid(arch=PYR, mixer='gla', scan='bi', drop_path_rate=0.0, cuda_graph=True,
                      compile=True)
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    for train in (True, False):
        plain.train(train), fast.train(train)
        for a, b in zip(fast(x), plain(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert fast._compiled == {} and fast._graphs == {}
