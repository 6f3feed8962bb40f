"""GPU only: FLA's Triton path vs the CPU reference, and TokenMixer vs fla.layers.

Run with ``pytest -s tests/test_gpu_ops.py`` to see one table line per case:
``family dtype L  fwd=<max rel err>  grad=<max rel err>`` (max |a - b| / max |b|, the worst
over the output and every input gradient). One B/H/D shape per dtype keeps the number of
kernel compilations down.
"""
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import gpu_report

from fla_mm import ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or not ops.fla_available(),
                                reason='needs a CUDA GPU and an importable fla + triton')

B, H, D = 2, 2, 64
LENGTHS = [49, 196, 3136, 100]
# Triton's tl.dot takes fp32 inputs as TF32 (10-bit mantissa) unless TRITON_F32_DEFAULT=ieee,
# as PyTorch's cuDNN convolutions do by default: the 1e-3 bar holds for true fp32 dots.
F32_DOTS = os.environ.get('TRITON_F32_DEFAULT') or 'tf32'
TOL = {torch.float32: 1e-3 if F32_DOTS == 'ieee' else 3e-3, torch.bfloat16: 2e-2}
# FLA's GSA and RWKV7 kernels in TF32 (GSA's gradient goes through two chained [slots]
# attentions, RWKV7's through its low-rank state update): gradients measured up to 3.2e-3
# (gsa) and 3.7e-3 (rwkv7) on an H200; with IEEE dots both meet 1e-3 (docs/mixers.md)
TF32_TOL = {'gsa': 5e-3, 'rwkv7': 5e-3}
FAMILY_OPS = ['abc', 'bitnet', 'delta_net', 'gated_delta_net', 'gla', 'gsa', 'hgrn', 'hgrn2',
              'linear_attn', 'retnet', 'rwkv6', 'rwkv7', 'simple_gla', 'transformer']


def _inputs(family, T, gen):
    """Leaves (fp32, CPU) and a function leaves -> (args, kwargs) of ``ops.OPS[family]``.

    Keys 'q'/'k'/'v'/... run in the tested dtype, keys starting with '_' stay fp32 (decays
    and gates, as the mixers hand them to the ops).
    """
    def r(*shape, s=1.0):
        return torch.randn(*shape, generator=gen) * s

    qkv = dict(q=r(B, T, H, D), k=r(B, T, H, D), v=r(B, T, H, D))
    if family in ('gla', 'hgrn2'):
        return dict(qkv, _g=r(B, T, H, D)), \
            lambda x: ((x['q'], x['k'], x['v'], F.logsigmoid(x['_g']) / 16), {})
    if family == 'simple_gla':
        return dict(qkv, _g=r(B, T, H)), \
            lambda x: ((x['q'], x['k'], x['v'], F.logsigmoid(x['_g']) / 16), {})
    if family in ('retnet', 'transformer', 'bitnet'):
        return qkv, lambda x: ((x['q'], x['k'], x['v']), {})
    if family == 'linear_attn':
        return qkv, lambda x: ((x['q'], x['k'] * 0.1, x['v']), {})
    if family == 'delta_net':
        return dict(qkv, _b=r(B, T, H)), \
            lambda x: ((x['q'], x['k'], x['v'], x['_b'].sigmoid().to(x['q'].dtype)), {})
    if family == 'gated_delta_net':
        return dict(qkv, _a=r(B, T, H), _b=r(B, T, H)), \
            lambda x: ((x['q'], x['k'], x['v'], -F.softplus(x['_a']) * 0.5,
                        x['_b'].sigmoid().to(x['q'].dtype)), {})
    if family == 'hgrn':
        return dict(x=r(B, T, H * D), _g=r(B, T, H * D)), \
            lambda x: ((x['x'], F.logsigmoid(x['_g'] + 2).to(x['x'].dtype)), {})
    if family == 'rwkv6':
        return dict(qkv, _w=r(B, T, H, D, s=0.5), u=r(H, D, s=0.5)), \
            lambda x: ((x['q'], x['k'], x['v'], -torch.exp(x['_w'] - 1), x['u']), {})
    if family == 'rwkv7':
        def rwkv7(x):
            kk = F.normalize(x['kk'].float(), dim=-1).to(x['q'].dtype)
            a = x['a'].sigmoid()
            w = ops.families.RWKV7_LOG_DECAY_MIN * x['_w'].sigmoid()
            return (x['q'], w.to(x['q'].dtype), x['k'] * 0.2, x['v'], -kk, kk * a), {}
        return dict(qkv, _w=r(B, T, H, D), kk=r(B, T, H, D), a=r(B, T, H, D)), rwkv7
    if family == 'gsa':
        def gsa(x):
            f = F.logsigmoid(x['_f']) / 8
            return (F.silu(x['q']), F.silu(x['k']), x['v'], (1 - f.exp()).to(x['q'].dtype),
                    f), {}
        return dict(qkv, _f=r(B, T, H, D)), gsa
    if family == 'abc':
        return dict(qkv, s=r(B, T, H, D)), lambda x: ((x['q'], x['k'], x['v'], x['s']), {})
    raise KeyError(family)




