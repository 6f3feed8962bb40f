"""fla_mm.ops.fla_calls on CPU: the opaque custom ops over FLA's calls, with pure-PyTorch
stand-ins registered in place of FLA's kernels (which need CUDA).

- ``torch.library.opcheck`` passes on ``fla_mm::fla_forward`` and ``fla_mm::fla_backward``;
- the op computes what the stand-in computes under autograd, output and gradients, and
  returns a contiguous tensor of its own in the declared dtype;
- under ``torch.compile`` a module calling it traces as one graph and trains the same;
- each registry entry's shape / dtype input is the one FLA 0.6.0's source gives;
- with the kernel path forced on CPU, every family op reaches its FLA call through
  :func:`fla_calls.call`: eagerly as before, under ``torch.compile`` through the op.
The same on CUDA with FLA's kernels is tests/test_gpu_compile.py.
"""
import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from fla_mm.ops import families
from fla_mm.ops import fla_calls
from fla_mm.ops import reference as R

TEST_CALL = 'test_decay_attn'


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def standin(monkeypatch):
    """Registers ``TEST_CALL`` (the decay-attention reference, output like v in q's dtype);
    returns the list of its calls' names, one per run of the stand-in."""
    runs = []

    def fn(t, scale, flag):
        runs.append(TEST_CALL)
        return R.chunk_decay_attn_ref(*t, scale)
    monkeypatch.setitem(fla_calls.REGISTRY, TEST_CALL, fla_calls.FlaCall(fn, 2, 0))
    return runs


def _inputs(dtype=torch.float64, v_dtype=None, T=5):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, T, 2, 3, generator=g, dtype=dtype) for _ in range(2))
    v = torch.randn(1, T, 2, 4, generator=g, dtype=v_dtype or dtype)
    gate = F.logsigmoid(torch.randn(1, T, 2, 3, generator=g, dtype=dtype))
    return q, k, v, gate


def test_opcheck(standin):
    # all of opcheck's default tests, test_aot_dispatch_dynamic included (small: about a
    # second); the gate takes no gradient: the backward returns zeros there
    q, k, v, g = _inputs()
    tensors = [q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), g]
    torch.library.opcheck(fla_calls.fla_forward, (TEST_CALL, tensors, 0.5, False))
    go = torch.randn(1, 5, 2, 4, dtype=torch.float64)
    torch.library.opcheck(fla_calls.fla_backward,
                          (TEST_CALL, [t.detach() for t in tensors], 0.5, False, go))


