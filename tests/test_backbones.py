"""Backbone contract: layouts, options, any input size, errors, RepMixer, registry.

Tiny widths and small images keep this file fast on a 2-core CPU.
"""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fla_mm  # noqa: F401  (registers)
from fla_mm.backbones import FLAPlain, FLAPyramid
from fla_mm.backbones.plain import ARCHS as PLAIN_ARCHS
from fla_mm.backbones.pyramid import ARCHS as PYRAMID_ARCHS
from fla_mm.layers import FAMILIES, RepMixerBlock, resize_pos_embed
from fla_mm.layers.modules import RMSNorm
from fla_mm.layers.repmixer import RepMixer

PYR = dict(embed_dims=[16, 32, 32, 64], depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4])
PLAIN = dict(embed_dims=32, depth=4, num_heads=2)


def pyramid(**kw):
    kw.setdefault('arch', PYR)
    kw.setdefault('drop_path_rate', 0.0)
    m = FLAPyramid(**kw)
    m.init_weights()
    return m


def plain(**kw):
    kw.setdefault('arch', PLAIN)
    kw.setdefault('drop_path_rate', 0.0)
    kw.setdefault('pretrain_img_size', 64)
    m = FLAPlain(**kw)
    m.init_weights()
    return m


def all_blocks(model):
    if isinstance(model, FLAPlain):
        return list(model.blocks)
    return [b for s in model.stages for b in s.blocks]


def randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


# ----------------------------------------------------------------------------- named sizes

def test_named_sizes_build_and_grow():
    with torch.device('meta'):
        counts = {}
        for layout, cls, archs in (('pyramid', FLAPyramid, PYRAMID_ARCHS),
                                   ('plain', FLAPlain, PLAIN_ARCHS)):
            for name in ('tiny', 'small', 'base'):
                m = cls(arch=name)
                counts[layout, name] = sum(p.numel() for p in m.parameters())
    assert PYRAMID_ARCHS['tiny']['embed_dims'] == [96, 192, 384, 768]
    assert [PLAIN_ARCHS[n]['embed_dims'] for n in ('tiny', 'small', 'base')] == [192, 384, 768]
    for layout in ('pyramid', 'plain'):
        assert counts[layout, 'tiny'] < counts[layout, 'small'] < counts[layout, 'base']
    assert 20e6 < counts['pyramid', 'tiny'] < 40e6          # ViG-H-T / Swin-T scale
    assert 4e6 < counts['plain', 'tiny'] < 8e6               # DeiT-T scale


@pytest.mark.parametrize('cls', [FLAPyramid, FLAPlain])
def test_unknown_arch_names_value_and_choices(cls):
    with pytest.raises(ValueError, match=r"'huge'.*tiny, small, base"):
        cls(arch='huge')
    with pytest.raises(ValueError, match='lacks keys'):
        cls(arch=dict(embed_dims=8))


def test_registry_builds_both_layouts():
    from mmengine.registry import MODELS
    m = MODELS.build(dict(type='FLAPyramid', arch=PYR))
    assert isinstance(m, FLAPyramid)
    m = MODELS.build(dict(type='FLAPlain', arch=PLAIN, pretrain_img_size=64))
    assert isinstance(m, FLAPlain)


# ----------------------------------------------------------------------------- any input size

@pytest.mark.parametrize('hw', [(97, 131), (500, 333), (512, 512)])
def test_pyramid_any_input_size(hw):
    m = pyramid(scan='uni', arch=dict(embed_dims=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                      num_heads=[1, 1, 1, 1])).eval()
    with torch.no_grad():
        outs = m(torch.randn(1, 3, *hw))
    assert len(outs) == 4
    for out, stride, c in zip(outs, (4, 8, 16, 32), (8, 16, 16, 32)):
        assert out.shape == (1, c, math.ceil(hw[0] / stride), math.ceil(hw[1] / stride))


