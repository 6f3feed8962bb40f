"""Chunked CPU references vs token-by-token recurrences (FLA's naive.py where it has one)."""
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

from fla_mm import ops
from fla_mm.ops import reference as R

LENGTHS = [1, 5, 16, 37, 70]


def _fla_naive(relpath):
    """Load fla/ops/<relpath> by file, so that the test needs neither Triton nor a GPU."""
    spec = importlib.util.find_spec('fla')
    if spec is None or not spec.submodule_search_locations:
        pytest.skip('fla is not installed')
    path = os.path.join(list(spec.submodule_search_locations)[0], 'ops', relpath)
    if not os.path.exists(path):
        pytest.skip(f'{path} not found')
    mod_spec = importlib.util.spec_from_file_location(f'_naive_{relpath.replace("/", "_")}', path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def _tol(dtype):
    return dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-9, rtol=1e-9)


def _fla_tol():
    return dict(atol=2e-5, rtol=2e-5)   # FLA's naive refs compute in fp32


def _rand(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def bhtd(*xs):
    return [x.transpose(1, 2) for x in xs]


@pytest.mark.parametrize('T', LENGTHS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('gate', ['key', 'head', None])
def test_decay_attn_vs_recurrence(T, dtype, gate):
    torch.manual_seed(T)
    B, H, K, V = 2, 3, 8, 6
    q, k, v = _rand(B, T, H, K, dtype=dtype), _rand(B, T, H, K, dtype=dtype), _rand(B, T, H, V,
                                                                                  dtype=dtype)
    g = None
    if gate == 'key':
        g = F.logsigmoid(_rand(B, T, H, K, dtype=dtype)) * 2
    elif gate == 'head':
        g = F.logsigmoid(_rand(B, T, H, dtype=dtype)) * 2
    o = R.chunk_decay_attn_ref(q, k, v, g)
    assert o.dtype == dtype
    torch.testing.assert_close(o, R.naive_recurrent_decay_attn(q, k, v, g), **_tol(dtype))


def test_gla_vs_fla_naive():
    naive = _fla_naive('gla/naive.py')
    torch.manual_seed(0)
    B, T, H, K, V = 2, 37, 2, 8, 8
    q, k, v = _rand(B, T, H, K), _rand(B, T, H, K), _rand(B, T, H, V)
    g = F.logsigmoid(_rand(B, T, H, K))
    ref = naive.naive_recurrent_gla(q, k, v, g)[0]
    torch.testing.assert_close(R.chunk_decay_attn_ref(q, k, v, g), ref, **_fla_tol())


@pytest.mark.parametrize('T', LENGTHS)
@pytest.mark.parametrize('gated', [False, True])
def test_delta_rule_vs_fla_naive(T, gated):
    torch.manual_seed(T)
    B, H, K, V = 2, 3, 8, 6
    q, v = _rand(B, T, H, K, dtype=torch.float64), _rand(B, T, H, V, dtype=torch.float64)
    k = F.normalize(_rand(B, T, H, K, dtype=torch.float64), dim=-1)
    beta = torch.rand(B, T, H, dtype=torch.float64)
    if gated:
        g = F.logsigmoid(_rand(B, T, H, dtype=torch.float64))
        ref = _fla_naive('gated_delta_rule/naive.py').naive_recurrent_gated_delta_rule(
            q, k, v, beta, g)[0]
    else:
        g = None
        ref = _fla_naive('delta_rule/naive.py').delta_rule_recurrence(
            *bhtd(q, k, v), beta.transpose(1, 2))[0].transpose(1, 2)
    o = R.chunk_delta_rule_ref(q, k, v, beta, g)
    torch.testing.assert_close(o, ref.to(o.dtype), **_fla_tol())
    o32 = R.chunk_delta_rule_ref(q.float(), k.float(), v.float(), beta.float(),
                                 None if g is None else g.float(), chunk_size=16)
    torch.testing.assert_close(o32, o.float(), **_tol(torch.float32))


@pytest.mark.parametrize('T', LENGTHS)
def test_delta_rule_op_l2norm(T):
    """The op's in-kernel l2norm path equals normalising first."""
    torch.manual_seed(T)
    B, H, K = 1, 2, 8
    q, k, v = _rand(B, T, H, K), _rand(B, T, H, K), _rand(B, T, H, K)
    beta, g = torch.rand(B, T, H), F.logsigmoid(_rand(B, T, H))
    ref = R.chunk_delta_rule_ref(ops.l2norm(q), ops.l2norm(k), v, beta, g)
    torch.testing.assert_close(ops.gated_delta_rule(q, k, v, g, beta), ref)


@pytest.mark.parametrize('T', LENGTHS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_rwkv6_vs_recurrence(T, dtype):
    torch.manual_seed(T)
    B, H, K, V = 2, 2, 8, 6
    r, k, v = _rand(B, T, H, K, dtype=dtype), _rand(B, T, H, K, dtype=dtype), _rand(B, T, H, V,
                                                                                  dtype=dtype)
    w, u = -torch.exp(_rand(B, T, H, K, dtype=dtype)), _rand(H, K, dtype=dtype)
    o = ops.rwkv6(r, k, v, w, u)
    torch.testing.assert_close(o, R.naive_recurrent_rwkv6(r, k, v, w, u).to(dtype), **_tol(dtype))
    if T == 37:
        naive = _fla_naive('rwkv6/recurrent_naive.py')
        ref = naive.naive_recurrent_rwkv6(*bhtd(r, k, v, w), u, scale=1.0)[0].transpose(1, 2)
        torch.testing.assert_close(o, ref.to(dtype), **_fla_tol())


def _rwkv7_inputs(B, T, H, K, V, dtype):
    r, k, v = _rand(B, T, H, K, dtype=dtype), _rand(B, T, H, K, dtype=dtype), _rand(B, T, H, V,
                                                                                  dtype=dtype)
    kk = F.normalize(_rand(B, T, H, K, dtype=dtype), dim=-1)
    a = torch.rand(B, T, H, K, dtype=dtype)
    w = ops.families.RWKV7_LOG_DECAY_MIN * torch.rand(B, T, H, K, dtype=dtype)
    return r, w, k, v, -kk, kk * a


@pytest.mark.parametrize('T', LENGTHS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_rwkv7_vs_recurrence(T, dtype):
    torch.manual_seed(T)
    r, w, k, v, a, b = _rwkv7_inputs(2, T, 2, 8, 6, dtype)
    o = ops.rwkv7(r, w, k, v, a, b)
    ref = R.naive_recurrent_dplr(r, k, v, a, b, w).to(dtype)
    torch.testing.assert_close(o, ref, **_tol(dtype))


def test_rwkv7_recurrence_vs_fla_dplr_naive():
    """Our token-by-token RWKV7 form is FLA's dplr recurrence (which scales q by K^-0.5)."""
    naive = _fla_naive('generalized_delta_rule/dplr/naive.py')
    torch.manual_seed(0)
    r, w, k, v, a, b = _rwkv7_inputs(1, 21, 2, 8, 8, torch.float32)
    ref = naive.dplr_recurrence(*bhtd(r * 8 ** 0.5, k, v, a, b, w))[0].transpose(1, 2)
    torch.testing.assert_close(R.naive_recurrent_dplr(r, k, v, a, b, w), ref, **_fla_tol())


@pytest.mark.parametrize('T', LENGTHS)
def test_hgrn_vs_fla_naive(T):
    naive = _fla_naive('hgrn/naive.py')
    torch.manual_seed(T)
    x, g = _rand(2, T, 10), F.logsigmoid(_rand(2, T, 10))
    torch.testing.assert_close(ops.hgrn(x, g), naive.naive_recurrent_hgrn(x, g)[0], **_fla_tol())


@pytest.mark.parametrize('T', [1, 37])
def test_gsa_vs_fla_naive(T):
    naive = _fla_naive('gsa/naive.py')
    torch.manual_seed(T)
    B, H, K, V, M = 2, 2, 8, 6, 5
    q, k, v = _rand(B, T, H, K), _rand(B, T, H, K), _rand(B, T, H, V)
    f = F.logsigmoid(_rand(B, T, H, M)) / 8
    s = 1 - f.exp()
    ref = naive.naive_recurrent_gsa(q, k, v, s, f, scale=1.0)[0]
    torch.testing.assert_close(ops.gsa(q, k, v, s, f), ref, **_fla_tol())


@pytest.mark.parametrize('T', [1, 37])
def test_abc_vs_fla_naive(T):
    naive = _fla_naive('abc/naive.py')
    torch.manual_seed(T)
    B, H, K, V, M = 2, 2, 8, 6, 5
    q, k, v, s = _rand(B, T, H, K), _rand(B, T, H, K), _rand(B, T, H, V), _rand(B, T, H, M)
    ref = naive.naive_recurrent_abc(*bhtd(q, k, v, s))[0].transpose(1, 2)
    torch.testing.assert_close(ops.abc(q, k, v, s), ref, **_fla_tol())


def test_retnet_and_linear_attn_ops():
    torch.manual_seed(0)
    B, T, H, K = 1, 23, 3, 8
    q, k, v = _rand(B, T, H, K), _rand(B, T, H, K), _rand(B, T, H, K)
    g = ops.retnet_decay(H).expand(B, T, H)
    torch.testing.assert_close(ops.retnet(q, k, v), R.naive_recurrent_decay_attn(q, k, v, g),
                               **_tol(torch.float32))
    torch.testing.assert_close(ops.linear_attn(q, k, v), R.naive_recurrent_decay_attn(q, k, v),
                               **_tol(torch.float32))


def test_strong_decay_stays_finite():
    torch.manual_seed(0)
    B, T, H, K = 1, 64, 1, 4
    q, k, v = _rand(B, T, H, K), _rand(B, T, H, K), _rand(B, T, H, K)
    g = torch.full((B, T, H, K), -60.0)
    assert torch.isfinite(R.chunk_decay_attn_ref(q, k, v, g)).all()
    assert torch.isfinite(R.chunk_delta_rule_ref(q, F.normalize(k, dim=-1), v,
                                                 torch.ones(B, T, H), g[..., 0])).all()


def test_references_backward():
    torch.manual_seed(0)
    B, T, H, K = 1, 11, 1, 3
    leaves = [_rand(B, T, H, K, dtype=torch.float64).requires_grad_() for _ in range(3)]
    q, k, v = leaves
    beta = torch.rand(B, T, H, dtype=torch.float64)
    g = F.logsigmoid(_rand(B, T, H, dtype=torch.float64))
    assert torch.autograd.gradcheck(
        lambda q, k, v: R.chunk_delta_rule_ref(q, F.normalize(k, dim=-1), v, beta, g,
                                               chunk_size=4), leaves, fast_mode=True)


@pytest.mark.parametrize('version,cap,broken', [
    ('3.3.1', (9, 0), False), ('3.4.0', (9, 0), True), ('3.6.0', (9, 0), True),
    ('3.7.0+git1234', (9, 0), True), ('3.7.1', (9, 0), False), ('3.6.0', (8, 0), False),
    ('3.6.0', (10, 0), False)])
def test_triton_bwd_guard(version, cap, broken):
    assert ops.triton_bwd_broken_for(version, cap) is broken


def test_kernel_dispatch_falls_back_where_fla_cannot_train(monkeypatch):
    """Measured on an H200 (Triton 3.6): chunk_delta_rule refuses fp32 and
    fused_recurrent_gated_delta_rule has no backward, so both train through the reference."""
    from fla_mm.ops import families
    monkeypatch.setattr(families, '_use_kernel', lambda x: True)
    monkeypatch.setattr(families, 'triton_bwd_broken', lambda *a: True)
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 9, 2, 8, requires_grad=True) for _ in range(3))
    beta = torch.rand(1, 9, 2)
    g = -torch.rand(1, 9, 2)
    with pytest.warns(UserWarning, match='refuses float32'):
        o = families.delta_rule(q, k, v, beta)
    with pytest.warns(UserWarning, match='gated_delta_net trains through the PyTorch'):
        og = families.gated_delta_rule(q, k, v, g, beta)
    (o.sum() + og.sum()).backward()
    assert torch.isfinite(q.grad).all()


def test_kernel_failure_names_family_kernel_and_fallback(monkeypatch):
    """A failing FLA kernel (here: Triton with no GPU driver) gives one error that names the
    family and the kernel and says how to fall back; the fallback then runs."""
    pytest.importorskip('triton')
    from fla_mm.ops import families
    monkeypatch.setattr(families, '_use_kernel',
                        lambda x: families.backend() == 'auto')   # pretend x is on a GPU
    q, k, v = (torch.randn(1, 5, 2, 8) for _ in range(3))
    g = -torch.rand(1, 5, 2, 8)
    with pytest.raises(ops.KernelError) as err:
        ops.gla(q, k, v, g)
    msg = str(err.value)
    assert "family 'gla'" in msg and 'fla/ops/' in msg and 'FLA_MM_BACKEND=reference' in msg
    monkeypatch.setenv('FLA_MM_BACKEND', 'reference')
    torch.testing.assert_close(ops.gla(q, k, v, g), R.chunk_decay_attn_ref(q, k, v, g))
    monkeypatch.setenv('FLA_MM_BACKEND', 'triton')
    with pytest.raises(ValueError, match='valid values: auto, reference'):
        ops.gla(q, k, v, g)


def test_kernel_error_explains_small_head_dims():
    """Seen on an H200 (fla.layers.ABCAttention at head dim 8): Triton's dot refuses K < 16
    while compiling; the error says which dims to change, not only the Triton assertion."""
    from fla_mm.ops.families import _kernel_error_message
    try:
        try:
            raise AssertionError('Input shapes should have M >= 1, N >= 1 and K >= 16')
        except AssertionError as inner:
            raise RuntimeError('at 47:14:') from inner
    except RuntimeError as e:
        msg = _kernel_error_message('abc', 'chunk_abc', 'NVIDIA H200', e, torch.empty(2, 9, 4, 8))
    assert 'at least 16' in msg and '(2, 9, 4, 8)' in msg and 'FLA_MM_BACKEND=reference' in msg
    plain = _kernel_error_message('gla', 'chunk_gla', 'NVIDIA H200', RuntimeError('x'),
                                  torch.empty(1))
    assert 'at least 16' not in plain