@pytest.mark.parametrize('v_dtype', [None, torch.float32])
def test_op_equals_the_call_under_autograd(standin, v_dtype):
    """Output and input gradients equal the stand-in's under autograd, bit for bit (the
    backward recomputes the same function); the output has the declared dtype (q's) and
    shape (v's), and an input that needs no gradient gets None."""
    direct, through = [], []
    for out in (direct, through):
        q, k, v, g = _inputs(v_dtype=v_dtype)
        leaves = [q.requires_grad_(), k.requires_grad_(), v.requires_grad_()]
        if out is direct:
            o = fla_calls.REGISTRY[TEST_CALL].fn((q, k, v, g), 0.5, False)
        else:
            o = fla_calls.fla_forward(TEST_CALL, [q, k, v, g], 0.5, False)
        (o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum().backward()
        out += [o, *(t.grad for t in leaves)]
        assert g.grad is None
    assert through[0].dtype == torch.float64 and through[0].shape == (1, 5, 2, 4)
    assert [t.dtype for t in through[1:]] == [torch.float64, torch.float64, v_dtype
                                              or torch.float64]
    for a, b in zip(through, direct):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_output_is_fresh_contiguous_and_unused_inputs_get_zeros(monkeypatch):
    """A call returning a view of an input, or non-contiguous strides, still gives a
    contiguous tensor of its own (as the fake promises); its gradients own their storage
    too, and an input the call does not read gets a zero gradient from the backward op."""
    monkeypatch.setitem(fla_calls.REGISTRY, 'test_view', fla_calls.FlaCall(
        lambda t, s, f: t[0], 0, 0))
    monkeypatch.setitem(fla_calls.REGISTRY, 'test_strided', fla_calls.FlaCall(
        lambda t, s, f: (t[0].transpose(1, 2) * t[1].transpose(1, 2)).transpose(1, 2), 0, 0))
    x, y, z = (torch.randn(2, 3, 4, 5, dtype=torch.float64) for _ in range(3))
    for name in ('test_view', 'test_strided'):
        o = fla_calls.fla_forward(name, [x, y, z], None, False)
        assert o.is_contiguous() and o.stride() == (60, 20, 5, 1)
        assert o.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
    go = torch.randn_like(x)
    dx, dy, dz = fla_calls.fla_backward('test_view', [x, y, z], None, False, go)
    torch.testing.assert_close(dx, go, rtol=0, atol=0)
    assert len({t.untyped_storage().data_ptr() for t in (dx, dy, dz, go)}) == 4
    assert not dy.any() and not dz.any()


def test_compiled_module_is_one_graph_with_the_same_gradients(standin):
    """A module around the op compiles (aot_eager, fullgraph) with no graph break; its
    output and every gradient equal eager's. Eager runs the call once per step, the
    compiled step twice (the backward recomputes the forward)."""
    class Mix(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(6, 6 * 3 + 8, dtype=torch.float64)

        def forward(self, x):
            q, k, v, g = self.proj(x).split([6, 6, 8, 6], -1)
            B, T, _ = x.shape
            q, k, g = (t.reshape(B, T, 2, 3) for t in (q, k, g))
            o = fla_calls.call(TEST_CALL, (q, k, v.reshape(B, T, 2, 4), F.logsigmoid(g)), 0.5)
            return o.reshape(B, T, 8).tanh()

    torch.manual_seed(0)
    model = Mix()
    x = torch.randn(2, 7, 6, dtype=torch.float64)
    explained = torch._dynamo.explain(model)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), [
        str(r) for r in explained.break_reasons]
    assert 'fla_mm.fla_forward' in explained.graphs[0].code
    runs = []
    for fn in (model, torch.compile(model, backend='aot_eager', fullgraph=True)):
        standin.clear()
        xi = x.clone().requires_grad_()
        o = fn(xi)
        o.square().sum().backward()
        runs.append([o, xi.grad, *(p.grad for p in model.parameters())])
        model.zero_grad(set_to_none=True)
        runs[-1].append(len(standin))
    assert runs[0].pop() == 1 and runs[1].pop() == 2
    for a, b in zip(runs[1], runs[0]):
        torch.testing.assert_close(a, b)


# FLA 0.6.0's signature of each call, and the inputs its output's shape and dtype follow
# (read in fla/ops/...: o = empty_like(v) / zeros_like(v), returned as is or .to(q.dtype))
FLA_OUTPUTS = {
    'chunk_gla': ('q k v g', 'v', 'v'),
    'chunk_simple_gla': ('q k v g', 'v', 'q'),
    'fused_recurrent_simple_gla': ('q k v g', 'v', 'q'),
    'chunk_retention': ('q k v', 'v', 'q'),
    'chunk_linear_attn': ('q k v', 'v', 'q'),
    'chunk_delta_rule': ('q k v beta', 'v', 'q'),
    'chunk_gated_delta_rule': ('q k v g beta', 'v', 'q'),
    'chunk_hgrn': ('x g', 'x', 'x'),
    'chunk_rwkv6': ('r k v w u', 'v', 'v'),
    'chunk_rwkv7': ('r w k v a b', 'v', 'r'),
    'chunk_gsa': ('q k v s g', 'v', 'v'),
    'chunk_abc': ('q k v s', 'v', 'v'),
}
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
          torch.float8_e5m2]


def test_registry_is_the_documented_calls():
    assert set(fla_calls.REGISTRY) == set(FLA_OUTPUTS)