@pytest.mark.parametrize('hw', [(97, 131), (500, 333), (512, 512)])
def test_plain_any_input_size(hw):
    m = plain(arch=dict(embed_dims=16, depth=2, num_heads=1)).eval()
    with torch.no_grad():
        outs = m(torch.randn(1, 3, *hw))
    assert len(outs) == 4
    assert m.out_strides == [4, 8, 16, 32]
    for out, stride in zip(outs, (4, 8, 16, 32)):
        assert out.shape == (1, 16, math.ceil(hw[0] / stride), math.ceil(hw[1] / stride))


def test_plain_padding_does_not_change_the_valid_region_of_a_grid_aligned_image():
    m = plain(scan='uni', out_scales=None, out_indices=(0,)).eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        a = m(x)[0]
        b = m(x[:, :, :40, :56])[0]       # pads back to 48 x 64 with zeros
    assert a.shape == b.shape == (1, 32, 3, 4)
    assert torch.allclose(a[:, :, 0, :3], b[:, :, 0, :3], atol=1e-5)  # uni scan: earlier tokens


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize('make', [pyramid, plain])
def test_input_errors_name_value_and_expectation(make):
    m = make().eval()
    with pytest.raises(ValueError, match=r'4-D.*\(3, 32, 32\)'):
        m(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match='expects 3 input channels.*got 1'):
        m(torch.randn(1, 1, 32, 32))
    small = m.patch_size - 1
    with pytest.raises(ValueError, match=f'{small}x40 is smaller than the patch size '
                                         f'{m.patch_size}'):
        m(torch.randn(1, 3, small, 40))


def test_bad_out_indices_and_options_name_value_and_choices():
    with pytest.raises(ValueError, match=r'out_indices \(0, 4\) has 4; valid.*\[-4, 3\]'):
        pyramid(out_indices=(0, 4))
    with pytest.raises(ValueError, match=r'out_indices \(7,\) has 7; valid.*\[-4, 3\]'):
        plain(out_indices=(7,))
    with pytest.raises(ValueError, match='pick 1 block.*or 4 blocks'):
        plain(out_indices=(1, 2))
    with pytest.raises(ValueError, match=r"out_scales .*\[3\.0\]; valid scales"):
        plain(out_scales=(4, 3))
    with pytest.raises(ValueError, match="Unknown mixer 'nope'; valid mixers: .*gla.*repmixer"):
        pyramid(mixer='nope')
    with pytest.raises(ValueError, match="Unknown mixer 'repmixer'"):
        plain(mixer='repmixer')          # conv stages exist only in the pyramid
    with pytest.raises(ValueError, match='mixer .*needs 4 entries'):
        pyramid(mixer=['gla', 'gla'])
    with pytest.raises(ValueError, match=r"Unknown scan 'zigzag'"):
        pyramid(scan='zigzag')
    with pytest.raises(ValueError, match=r'hybrid_layers \(5,\) has 5'):
        pyramid(hybrid_layers=(5,))
    with pytest.raises(ValueError, match='frozen_stages=5; valid'):
        pyramid(frozen_stages=5)
    with pytest.raises(ValueError, match="Unknown block style 'llama'; valid: vig, illama"):
        plain(block='llama')


# ----------------------------------------------------------------------------- options

def test_mixer_per_stage_and_per_block():
    m = pyramid(mixer=['repmixer', 'transformer', 'gla', 'retnet'])
    stages = [[b for b in s.blocks] for s in m.stages]
    assert all(isinstance(b, RepMixerBlock) for b in stages[0])
    assert [b.attn.family for b in stages[1]] == ['transformer']
    assert [b.attn.family for b in stages[2]] == ['gla', 'gla']
    assert [b.attn.family for b in stages[3]] == ['retnet']
    m = plain(mixer=['gla', 'retnet', 'gla', 'transformer'])
    assert [b.attn.family for b in m.blocks] == ['gla', 'retnet', 'gla', 'transformer']


def test_scan_option_reaches_every_mixer_and_changes_output():
    x = torch.randn(1, 3, 32, 32)
    outs = {}
    for scan in ('uni', 'bi'):
        torch.manual_seed(0)
        m = plain(scan=scan, out_scales=None).eval()
        assert {b.attn.scan for b in m.blocks} == {scan}
        with torch.no_grad():
            outs[scan] = m(x)[0]
    assert not torch.allclose(outs['uni'], outs['bi'], atol=1e-4)


