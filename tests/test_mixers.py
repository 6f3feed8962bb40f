"""TokenMixer: every family x scan on CPU, scan orders, options, errors, FLA parameter names."""
import pytest
import torch

from fla_mm.layers.mixer import FAMILIES, TokenMixer
from fla_mm.layers.scan import ScanContext
from fla_mm.layers.scan import SCANS, merge, num_directions, scan

GRIDS = [(7, 7), (14, 14), (25, 38), (1, 1), (2, 3)]


@pytest.mark.parametrize('scan_name', SCANS)
@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_forward_backward(family, scan_name):
    torch.manual_seed(0)
    m = TokenMixer(16, 2, family=family, scan=scan_name).train()
    for hw in GRIDS:
        x = torch.randn(1, hw[0] * hw[1], 16, requires_grad=True)
        y = m(x, hw)
        assert y.shape == x.shape
        y.square().mean().backward()
        assert torch.isfinite(x.grad).all(), (family, scan_name, hw)
        for name, p in m.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (family, name, hw)
        m.zero_grad()


@pytest.mark.parametrize('scan_name', SCANS)
@pytest.mark.parametrize('hw', GRIDS)
def test_scan_merge_inverse(scan_name, hw):
    x = torch.randn(2, hw[0] * hw[1], 3, 4)
    perm = torch.randperm(x.shape[1]) if scan_name == 'random' else None
    y = scan(x, hw, scan_name, perm)
    D = num_directions(scan_name)
    assert y.shape == (D * 2, *x.shape[1:])
    torch.testing.assert_close(merge(y, hw, scan_name, perm), D * x)
    for d in range(D):      # each direction alone is inverted exactly
        only = torch.zeros_like(y)
        only[d * 2:(d + 1) * 2] = y[d * 2:(d + 1) * 2]
        torch.testing.assert_close(merge(only, hw, scan_name, perm), x)


def test_cross_scan_orders():
    x = torch.arange(6.).reshape(1, 6, 1)
    y = scan(x, (2, 3), 'cross').squeeze(-1)
    assert y[0].tolist() == [0, 1, 2, 3, 4, 5]
    assert y[1].tolist() == [5, 4, 3, 2, 1, 0]
    assert y[2].tolist() == [0, 3, 1, 4, 2, 5]
    assert y[3].tolist() == [5, 2, 4, 1, 3, 0]


def test_random_scan_identity_at_eval():
    torch.manual_seed(0)
    m = TokenMixer(16, 2, family='gla', scan='random')
    u = TokenMixer(16, 2, family='gla', scan='uni')
    u.load_state_dict(m.state_dict())
    x = torch.randn(2, 12, 16)
    m.eval(), u.eval()
    torch.testing.assert_close(m(x, (3, 4)), u(x, (3, 4)))
    m.train()
    assert not torch.allclose(m(x, (3, 4)), u(x, (3, 4)))


def test_bi_is_sum_of_directions():
    """bi = uni on the sequence + uni on the reversed sequence, merged before the output gate."""
    torch.manual_seed(0)
    m = TokenMixer(16, 2, family='linear_attn', scan='bi', feature_map='identity',
                   output_norm='identity').eval()
    x = torch.randn(1, 6, 16)
    o_fwd = m.op(*(p(x).reshape(1, 6, 2, 8) for p in (m.q_proj, m.k_proj, m.v_proj)))
    o_bwd = m.op(*(p(x.flip(1)).reshape(1, 6, 2, 8)
                   for p in (m.q_proj, m.k_proj, m.v_proj))).flip(1)
    torch.testing.assert_close(m(x, (2, 3)), m.o_proj((o_fwd + o_bwd).reshape(1, 6, 16)))


@pytest.mark.parametrize('family', ['gla', 'simple_gla', 'gated_delta_net'])
def test_direction_gates(family):
    torch.manual_seed(0)
    m = TokenMixer(16, 2, family=family, scan='cross', direction_gates=True)
    proj = m.gk_proj if family != 'gated_delta_net' else m.a_proj
    last = proj[-1] if isinstance(proj, torch.nn.Sequential) else proj
    assert last.out_features % 4 == 0
    x = torch.randn(2, 12, 16, requires_grad=True)
    m(x, (3, 4)).sum().backward()
    assert torch.isfinite(x.grad).all()
    g = torch.arange(4.).repeat_interleave(3).reshape(1, 1, 12).expand(1, 12, 12)
    per_dir = ScanContext('cross', (3, 4)).scan_gates(g, m.num_gates)
    for d in range(4):   # direction d carries slice d of the gate
        assert (per_dir[d] == d).all()