def _rel(a, b, floor=1e-6):
    a, b = a.float().cpu(), b.float().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(floor)).item()


def _run(fn, leaves, device, dtype, gen_do):
    xs = {k: (v.to(device) if k.startswith('_') else v.to(device, dtype)).requires_grad_()
          for k, v in leaves.items()}
    args, kwargs = fn(xs)
    out = ops.OPS[fn.family](*args, **kwargs)
    out.backward(gen_do.to(device, out.dtype))
    return out, {k: x.grad for k, x in xs.items()}


# one xdist group per (family, dtype): a worker compiles each kernel variant once
@pytest.mark.parametrize('L', LENGTHS)
@pytest.mark.parametrize('family,dtype', [
    pytest.param(f, d, marks=pytest.mark.xdist_group(f'{f}-{i}'), id=f'{f}-{i}')
    for f in FAMILY_OPS for d, i in ((torch.float32, 'fp32'), (torch.bfloat16, 'bf16'))])
def test_kernel_vs_reference(family, dtype, L):
    gen = torch.Generator().manual_seed(L)
    leaves, fn = _inputs(family, L, gen)
    fn.family = family
    do = torch.randn((B, L, H * D) if family == 'hgrn' else (B, L, H, D), generator=gen)
    # the reference sees exactly the (rounded) values the kernel sees, in fp32
    rounded = {k: v if k.startswith('_') else v.to(dtype).float() for k, v in leaves.items()}
    try:
        out, grads = _run(fn, leaves, 'cuda', dtype, do)
    except Exception as e:
        gpu_report(f'\n{family:16s} {str(dtype)[6:]:9s} L={L:5d}  ERROR {type(e).__name__}: '
                    f'{str(e).splitlines()[0][:200] if str(e) else ""}')
        raise
    ref_out, ref_grads = _run(fn, rounded, 'cpu', torch.float32, do.to(dtype).float())
    e_fwd = _rel(out, ref_out)
    e_grad = max(_rel(grads[k], ref_grads[k]) for k in grads)
    label = str(dtype)[6:] + (f'/{F32_DOTS}' if dtype == torch.float32 else '')
    gpu_report(f'\n{family:16s} {label:12s} L={L:5d}  fwd={e_fwd:.2e}  grad={e_grad:.2e}')
    tol = TF32_TOL.get(family, TOL[dtype]) if dtype == torch.float32 and F32_DOTS != 'ieee' \
        else TOL[dtype]
    assert e_fwd < tol and e_grad < tol, (family, L, dtype, e_fwd, e_grad)


@pytest.mark.parametrize('case', ['gla', 'gla_conv_unfused', 'simple_gla', 'retnet',
                                  'linear_attn', 'delta_net', 'gated_delta_net', 'hgrn', 'hgrn2',
                                  'rwkv6', 'rwkv7', 'gsa', 'abc', 'bitnet', 'transformer'])