def test_hybrid_layers_use_softmax_attention_at_global_indices():
    m = pyramid(mixer='gla', hybrid_layers=(1, 3))       # stage 1 block 0, stage 2 block 1
    fams = [b.attn.family for b in all_blocks(m)]
    assert fams == ['gla', 'transformer', 'gla', 'transformer', 'gla']
    m = plain(hybrid_layers=(-1,))
    assert [b.attn.family for b in m.blocks] == ['gla', 'gla', 'gla', 'transformer']
    # mixer_cfg goes to the linear-attention blocks only, hybrid_cfg to the softmax ones
    m = plain(mixer_cfg=dict(gate_low_rank_dim=4), hybrid_layers=(0,),
              hybrid_cfg=dict(qkv_bias=False))
    assert m.blocks[0].attn.q_proj.bias is None
    assert m.blocks[1].attn.gk_proj[0].out_features == 4


def test_pyramid_out_indices_pick_stages():
    m = pyramid(out_indices=(1, 3)).eval()
    assert m.out_channels == [32, 64] and m.out_strides == [8, 32]
    assert not hasattr(m, 'norm0') and hasattr(m, 'norm3')
    with torch.no_grad():
        outs = m(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 32, 8, 8), (1, 64, 2, 2)]


def test_plain_out_indices_pick_blocks():
    m = plain(out_indices=(0, 1, 2, 3), out_scales=None).eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        before = m(x)
        # not a constant: the output LayerNorm would remove a shift shared by all channels
        m.blocks[3].channel_mixer.fc2.bias.add_(torch.linspace(-1, 1, 32))
        after = m(x)
    assert [tuple(o.shape) for o in before] == [(1, 32, 2, 3)] * 4
    for i in range(3):
        assert torch.equal(before[i], after[i])        # blocks 0..2 do not see block 3
    assert not torch.allclose(before[3], after[3])
    # BEiT-style: one block per pyramid scale
    m = plain(out_indices=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        outs = m(x)
    assert [tuple(o.shape[2:]) for o in outs] == [(8, 12), (4, 6), (2, 3), (1, 2)]


def _grads(model, x):
    model.zero_grad()
    sum(o.float().pow(2).mean() for o in model(x)).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def test_pyramid_frozen_stages():
    m = pyramid(frozen_stages=2, mixer=['repmixer', 'gla', 'gla', 'gla'])
    m.train()
    assert not m.patch_embed.training and not m.stages[1].training and not m.norm1.training
    assert m.stages[2].training and m.norm2.training
    assert not m.patch_embed.proj[1].training              # BN of the stem
    grads = _grads(m, torch.randn(2, 3, 32, 32))
    for name, g in grads.items():
        frozen = name.startswith(('patch_embed', 'stages.0', 'stages.1', 'norm0', 'norm1'))
        assert (g is None) == frozen, name
    bn = m.stages[0].blocks[0].token_mixer.skip
    before = bn.running_mean.clone()
    m.train()
    m(torch.randn(2, 3, 32, 32))
    assert torch.equal(before, bn.running_mean)          # frozen BN stats do not move


def test_plain_frozen_stages():
    m = plain(frozen_stages=2).train()
    assert not m.blocks[1].training and m.blocks[2].training
    grads = _grads(m, torch.randn(1, 3, 32, 32))
    assert grads['pos_embed'] is None and grads['patch_embed.proj.weight'] is None
    assert all(grads[n] is None for n in grads if n.startswith(('blocks.0.', 'blocks.1.')))
    assert all(grads[n] is not None for n in grads if n.startswith(('blocks.2.', 'blocks.3.')))
    assert grads['sfp.0.0.weight'] is not None
    m = plain(frozen_stages=0)
    assert not m.pos_embed.requires_grad and m.blocks[0].attn.q_proj.weight.requires_grad


def test_norm_eval_keeps_batchnorm_in_eval():
    m = pyramid(norm_eval=True, mixer=['repmixer', 'gla', 'gla', 'gla']).train()
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
    assert bns and all(not bn.training for bn in bns)
    assert m.stages[0].training
    m = pyramid(norm_eval=False, mixer=['repmixer', 'gla', 'gla', 'gla']).train()
    assert all(x.training for x in m.modules() if isinstance(x, nn.BatchNorm2d))


@pytest.mark.parametrize('make', [pyramid, plain])
def test_with_cp_same_outputs_and_grads(make):
    torch.manual_seed(0)
    ref = make(scan='random', drop_path_rate=0.3, with_cp=False).train()
    cp_model = make(scan='random', drop_path_rate=0.3, with_cp=True).train()
    cp_model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    outs, grads = [], []
    for model in (ref, cp_model):
        torch.manual_seed(1)
        model.zero_grad()
        o = model(x)
        sum(t.pow(2).mean() for t in o).backward()
        outs.append(o)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None})
    for a, b in zip(*outs):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for n in grads[0]:          # recomputation runs the same ops: equal up to rounding
        assert torch.allclose(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-9), n