def test_direction_gates_error():
    with pytest.raises(ValueError, match='valid: .*gla'):
        TokenMixer(16, 2, family='retnet', direction_gates=True)


def test_locality():
    torch.manual_seed(0)
    m = TokenMixer(16, 2, family='gla', scan='bi', locality=True)
    assert m.local_conv.weight.shape == (16, 1, 3, 3)
    x = torch.randn(2, 20, 16, requires_grad=True)
    y = m(x, (4, 5))
    y.sum().backward()
    assert m.local_conv.weight.grad is not None
    plain = TokenMixer(16, 2, family='gla', scan='bi')
    plain.load_state_dict({k: v for k, v in m.state_dict().items()
                           if not k.startswith('local_conv')})
    grid = x.transpose(1, 2).reshape(2, 16, 4, 5)
    gate = torch.sigmoid(m.local_conv(grid)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(y, plain(x, (4, 5)) * gate)


def test_errors():
    with pytest.raises(ValueError, match='valid families: .*gla.*rwkv7'):
        TokenMixer(16, 2, family='mamba9')
    with pytest.raises(ValueError, match='valid scans: uni, bi, cross, random'):
        TokenMixer(16, 2, family='gla', scan='zigzag')
    with pytest.raises(ValueError, match="valid options: .*use_short_conv"):
        TokenMixer(16, 2, family='gla', no_such_option=1)
    with pytest.raises(ValueError, match='divisible'):
        TokenMixer(18, 4, family='gla')
    with pytest.raises(ValueError, match='does not match'):
        TokenMixer(16, 2, family='gla')(torch.randn(1, 6, 16), (2, 2))


def test_short_conv_is_causal_per_direction():
    torch.manual_seed(0)
    m = TokenMixer(16, 2, family='delta_net', scan='uni').eval()
    x = torch.randn(1, 12, 16)
    y = m(x, (3, 4))
    x2 = x.clone()
    x2[:, 7:] += 1.0
    torch.testing.assert_close(m(x2, (3, 4))[:, :7], y[:, :7])


# fla.layers classes and the TokenMixer options that build the same module (dim 64, 4 heads).
FLA_CASES = {
    'gla': ('GatedLinearAttention', {}, {}),
    'gla_conv_unfused': ('GatedLinearAttention', dict(use_short_conv=True, fuse_norm=False),
                         dict(use_short_conv=True, fuse_norm=False)),
    'simple_gla': ('simple_gla.SimpleGatedLinearAttention', {}, dict(use_short_conv=True)),
    'retnet': ('MultiScaleRetention', {}, dict(expand_v=2.0)),
    'linear_attn': ('LinearAttention', {}, {}),
    'delta_net': ('DeltaNet', {}, {}),
    'gated_delta_net': ('GatedDeltaNet', dict(head_dim=16, expand_v=2),
                        dict(head_dim=16, expand_v=2.0)),
    'hgrn': ('HGRNAttention', {}, {}),
    'hgrn2': ('HGRN2Attention', dict(expand_ratio=16), dict(expand_ratio=16)),
    'rwkv6': ('RWKV6Attention', {}, {}),
    'rwkv7': ('RWKV7Attention', dict(layer_idx=0, num_hidden_layers=2, head_dim=16), {}),
    'gsa': ('GatedSlotAttention', {}, {}),
    'abc': ('ABCAttention', dict(expand_k=1.0), dict(expand_k=1.0)),   # Triton dots: K >= 16
    # BitAttention is always causal with rotary (rope_theta=10000.); bitnet's vision defaults
    # are neither
    'bitnet': ('BitAttention', {}, dict(rope_theta=10000., causal=True)),
    'transformer': ('Attention', {}, dict(qkv_bias=False, o_bias=False, rope_theta=10000.,
                                          causal=True)),
}


def _sdpa_flash_attn_func(q, k, v, causal=False, window_size=(-1, -1), **kwargs):
    """flash_attn.flash_attn_func's contract ([B, L, H, D] in and out, default scale) through
    torch's SDPA, for fla.layers' Attention / BitAttention where flash-attn is not installed."""
    import torch.nn.functional as F
    if tuple(window_size) != (-1, -1) or kwargs:
        raise NotImplementedError(f'SDPA stand-in: window_size={window_size}, {kwargs}')
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       is_causal=causal)
    return o.transpose(1, 2)