def test_mixer_vs_fla_layer(case, monkeypatch):
    """TokenMixer vs the fla.layers module with the same weights, on FLA's kernels (fp32).

    Where the fla.layers module itself cannot run here, the check narrows instead of being
    dropped: FLA's DeltaNet refuses fp32, so delta_net compares under bf16 autocast (2e-2);
    where FLA refuses its own backward (Hopper, Triton < 3.7.1: simple_gla, gated_delta_net)
    only the forward is compared. Attention / BitAttention call flash-attn, which the GPU
    machine lacks: where it is missing they get flash_attn_func's contract through SDPA.
    """
    from test_mixers import FLA_CASES, build_fla_layer, family_of, use_sdpa_for_flash_attn

    from fla_mm.layers.mixer import TokenMixer
    use_sdpa_for_flash_attn(monkeypatch)
    torch.manual_seed(0)
    ref = build_fla_layer(case).cuda().train()
    m = TokenMixer(64, 4, family=family_of(case), scan='uni', **FLA_CASES[case][2]).cuda().train()
    m.load_state_dict(ref.state_dict())
    hw = (14, 14)
    x = torch.randn(2, hw[0] * hw[1], 64, device='cuda')
    xr, xm = x.clone().requires_grad_(), x.clone().requires_grad_()
    bf16 = case == 'delta_net'
    with torch.autocast('cuda', torch.bfloat16, enabled=bf16):
        y_ref = ref(xr)[0]
        y = m(xm, hw)
    do = torch.randn_like(y)
    e_fwd = _rel(y, y_ref)
    try:
        y_ref.backward(do)
    except RuntimeError as e:
        if '#640' not in str(e):
            raise
        e_grad = None     # FLA refuses its own backward on this GPU / Triton
    else:
        y.backward(do)
        params = dict(m.named_parameters())
        e_grad = max([_rel(xm.grad, xr.grad)] + [
            _rel(params[n].grad, p.grad) for n, p in ref.named_parameters() if p.grad is not None])
    dtype = 'bf16' if bf16 else 'fp32'
    grad = 'n/a (FLA refuses its backward here)' if e_grad is None else f'{e_grad:.2e}'
    gpu_report(f'\nmixer:{case:18s} {dtype:9s} L=  196  fwd={e_fwd:.2e}  grad={grad}')
    # bitnet: 7e-4 on the H200, not traced (likely activations on a rounding boundary of the
    # 8-bit quantiser); fp32 under TF32 dots: the two modules may run different FLA modes
    # (gated_delta_net falls back to fused_recurrent where chunk's backward is refused)
    tol = 2e-2 if case == 'bitnet' or bf16 else TOL[torch.float32]
    assert e_fwd < tol and (e_grad is None or e_grad < tol), (case, e_fwd, e_grad)


@pytest.mark.parametrize('family', ['simple_gla', 'gated_delta_net'])
def test_hopper_fallback_warns_and_trains(family):
    """Where FLA refuses the chunk backward (Hopper, Triton < 3.7.1) the op says so once and
    still returns gradients (fused_recurrent / the reference on the GPU); elsewhere no warning."""
    gen = torch.Generator().manual_seed(0)
    leaves, fn = _inputs(family, 196, gen)
    xs = {k: (v.cuda() if k.startswith('_') else v.to('cuda', torch.bfloat16)).requires_grad_()
          for k, v in leaves.items()}
    args, kwargs = fn(xs)
    ops.families._warn_once.cache_clear()
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        ops.OPS[family](*args, **kwargs).float().square().sum().backward()
    said = [str(w.message) for w in caught if 'refuses the backward' in str(w.message)]
    assert bool(said) == ops.families.triton_bwd_broken(), said
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in xs.values())
    gpu_report(f'\nfallback:{family:16s} bwd_broken={ops.families.triton_bwd_broken()} '
                f'warned={bool(said)}')