def test_drop_path_rate_rises_linearly_and_is_stochastic_in_training():
    m = plain(drop_path_rate=0.3)
    assert [round(b.drop_path.p, 6) for b in m.blocks] == [0.0, 0.1, 0.2, 0.3]
    m = pyramid(drop_path_rate=0.4)
    assert [round(b.drop_path.p, 6) for b in all_blocks(m)] == [0.0, 0.1, 0.2, 0.3, 0.4]
    x = torch.randn(4, 3, 32, 32)
    m.train()
    with torch.no_grad():
        torch.manual_seed(0)
        a = m(x)[-1]
        torch.manual_seed(1)
        b = m(x)[-1]
        m.eval()
        c, d = m(x)[-1], m(x)[-1]
    assert not torch.allclose(a, b)
    assert torch.equal(c, d)


def test_layer_scale():
    m = plain(layer_scale=1e-3)
    assert torch.all(m.blocks[0].gamma_1 == 1e-3) and torch.all(m.blocks[3].gamma_2 == 1e-3)
    assert plain(layer_scale=None).blocks[0].gamma_1 is None
    m = pyramid(layer_scale=0.5, mixer=['repmixer', 'gla', 'gla', 'gla'])
    assert torch.all(m.stages[0].blocks[0].gamma == 0.5)
    assert torch.all(m.stages[1].blocks[0].gamma_1 == 0.5)
    # tiny residual scales make each block close to the identity
    m = plain(layer_scale=1e-6, out_indices=(0, 3), out_scales=None).eval()
    m.norm3.load_state_dict(m.norm0.state_dict())
    with torch.no_grad():
        a, b = m(torch.randn(1, 3, 32, 32))
    assert torch.allclose(a, b, atol=1e-3)


def test_pretrain_img_size_sets_pos_embed_grid_and_resizes():
    m = plain(pretrain_img_size=(64, 96))
    assert m.pos_embed.shape == (1, 4 * 6, 32)
    m = plain(pretrain_img_size=224)
    assert m.pos_embed.shape == (1, 14 * 14, 32)
    pe = torch.randn(1, 4 * 6, 8)
    assert resize_pos_embed(pe, (4, 6), (4, 6)) is pe
    up = resize_pos_embed(pe, (4, 6), (7, 3))
    assert up.shape == (1, 21, 8)
    const = torch.ones(1, 24, 8)
    assert torch.allclose(resize_pos_embed(const, (4, 6), (9, 5)), torch.ones(1, 45, 8),
                          atol=1e-5)
    # the position embedding is what the model uses: change it and the output changes
    m = plain(pretrain_img_size=64, out_scales=None).eval()
    x = torch.randn(1, 3, 48, 80)        # a 3 x 5 grid from a 4 x 4 table
    with torch.no_grad():
        a = m(x)[0]
        m.pos_embed.add_(1.0)
        b = m(x)[0]
    assert a.shape == (1, 32, 3, 5) and not torch.allclose(a, b)