@pytest.mark.parametrize('name', sorted(FLA_OUTPUTS))
def test_fake_output_follows_the_documented_input(name):
    """Inputs of distinct dtypes and last dims: the fake output (and so the real one, which
    is converted to it) takes its shape and dtype from the documented inputs; the backward's
    fake gives one gradient like each input."""
    names, shape_of, dtype_of = FLA_OUTPUTS[name]
    names = names.split()
    with FakeTensorMode():
        tensors = [torch.empty(2, 3, 4, 5 + i, dtype=DTYPES[i]) for i in range(len(names))]
        out = fla_calls.fla_forward(name, tensors, None, False)
        grads = fla_calls.fla_backward(name, tensors, None, False, out)
    assert out.shape == tensors[names.index(shape_of)].shape
    assert out.dtype == tensors[names.index(dtype_of)].dtype
    assert out.is_contiguous()
    assert [(g.shape, g.dtype) for g in grads] == [(t.shape, t.dtype) for t in tensors]


def test_unknown_call_names_the_registered_ones():
    with pytest.raises(KeyError, match='no FLA call .nope.; registered: chunk_abc, '):
        fla_calls.fla_forward('nope', [torch.zeros(1)], None, False)


# --- the family ops through fla_calls, with the kernel path forced on CPU ---------------
B, T, H, D = 1, 6, 2, 4


def _l2(q, k, flag):
    return (families.l2norm(q), families.l2norm(k)) if flag else (q, k)


# stand-ins for FLA's calls: the references that families.py runs off the GPU
STANDINS = {
    'chunk_gla': lambda t, s, f: R.chunk_decay_attn_ref(*t, s),
    'chunk_simple_gla': lambda t, s, f: R.chunk_decay_attn_ref(*t, s),
    'fused_recurrent_simple_gla': lambda t, s, f: R.chunk_decay_attn_ref(*t, s),
    'chunk_retention': lambda t, s, f: R.chunk_decay_attn_ref(
        *t, families.retnet_decay(H).expand(B, T, H), s),
    'chunk_linear_attn': lambda t, s, f: R.chunk_decay_attn_ref(*t, None, s),
    'chunk_delta_rule': lambda t, s, f: R.chunk_delta_rule_ref(*_l2(t[0], t[1], f), t[2], t[3],
                                                               None, s),
    'chunk_gated_delta_rule': lambda t, s, f: R.chunk_delta_rule_ref(*_l2(t[0], t[1], f), t[2],
                                                                     t[4], t[3], s),
    'chunk_hgrn': lambda t, s, f: R.chunk_hgrn_ref(*t),
    'chunk_rwkv6': lambda t, s, f: R.chunk_linear_ref(t[0], t[1], t[2], gk=t[3], scale=s,
                                                      bonus=t[4]),
    'chunk_rwkv7': lambda t, s, f: R.chunk_dplr_ref(t[0], t[2], t[3], t[4], t[5], t[1], s),
    'chunk_gsa': lambda t, s, f: R.chunk_slot_attn_ref(*t, s),
    'chunk_abc': lambda t, s, f: R.chunk_slot_attn_ref(*t[:3], *R.abc_slots(t[3])),
}