def use_sdpa_for_flash_attn(monkeypatch):
    """fla.layers' softmax attention layers call flash-attn, which is not installed here (nor on
    the GPU machine); give them the same function through SDPA."""
    import importlib
    for mod in ('fla.layers.attn', 'fla.layers.bitattn'):
        try:
            module = importlib.import_module(mod)
        except Exception as e:  # fla.layers imports triton
            pytest.skip(f'{mod} not importable here: {type(e).__name__}: {e}')
        if getattr(module, 'flash_attn_func', None) is None:
            monkeypatch.setattr(module, 'flash_attn_func', _sdpa_flash_attn_func)


def build_fla_layer(case, dim=64, num_heads=4):
    """The fla.layers module of FLA_CASES[case], or skip where it cannot be built here."""
    import importlib
    import warnings
    name, fla_kw, _ = FLA_CASES[case]
    try:
        if '.' in name:
            mod, cls = name.split('.')
            cls = getattr(importlib.import_module(f'fla.layers.{mod}'), cls)
        else:
            cls = getattr(importlib.import_module('fla.layers'), name)
    except Exception as e:  # fla.layers imports triton
        pytest.skip(f'fla.layers not importable here: {type(e).__name__}: {e}')
    kw = dict(hidden_size=dim, **fla_kw)
    if case not in ('hgrn', 'hgrn2'):
        kw['num_heads'] = num_heads
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            return cls(**kw)
    except ImportError as e:    # Attention needs flash-attn
        pytest.skip(f'{name} cannot be built here: {e}')


def family_of(case):
    return case.replace('_conv_unfused', '')


@pytest.mark.parametrize('case', sorted(FLA_CASES))
def test_state_dict_matches_fla_layers(case, monkeypatch):
    use_sdpa_for_flash_attn(monkeypatch)
    ref = build_fla_layer(case)
    m = TokenMixer(64, 4, family=family_of(case), scan='uni', **FLA_CASES[case][2])
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == want
    m.load_state_dict(ref.state_dict())


# ---- bitnet vs fla's fused BitLinear kernel, written out in torch ---------------------------

def _fused_bitlinear_emulated(x, norm_weight, weight, eps=1e-8):
    """fla.modules.FusedBitLinear's forward: the Triton layer_norm_quant kernel (RMSNorm and
    per-token absmax 8-bit quantisation in fp32, ties away from zero, stored in x's dtype),
    then F.linear with fla's per-tensor ternary weight_quant."""
    h = x.float()
    h = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.float()
    scale = 127.0 / h.abs().amax(-1, keepdim=True).clamp_min(1e-5)
    t = h * scale
    q = torch.where(t >= 0, torch.floor(t + 0.5), torch.ceil(t - 0.5)).clamp(-128, 127) / scale
    sw = 1.0 / weight.abs().mean().clamp_min(1e-5)
    wq = (weight * sw).round().clamp(-1, 1) / sw
    return torch.nn.functional.linear(q.to(x.dtype), wq.to(x.dtype))


def test_bitlinear_rounds_ties_away_from_zero():
    """x = ones normalises to exactly 1, so the quantiser sees the norm weight; with max 127 its
    scale is 1 and the weights below are exact ties (torch.round would give 2, -2, 0, -0, 4)."""
    from fla_mm.layers.modules import BitLinear
    lin = BitLinear(8, 8)
    with torch.no_grad():
        lin.norm.weight.copy_(torch.tensor([2.5, -2.5, 0.5, -0.5, 3.5, 127., 1.25, -126.5]))
        lin.weight.copy_(torch.eye(8))          # ternary scale 8: output = quantised input / 8
    y = lin(torch.ones(1, 8)) * 8
    assert y.flatten().tolist() == [3., -3., 1., -1., 4., 127., 1., -127.]
    ref = _fused_bitlinear_emulated(torch.ones(1, 8), lin.norm.weight, lin.weight)
    torch.testing.assert_close(y / 8, ref, rtol=0, atol=0)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_bitlinear_matches_fused_kernel_math(dtype):
    """Forward equal to the kernel's math (quantised in fp32 also for bf16 inputs: quantising
    the bf16-rounded norm output puts many values in other bins)."""
    from fla_mm.layers.modules import BitLinear
    torch.manual_seed(0)
    lin = BitLinear(64, 32)
    with torch.no_grad():
        lin.norm.weight.uniform_(0.5, 1.5)
    lin = lin.to(dtype)
    x = torch.randn(4, 196, 64).to(dtype)
    y, ref = lin(x), _fused_bitlinear_emulated(x, lin.norm.weight, lin.weight)
    assert y.dtype == ref.dtype == dtype
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(y, ref, **tol)