def test_pos_embed_of_another_grid_is_resized_on_load():
    src = plain(pretrain_img_size=64)                  # 4 x 4 grid
    dst = plain(pretrain_img_size=96)                  # 6 x 6 grid
    state = src.state_dict()
    dst.load_state_dict(state)
    assert torch.allclose(dst.pos_embed, resize_pos_embed(src.pos_embed, (4, 4), (6, 6)))
    with_cls = {'pos_embed': torch.cat([torch.zeros(1, 1, 32), src.pos_embed.detach()], 1)}
    assert dst.adapt_state_dict(with_cls)['pos_embed'].shape == (1, 36, 32)
    with pytest.raises(ValueError, match=r'Cannot resize checkpoint pos_embed of shape '
                                         r'\(1, 15, 32\)'):
        dst.adapt_state_dict({'pos_embed': torch.zeros(1, 15, 32)})


@pytest.mark.parametrize('make', [pyramid, plain])
def test_init_cfg_pretrained_round_trip(make, tmp_path):
    torch.manual_seed(0)
    src = make()
    path = str(tmp_path / 'ckpt.pth')
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in src.state_dict().items()},
                'meta': {'note': 'fla_mm test'}}, path)
    torch.manual_seed(1)
    dst = make(init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    x = torch.randn(1, 3, 32, 32)
    src.eval(), dst.eval()
    with torch.no_grad():
        for a, b in zip(src(x), dst(x)):
            assert torch.equal(a, b)
    # a checkpoint of another shape is refused with the mismatching keys named
    other = make(layer_scale=0.1)
    with pytest.raises(RuntimeError, match='missing keys: .*gamma_1'):
        other.init_cfg = dict(type='Pretrained', checkpoint=path, prefix='backbone.')
        other.init_weights()


# ----------------------------------------------------------------------------- block variants

def test_illama_block_is_rmsnorm_swiglu_and_causal():
    m = plain(block='illama', out_scales=None, out_indices=(3,)).eval()
    blk = m.blocks[0]
    assert isinstance(blk.ln_1, RMSNorm) and isinstance(blk.ln_2, RMSNorm)
    assert hasattr(blk.channel_mixer, 'gate_proj') and blk.attn.scan == 'uni'
    assert blk.channel_mixer.gate_proj.out_features == int(32 * 8 / 3)
    # causal raster order: changing the last patch leaves every earlier token unchanged
    x = torch.randn(1, 3, 48, 48)
    y = x.clone()
    y[:, :, 32:, 32:] += 1.0
    with torch.no_grad():
        a, b = m(x)[0].flatten(2), m(y)[0].flatten(2)
    assert torch.allclose(a[..., :-1], b[..., :-1], atol=1e-5)
    assert not torch.allclose(a[..., -1], b[..., -1])
    # the default block is bidirectional: the same change reaches the first token
    m = plain(out_scales=None, out_indices=(3,)).eval()
    with torch.no_grad():
        a, b = m(x)[0].flatten(2), m(y)[0].flatten(2)
    assert not torch.allclose(a[..., 0], b[..., 0], atol=1e-5)


def test_illama_pyramid_overrides():
    m = pyramid(block='illama', scan='bi', mlp_ratio=2.0)
    blk = m.stages[1].blocks[0]
    assert isinstance(blk.ln_1, RMSNorm) and blk.attn.scan == 'bi'
    assert blk.channel_mixer.up_proj.out_features == 64


def test_stems_norms_and_ffn_widths_default_to_the_old_layouts():
    m = pyramid()
    assert isinstance(m.patch_embed.proj[1], nn.BatchNorm2d)
    assert m.stages[0].blocks[0].ln_1.eps == 1e-6 and m.norm0.eps == 1e-5
    p = plain()
    assert isinstance(p.patch_embed.proj, nn.Conv2d) and p.patch_embed.proj.kernel_size == (16, 16)
    assert isinstance(p.norm3, nn.LayerNorm) and p.norm3.eps == 1e-6
    assert p.blocks[0].channel_mixer.fc1.out_features == 128


def test_norm_eps_out_norm_and_mlp_multiple_of():
    m = pyramid(norm_eps=1e-5, out_norm='rms', ffn='swiglu', mlp_ratio=8 / 3, mlp_multiple_of=32)
    assert {b.ln_2.eps for b in all_blocks(m)} == {1e-5}
    assert isinstance(m.norm3, RMSNorm) and m.norm3.eps == 1e-5
    assert [s.blocks[0].channel_mixer.up_proj.out_features for s in m.stages] == [64, 96, 96, 192]
    p = plain(norm='rms', out_norm='rms', norm_eps=1e-5, ffn='swiglu', mlp_ratio=512 / 192)
    assert isinstance(p.norm3, RMSNorm) and p.norm3.eps == 1e-5 and p.blocks[0].ln_1.eps == 1e-5
    assert p.blocks[0].channel_mixer.up_proj.out_features == 85    # int(32 * 8 / 3)
    from fla_mm.layers.blocks import ffn_hidden
    assert [ffn_hidden(d, h / d) for d, h in ((192, 512), (49, 1), (7, 13))] == [512, 1, 13]
    assert ffn_hidden(128, 8 / 3, 32) == 352 and ffn_hidden(384, 8 / 3, 256) == 1024


def _ln2d(x, m):
    return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], m.weight, m.bias,
                        m.eps).permute(0, 3, 1, 2)