def _family_args(family, gen):
    """Leaves (float64: the delta rule's kernel path refuses only fp32) and a function
    leaves -> the op's arguments, in the ranges the mixers give."""
    def r(*shape, s=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * s).requires_grad_()
    q, k, v = r(B, T, H, D), r(B, T, H, D), r(B, T, H, D)
    if family == 'gla':
        return [q, k, v, r(B, T, H, D)], lambda q, k, v, g: (q, k, v, F.logsigmoid(g) / 4)
    if family == 'simple_gla':
        return [q, k, v, r(B, T, H)], lambda q, k, v, g: (q, k, v, F.logsigmoid(g) / 4)
    if family in ('retnet', 'linear_attn'):
        return [q, k, v], lambda q, k, v: (q, k, v)
    if family == 'delta_rule':
        return [q, k, v, r(B, T, H)], lambda q, k, v, b: (q, k, v, b.sigmoid())
    if family == 'gated_delta_rule':
        return [q, k, v, r(B, T, H), r(B, T, H)], lambda q, k, v, a, b: (
            q, k, v, -F.softplus(a) * 0.5, b.sigmoid())
    if family == 'hgrn':
        return [r(B, T, H * D), r(B, T, H * D)], lambda x, g: (x, F.logsigmoid(g + 2))
    if family == 'rwkv6':
        return [q, k, v, r(B, T, H, D, s=0.5), r(H, D, s=0.5)], lambda q, k, v, w, u: (
            q, k, v, -torch.exp(w - 1), u)
    if family == 'rwkv7':
        def rwkv7(q, w, k, v, kk, a):
            kk = F.normalize(kk, dim=-1)
            return q, families.RWKV7_LOG_DECAY_MIN * w.sigmoid(), k * 0.2, v, -kk, kk * a.sigmoid()
        return [q, r(B, T, H, D), k, v, r(B, T, H, D), r(B, T, H, D)], rwkv7
    if family == 'gsa':
        def gsa(q, k, v, f):
            f = F.logsigmoid(f) / 8
            return F.silu(q), F.silu(k), v, 1 - f.exp(), f
        return [q, k, v, r(B, T, H, D)], gsa
    assert family == 'abc'
    return [q, k, v, r(B, T, H, D)], lambda q, k, v, s: (q, k, v, s)


# (family op of fla_mm.ops.families, the FLA call it makes, FLA's chunk backward refused)
CASES = [('abc', 'chunk_abc', False), ('delta_rule', 'chunk_delta_rule', False),
         ('gated_delta_rule', 'chunk_gated_delta_rule', False), ('gla', 'chunk_gla', False),
         ('gsa', 'chunk_gsa', False), ('hgrn', 'chunk_hgrn', False),
         ('linear_attn', 'chunk_linear_attn', False), ('retnet', 'chunk_retention', False),
         ('rwkv6', 'chunk_rwkv6', False), ('rwkv7', 'chunk_rwkv7', False),
         ('simple_gla', 'chunk_simple_gla', False),
         ('simple_gla', 'fused_recurrent_simple_gla', True)]


def test_cases_cover_every_call():
    assert {name for _, name, _ in CASES} == set(fla_calls.REGISTRY) == set(STANDINS)


@pytest.mark.parametrize('family,name,refused', CASES)
def test_family_reaches_its_call_eagerly_and_through_the_op(monkeypatch, family, name,
                                                            refused):
    """On the kernel path (forced, FLA's calls replaced by the references), a family op runs
    its FLA call directly in eager, with the reference path's numbers; compiled (aot_eager,
    fullgraph) it is one graph through fla_mm::fla_forward with eager's output and input
    gradients."""
    monkeypatch.setattr(families, '_use_kernel', lambda x: True)
    monkeypatch.setattr(families, 'triton_bwd_broken', lambda *a: refused)
    runs = []
    for call, entry in fla_calls.REGISTRY.items():
        def run(t, s, f, call=call):
            runs.append(call)
            return STANDINS[call](t, s, f)
        monkeypatch.setitem(fla_calls.REGISTRY, call, entry._replace(fn=run))
    op = getattr(families, family)
    leaves, make = _family_args(family, torch.Generator().manual_seed(0))

    def step(fn):
        xs = [t.detach().requires_grad_() for t in leaves]
        o = fn(*make(*xs))
        (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum().backward()
        return [o, *(x.grad for x in xs)]

    eager = step(op)
    assert runs == [name]
    monkeypatch.setattr(families, '_use_kernel', lambda x: False)
    for a, b in zip(eager, step(op)):       # the reference path: the same function
        torch.testing.assert_close(a, b)
    monkeypatch.setattr(families, '_use_kernel', lambda x: True)
    runs.clear()
    compiled = step(torch.compile(op, backend='aot_eager', fullgraph=True))
    assert runs == [name, name]               # forward, and its recompute in the backward
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b)