def test_bitnet_matches_bit_attention_cpu(monkeypatch):
    """fla.layers.BitAttention on CPU, its Triton kernels (fused norm + quantiser, rotary)
    replaced by torch, flash-attn by SDPA, against the bitnet mixer built with FLA_CASES'
    options: forward and every gradient. With bitnet's vision defaults (non-causal, no rotary)
    the two disagree by O(1), the H200 failure of test_mixer_vs_fla_layer[bitnet]."""
    import importlib
    use_sdpa_for_flash_attn(monkeypatch)
    try:
        lq = importlib.import_module('fla.modules.norm.layernorm_quant')
        rops = importlib.import_module('fla.modules.rotary.ops')
    except Exception as e:
        pytest.skip(f'fla modules not importable here: {type(e).__name__}: {e}')
    if not all(hasattr(lq, n) for n in ('layer_norm_quant_fwd', 'layer_norm_quant_bwd')) or \
            not hasattr(rops, 'rotary_embedding_fwdbwd'):
        pytest.skip('fla internals differ from the emulated ones')

    def quant(h):                                   # fp32 rows -> fp32 rows
        scale = 127.0 / h.abs().amax(-1, keepdim=True).clamp_min(1e-5)
        t = h * scale
        t = torch.where(t >= 0, torch.floor(t + 0.5), torch.ceil(t - 0.5))
        return t.clamp(-128, 127) / scale

    def fwd(x, weight, bias, eps, residual=None, out_dtype=None, residual_dtype=None,
            is_rms_norm=False):
        assert residual is None and bias is None and is_rms_norm
        rstd = torch.rsqrt(x.float().pow(2).mean(-1) + eps)
        y = quant(x.float() * rstd[:, None] * weight.float())
        return y.to(out_dtype or x.dtype), None, rstd, x

    def bwd(dy, x, weight, bias, mean, rstd, dres=None, has_residual=False, is_rms_norm=False,
            x_dtype=None, recompute_output=False):
        xhat = x.float() * rstd[:, None]
        wdy = dy.float() * weight.float()
        dx = (wdy - xhat * (xhat * wdy).mean(-1, keepdim=True)) * rstd[:, None]
        dw = (dy.float() * xhat).sum(0).to(weight.dtype)
        return dx.to(x_dtype or x.dtype), dw, None, None, quant(xhat * weight.float()).to(dy.dtype)

    def rotary(x, cos, sin, seqlen_offsets=0, cu_seqlens=None, interleaved=False, inplace=False,
               conjugate=False, chunk_indices=None):
        assert seqlen_offsets == 0 and cu_seqlens is None and not interleaved
        T = x.shape[1]
        c, s_ = cos[:T, None].repeat(1, 1, 2), sin[:T, None].repeat(1, 1, 2)
        x1, x2 = x.chunk(2, -1)
        return x * c + torch.cat([-x2, x1], -1) * (-s_ if conjugate else s_)

    monkeypatch.setattr(lq, 'layer_norm_quant_fwd', fwd)
    monkeypatch.setattr(lq, 'layer_norm_quant_bwd', bwd)
    monkeypatch.setattr(rops, 'rotary_embedding_fwdbwd', rotary)

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max()).item()

    torch.manual_seed(0)
    ref = build_fla_layer('bitnet').train()
    hw = (14, 14)
    x = torch.randn(2, hw[0] * hw[1], 64)
    do = torch.randn_like(x)
    xr = x.clone().requires_grad_()
    y_ref = ref(xr)[0]
    y_ref.backward(do)
    for kw, same in ((FLA_CASES['bitnet'][2], True), ({}, False)):
        m = TokenMixer(64, 4, family='bitnet', scan='uni', **kw).train()
        m.load_state_dict(ref.state_dict())
        xm = x.clone().requires_grad_()
        y = m(xm, hw)
        y.backward(do)
        params = dict(m.named_parameters())
        e_fwd = rel(y, y_ref)
        e_grad = max([rel(xm.grad, xr.grad)] +
                     [rel(params[n].grad, p.grad) for n, p in ref.named_parameters()])
        if same:
            assert e_fwd < 1e-5 and e_grad < 1e-5, (kw, e_fwd, e_grad)
        else:
            assert e_fwd > 0.1, (kw, e_fwd)