@pytest.mark.parametrize('layout', ['pyramid', 'plain'])
def test_vig_stems_compute_vigs_patch_embeddings(layout):
    """ViG-H's v2 stem (conv 3/2, LayerNorm, GELU, conv 3/2, LayerNorm) and ViG's
    V2PatchEmbed (conv 9/8, LayerNorm, SiLU, conv 3/2, LayerNorm), both eps 1e-5."""
    torch.manual_seed(0)
    if layout == 'pyramid':
        m, act, stride, x = pyramid(stem='vig_h'), F.gelu, 2, torch.randn(2, 3, 30, 21)
    else:
        m, act, stride, x = plain(stem='vig'), F.silu, 8, torch.randn(2, 3, 64, 48)
    st = m.patch_embed
    for t in (st.proj[1], st.norm):
        nn.init.normal_(t.weight, 1.0, 0.2)
        nn.init.normal_(t.bias, 0.0, 0.2)
    c1, ln1, c2 = st.proj[0], st.proj[1], st.proj[3]
    assert c1.kernel_size == (stride + 1,) * 2 and ln1.eps == st.norm.eps == 1e-5
    h = F.conv2d(x, c1.weight, c1.bias, stride, 1)
    h = F.conv2d(act(_ln2d(h, ln1)), c2.weight, c2.bias, 2, 1)
    ref = F.layer_norm(h.flatten(2).transpose(1, 2), h.shape[1:2], st.norm.weight, st.norm.bias,
                       1e-5)
    tokens, hw = st(x)
    assert hw == tuple(h.shape[2:]) and (tokens - ref).abs().max() <= 1e-6


def test_bad_stem_and_out_norm_name_the_choices():
    with pytest.raises(ValueError, match="Unknown stem 'conv'; valid: patch, conv_bn, vig_h, vig"):
        pyramid(stem='conv')
    with pytest.raises(ValueError, match="Unknown out_norm 'bn'; valid: ln, rms"):
        plain(out_norm='bn')
    with pytest.raises(ValueError, match='patch_size divisible by 4'):
        plain(stem='vig', patch_size=6)


def test_repmixer_block_reparameterize_exact():
    torch.manual_seed(0)
    blk = RepMixerBlock(16, mlp_ratio=2.0, layer_scale=0.5)
    randomize_bn(blk)
    blk.eval()
    x, hw = torch.randn(2, 7 * 9, 16), (7, 9)
    with torch.no_grad():
        before = blk(x, hw)
        blk.reparameterize()
        after = blk(x, hw)
    convs = [m for m in blk.token_mixer.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].groups == 16 and convs[0].bias is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in blk.modules())
    assert (after - before).abs().max() < 1e-5
    # the identity must be folded too: an all-zero-branch mixer is the identity
    rm = RepMixer(4, 3, layer_scale=0.0).eval()
    with torch.no_grad():
        rm.reparameterize()
        z = torch.randn(1, 4, 5, 5)
        assert torch.allclose(rm(z), z)