# every family in a hybrid on CUDA: three pyramids (one family per stage) and the plain layout
HYBRID_PYRAMIDS = dict(pyramid=['gla', 'retnet', 'gated_delta_net', 'rwkv6'],
                       pyramid2=['abc', 'delta_net', 'gsa', 'hgrn2'],
                       pyramid3=['hgrn', 'linear_attn', 'rwkv7', 'bitnet'])


@pytest.mark.parametrize('layout', list(HYBRID_PYRAMIDS) + ['plain'])
def test_hybrid_backbone_cuda_vs_cpu(layout, monkeypatch):
    """A hybrid backbone (a different family per stage, softmax attention at chosen blocks)
    computes on FLA's kernels what it computes on the CPU reference: output and every
    parameter gradient, fp32 (TF32 dots on the GPU unless TRITON_F32_DEFAULT=ieee).

    cuDNN's TF32 convolutions (PyTorch's default) are turned off: the stem and downsampling
    convs then differ from the CPU only through the mixers, which are what is tested (on an
    H200 they moved the plain layout's worst gradient from 1.6e-5 to 7.3e-4)."""
    from fla_mm.backbones import FLAPlain, FLAPyramid
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    torch.manual_seed(0)
    if layout in HYBRID_PYRAMIDS:
        m = FLAPyramid(arch=dict(embed_dims=[32, 64, 64, 128], depths=[1, 1, 2, 1],
                                 num_heads=[1, 2, 2, 2]),
                       mixer=HYBRID_PYRAMIDS[layout], scan='bi',
                       hybrid_layers=(3,), drop_path_rate=0.0)
    else:
        m = FLAPlain(arch=dict(embed_dims=128, depth=4, num_heads=2), mixer='simple_gla',
                     scan='bi', hybrid_layers=(1,), drop_path_rate=0.0, pretrain_img_size=64)
    m.init_weights()
    x = torch.randn(2, 3, 64, 96)
    # a fixed random projection of the outputs: the sum of squares of LayerNorm-ed features
    # barely depends on anything before the norms, so its gradients there (1e-7 at the stem)
    # were rounding noise, and the test compared noise
    proj = [torch.randn(f.shape) for f in m(x)]
    grads, outs = {}, {}
    for device in ('cpu', 'cuda'):
        m.to(device).zero_grad()
        feats = m(x.to(device))
        sum((f.float() * r.to(device)).sum() for f, r in zip(feats, proj)).backward()
        outs[device] = torch.cat([f.flatten() for f in feats])
        grads[device] = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    e_fwd = _rel(outs['cuda'], outs['cpu'])
    assert grads['cuda'].keys() == grads['cpu'].keys()
    # gradients that are zero by construction (a conv bias before BatchNorm, a softmax key
    # bias) hold only rounding noise: each tensor's error is relative to its own largest
    # entry, but at least to 1e-3 of the largest gradient of the model
    floor = 1e-3 * max(g.abs().max().item() for g in grads['cpu'].values())
    errs = sorted((_rel(grads['cuda'][n], g, floor), n) for n, g in grads['cpu'].items())
    e_grad, worst = errs[-1]
    gpu_report(f'\nhybrid:{layout:10s} fp32/{F32_DOTS:5s} fwd={e_fwd:.2e}  grad={e_grad:.2e} '
               f'(worst {worst}; next {errs[-2][1]} {errs[-2][0]:.2e}, {errs[-3][1]} {errs[-3][0]:.2e})')
    # Through five blocks, TF32 rounding alone moves some parameter gradients by ~1e-2 under
    # this metric (on CPU, rounding only the stem and downsampling convs' operands to TF32
    # gives 9e-3 on the pyramid), so with TF32 dots the bar is bf16's; IEEE dots: fp32's.
    tol = TOL[torch.float32] if F32_DOTS == 'ieee' else TOL[torch.bfloat16]
    assert e_fwd < TOL[torch.float32] and e_grad < tol, (layout, e_fwd, e_grad)