def test_repmixer_pyramid_reparameterize_and_train():
    torch.manual_seed(0)
    m = pyramid(mixer=['repmixer', 'repmixer', 'gla', 'gla'], layer_scale=0.3)
    x = torch.randn(2, 3, 33, 47)
    sum(o.mean() for o in m.train()(x)).backward()       # trains
    randomize_bn(m)
    m.eval()
    with torch.no_grad():
        before = m(x)
        m.reparameterize()
        after = m(x)
    assert not any(isinstance(b, nn.BatchNorm2d) for s in m.stages[:2] for b in s.modules())
    for a, b in zip(before, after):
        assert (a - b).abs().max() < 1e-5


def test_layer_ids():
    m = pyramid()
    assert m.num_layers == 5
    assert m.layer_id('patch_embed.proj.0.weight') == 0
    assert m.layer_id('stages.0.blocks.0.attn.q_proj.weight') == 1
    assert m.layer_id('stages.1.downsample.reduction.weight') == 2
    assert m.layer_id('stages.2.blocks.1.ln_1.weight') == 4
    assert m.layer_id('norm3.weight') == 6
    p = plain()
    assert [p.layer_id(n) for n in ('pos_embed', 'patch_embed.proj.weight',
                                    'blocks.0.ln_1.weight', 'blocks.3.attn.o_proj.weight',
                                    'norm3.weight', 'sfp.0.0.weight')] == [0, 0, 1, 4, 5, 5]
    names = {n for n, _ in m.named_parameters()} | {n for n, _ in p.named_parameters()}
    assert names          # every parameter name maps without error
    for model in (m, p):
        for n, _ in model.named_parameters():
            assert 0 <= model.layer_id(n) <= model.num_layers + 1


# ----------------------------------------------------------------------------- tools

def test_model_stats_adds_mixer_op_flops(capsys):
    from conftest import run_tool
    rows = run_tool('model_stats', '--layouts', 'plain', '--sizes', 'tiny', '--res', '64')
    (row,) = rows
    assert row['mixer_ops_counted'] and row['mixer_op_flops'] > 0
    assert row['flops'] == row['traced_flops'] + row['mixer_op_flops']
    assert 5e6 < row['params'] < 7e6
    out = capsys.readouterr().out
    assert 'added analytically' in out and 'plain    tiny' in out
    from fla_mm.layers.mixer import FAMILIES
    from fla_mm import ops
    assert FAMILIES['gla']['op'] is ops.gla             # the stand-ins are removed again
    assert ops.bi_decay_attn.__module__ == 'fla_mm.ops.families'


def test_model_stats_counts_the_same_work_for_fused_and_two_call_bi_scans(monkeypatch):
    """The fused and the two-call bi-scan do the same projections and scans: equal counts
    (the tracer dropped projections feeding only a replaced op, and re-ran the real op when
    its shape key held traced sizes)."""
    from conftest import load_tool
    from fla_mm import ops
    stats = load_tool('model_stats')
    fused = stats.measure('plain', 'tiny', 64)
    monkeypatch.setattr(ops, 'BI_FUSED_FAMILIES', ())
    two_call = stats.measure('plain', 'tiny', 64)
    assert fused['mixer_op_flops'] > 0
    assert {k: fused[k] for k in ('traced_flops', 'mixer_op_flops')} == {
        k: two_call[k] for k in ('traced_flops', 'mixer_op_flops')}


@pytest.mark.parametrize('name', ['FLAPyramid', 'FLAPlain'])
def test_unknown_backbone_argument_lists_valid_ones(name):
    from mmengine.registry import MODELS
    with pytest.raises(TypeError, match=r'unknown argument\(s\) drop_rate; valid arguments: arch'):
        MODELS.build(dict(type=name, drop_rate=0.1))


@pytest.mark.parametrize('family', sorted(set(FAMILIES) - {'transformer'}))
def test_every_family_trains_in_a_hybrid_pyramid(family):
    """Each family as the linear-attention stages of a pyramid with a softmax-attention block
    (a hybrid), bi-scan: forward at a size that is not a multiple of the chunks, backward,
    and every parameter gets a finite gradient."""
    m = pyramid(mixer=family, hybrid_layers=(3,))
    assert m.stages[2].blocks[1].attn.family == 'transformer'
    x = torch.randn(1, 3, 40, 56)
    sum((f * torch.randn_like(f)).sum() for f in m(x)).backward()   # not LN-invariant
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
