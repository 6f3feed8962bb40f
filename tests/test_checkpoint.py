"""Checkpoint formats: detection, conversion, resizing, strict loading and clear errors.

timm DeiT is compared numerically twice: against timm itself where it imports (GPU machine
with timm + torchvision) and, everywhere, against a reference forward written here from the
ViT / DeiT math on a checkpoint in timm's key layout. HF-FLA and ViG checkpoints are built
from the documented key layouts by renaming an fla_mm backbone's keys the inverse way; every
tensor must land back where it came from.
"""
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from fla_mm import FLAPlain, FLAPyramid
from fla_mm.checkpoint import (CheckpointError, detect_format, load_pretrained,
                               read_checkpoint)
from fla_mm.layers import FAMILIES

from conftest import run_tool

DIM, DEPTH, HEADS = 32, 2, 2
PLAIN_ARCH = dict(embed_dims=DIM, depth=DEPTH, num_heads=HEADS)


def plain(**kw):
    kw = {**dict(arch=PLAIN_ARCH, drop_path_rate=0.0, pretrain_img_size=64), **kw}
    return FLAPlain(**kw)


def pyramid(**kw):
    kw = {**dict(arch=dict(embed_dims=[16, 32, 32, 64], depths=[1, 1, 1, 1],
                           num_heads=[1, 2, 2, 4]), drop_path_rate=0.0), **kw}
    return FLAPyramid(**kw)


def load(model, path, **kw):
    model.init_cfg = dict(type='Pretrained', checkpoint=str(path), **kw)
    model.init_weights()
    return model


def assert_one_line(err):
    assert '\n' not in str(err.value) and 'Traceback' not in str(err.value)


# ------------------------------------------------------------------------- timm DeiT layout

def deit_state(dim=DIM, depth=DEPTH, grid=4, patch=16, seed=0):
    """A random checkpoint in timm's VisionTransformer key layout (every tensor random,
    norms included, so a misplaced tensor shows)."""
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=0.2):
        return torch.randn(*s, generator=g) * scale

    sd = {'cls_token': r(1, 1, dim), 'pos_embed': r(1, 1 + grid * grid, dim),
          'patch_embed.proj.weight': r(dim, 3, patch, patch, scale=0.05),
          'patch_embed.proj.bias': r(dim), 'norm.weight': 1 + r(dim), 'norm.bias': r(dim),
          'head.weight': r(10, dim), 'head.bias': r(10)}
    for i in range(depth):
        b = f'blocks.{i}.'
        sd.update({b + 'norm1.weight': 1 + r(dim), b + 'norm1.bias': r(dim),
                   b + 'attn.qkv.weight': r(3 * dim, dim), b + 'attn.qkv.bias': r(3 * dim),
                   b + 'attn.proj.weight': r(dim, dim), b + 'attn.proj.bias': r(dim),
                   b + 'norm2.weight': 1 + r(dim), b + 'norm2.bias': r(dim),
                   b + 'mlp.fc1.weight': r(4 * dim, dim), b + 'mlp.fc1.bias': r(4 * dim),
                   b + 'mlp.fc2.weight': r(dim, 4 * dim), b + 'mlp.fc2.bias': r(dim)})
    return sd


def deit_reference(sd, x, num_heads, eps=1e-6):
    """ViT / DeiT forward_features (Dosovitskiy et al. 2021; timm's VisionTransformer):
    patchify, prepend the class token, add position embeddings (the patch grid resized as
    timm does: bicubic with antialias), pre-norm blocks of softmax attention and a GELU MLP,
    final LayerNorm. Returns all tokens [B, 1 + N, C]."""
    w = sd
    t = F.conv2d(x, w['patch_embed.proj.weight'], w['patch_embed.proj.bias'],
                 stride=w['patch_embed.proj.weight'].shape[-1])
    B, C, H, W = t.shape
    t = t.flatten(2).transpose(1, 2)
    cls_pos, grid = w['pos_embed'][:, :1], w['pos_embed'][:, 1:]
    s = math.isqrt(grid.shape[1])
    if (H, W) != (s, s):
        grid = F.interpolate(grid.reshape(1, s, s, C).permute(0, 3, 1, 2), size=(H, W),
                             mode='bicubic', antialias=True).permute(0, 2, 3, 1).reshape(1, -1, C)
    t = torch.cat([w['cls_token'].expand(B, -1, -1), t], 1) + torch.cat([cls_pos, grid], 1)
    hd = C // num_heads
    depth = len({k.split('.')[1] for k in w if k.startswith('blocks.')})
    for i in range(depth):
        p = f'blocks.{i}.'
        y = F.layer_norm(t, (C,), w[p + 'norm1.weight'], w[p + 'norm1.bias'], eps)
        q, k, v = F.linear(y, w[p + 'attn.qkv.weight'], w[p + 'attn.qkv.bias']).reshape(
            B, -1, 3, num_heads, hd).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * hd ** -0.5).softmax(-1)
        y = (a @ v).transpose(1, 2).reshape(B, -1, C)
        t = t + F.linear(y, w[p + 'attn.proj.weight'], w[p + 'attn.proj.bias'])
        y = F.layer_norm(t, (C,), w[p + 'norm2.weight'], w[p + 'norm2.bias'], eps)
        y = F.linear(F.gelu(F.linear(y, w[p + 'mlp.fc1.weight'], w[p + 'mlp.fc1.bias'])),
                     w[p + 'mlp.fc2.weight'], w[p + 'mlp.fc2.bias'])
        t = t + y
    return F.layer_norm(t, (C,), w['norm.weight'], w['norm.bias'], eps)


def deit_plain(**kw):
    return plain(mixer='transformer', cls_token=True, out_scales=None, **kw).eval()


def patch_tokens(feat):
    return feat.flatten(2).transpose(1, 2)


@pytest.mark.parametrize('wrap', ['model', 'bare'])
@pytest.mark.parametrize('size', [(64, 64), (80, 48)])
def test_timm_layout_matches_reference_forward(tmp_path, wrap, size):
    sd = deit_state()
    path = tmp_path / 'deit.pth'
    torch.save({'model': sd} if wrap == 'model' else sd, path)
    m = load(deit_plain(pretrain_img_size=size), path)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = deit_reference(sd, x, HEADS)[:, 1:]
        out = patch_tokens(m(x)[0])
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-5


def test_timm_report_and_cls_folding(tmp_path):
    sd = deit_state()
    path = tmp_path / 'deit.pth'
    torch.save({'model': sd}, path)
    m = deit_plain(pretrain_img_size=(96, 64))
    rep = load_pretrained(m, str(path))
    assert rep['format'] == 'timm_vit' and 'detected from key' in rep['detected']
    assert set(rep['dropped']) == {'head.weight', 'head.bias'}
    assert rep['resized'] == ['pos_embed: 4x4 -> 6x4 (bicubic, antialias, as timm)']
    assert torch.equal(m.cls_token, sd['cls_token'] + sd['pos_embed'][:, :1])
    q, k, v = sd['blocks.1.attn.qkv.weight'].chunk(3)
    assert torch.equal(m.blocks[1].attn.k_proj.weight, k)
    assert torch.equal(m.blocks[1].attn.o_proj.bias, sd['blocks.1.attn.proj.bias'])
    assert torch.equal(m.norm1.weight, sd['norm.weight'])
    assert 'Loaded' in rep['summary'] and 'dropped 2' in rep['summary']


def test_timm_into_model_without_cls_token_drops_it_loudly(tmp_path):
    path = tmp_path / 'deit.pth'
    torch.save(deit_state(), path)
    rep = load_pretrained(plain(mixer='transformer'), str(path))
    assert 'cls_token' in rep['dropped'] and 'cls_token=True' in rep['dropped']['cls_token']
    assert rep['new'] and all(k.startswith('sfp.') for k in rep['new'])


def test_cls_token_needs_grid_free_mixers():
    with pytest.raises(ValueError, match='cls_token=True needs mixers'):
        plain(mixer='gla', scan='cross', cls_token=True)
    m = plain(mixer='gla', scan='bi', cls_token=True, out_scales=None).eval()
    assert m(torch.randn(1, 3, 48, 80))[0].shape == (1, DIM, 3, 5)


# --------------------------------------------------------------- timm itself (GPU machine)

def _timm_model(timm, **kw):
    return timm.create_model('deit_tiny_patch16_224', pretrained=False, **kw).eval()


@pytest.mark.parametrize('wrap', ['model', 'bare'])
def test_timm_deit_tiny_equivalence(tmp_path, wrap):
    timm = pytest.importorskip('timm')
    torch.manual_seed(0)
    src = _timm_model(timm)
    sd = src.state_dict()
    path = tmp_path / 'deit_tiny.pth'
    torch.save({'model': sd} if wrap == 'model' else sd, path)
    ours = FLAPlain('tiny', mixer='transformer', cls_token=True, out_scales=None,
                    drop_path_rate=0.0).eval()
    load(ours, path)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = src.forward_features(x)[:, 1:]
        out = patch_tokens(ours(x)[0])
    assert (out - ref).abs().max().item() <= 1e-5

    # another input size: timm resamples its position embedding on the fly (dynamic_img_size);
    # fla_mm resizes it once on load to pretrain_img_size, the same way
    dyn = _timm_model(timm, dynamic_img_size=True)
    dyn.load_state_dict(sd)
    ours = FLAPlain('tiny', mixer='transformer', cls_token=True, out_scales=None,
                    drop_path_rate=0.0, pretrain_img_size=(320, 256)).eval()
    load(ours, path)
    x = torch.randn(1, 3, 320, 256)
    with torch.no_grad():
        ref = dyn.forward_features(x)[:, 1:]
        out = patch_tokens(ours(x)[0])
    assert out.shape == ref.shape == (1, 20 * 16, 192)
    assert (out - ref).abs().max().item() <= 1e-5


# --------------------------------------------------------------------- Hugging Face (fla-zoo)

def to_hf(state, depth):
    """fla_mm FLAPlain keys -> fla-zoo *ForImageClassification keys, plus pooler and head."""
    out = {}
    for k, v in state.items():
        if k.startswith('sfp.'):
            continue
        if k.startswith('patch_embed.proj.'):
            k = 'embeddings.patch_embeddings.projection.' + k.rsplit('.', 1)[1]
        elif k == 'pos_embed':
            k = 'embeddings.position_embeddings'
        elif k.startswith(f'norm{depth - 1}.'):
            k = 'layernorm.' + k.split('.', 1)[1]
        elif k.startswith('blocks.'):
            k = 'encoder.' + k.replace('channel_mixer.fc1.', 'channel_mixer.net.0.').replace(
                'channel_mixer.fc2.', 'channel_mixer.net.2.')
        out['backbone.' + k] = v.clone()
    dim = state['pos_embed'].shape[-1]
    out.update({'backbone.pooler.dense.weight': torch.randn(dim, dim),
                'backbone.pooler.dense.bias': torch.randn(dim),
                'classifier.weight': torch.randn(10, dim), 'classifier.bias': torch.randn(10)})
    return out


def hf_folder(tmp_path, state, weights='model.safetensors'):
    folder = tmp_path / 'hf'
    folder.mkdir(exist_ok=True)
    if weights.endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / weights))
    else:
        torch.save(state, folder / weights)
    (folder / 'config.json').write_text(json.dumps(dict(
        model_type='gla_vision', hidden_size=DIM, num_hidden_layers=DEPTH, num_heads=HEADS,
        image_size=64, patch_size=16)))
    return folder


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_hf_fla_round_trip_every_family(tmp_path, family):
    torch.manual_seed(0)
    src = plain(mixer=family, out_scales=None)
    src.init_weights()
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in src.state_dict().items()}
    folder = hf_folder(tmp_path, to_hf(state, DEPTH))
    torch.manual_seed(1)
    dst = load(plain(mixer=family, out_scales=None), folder)
    for k, v in state.items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_hf_fla_bin_file_swiglu_and_report(tmp_path):
    src = plain(mixer='gla', ffn='swiglu')     # fla GatedMLP names: gate/up/down_proj
    hf = to_hf(src.state_dict(), DEPTH)
    hf['backbone.embeddings.mask_token'] = torch.zeros(1, 1, DIM)
    folder = hf_folder(tmp_path, hf, 'pytorch_model.bin')
    dst = plain(mixer='gla', ffn='swiglu', pretrain_img_size=(96, 48))
    rep = load_pretrained(dst, str(folder / 'pytorch_model.bin'))
    assert rep['format'] == 'hf_fla'
    assert set(rep['dropped']) == {'backbone.pooler.dense.weight', 'backbone.pooler.dense.bias',
                                   'classifier.weight', 'classifier.bias',
                                   'backbone.embeddings.mask_token'}
    assert rep['resized'] and '6x3' in rep['resized'][0]
    assert {k.split('.')[0] for k in rep['new']} == {'sfp'}
    assert torch.equal(dst.blocks[1].channel_mixer.up_proj.weight,
                       src.blocks[1].channel_mixer.up_proj.weight)


def test_hf_fla_truncated_file_is_one_clear_error(tmp_path):
    folder = hf_folder(tmp_path, to_hf(plain().state_dict(), DEPTH))
    f = folder / 'model.safetensors'
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(CheckpointError, match='Cannot read checkpoint .*model.safetensors') as e:
        load(plain(), folder)
    assert_one_line(e)
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(CheckpointError, match='has no weights file'):
        load(plain(), empty)


def test_hf_fla_wrong_family_lists_keys(tmp_path):
    folder = hf_folder(tmp_path, to_hf(plain(mixer='gla').state_dict(), DEPTH))
    with pytest.raises(CheckpointError, match=r"\(hf_fla format, detected from key .*missing "
                                              r"keys: \[blocks.\{i\}.attn.b_proj.weight") as e:
        load(plain(mixer='delta_net'), folder)
    assert 'strict=False' in str(e.value)
    assert_one_line(e)


# ------------------------------------------------------------------------------ ViG / ViG-H

VIG_MIXER = dict(direction_gates=True, locality=True, fuse_norm=False)


def to_vig_attn(state, src, dst, out):
    """fla_mm gla mixer -> ViG GatedLinearAttention keys (+ the ViG-only tensors)."""
    out[dst + 'qkv_proj.weight'] = torch.cat([state[src + f'{n}_proj.weight'] for n in 'qkv'])
    for name in ('gk_proj.0.weight', 'gk_proj.1.weight', 'gk_proj.1.bias', 'g_proj.weight',
                 'o_proj.weight'):
        out[dst + name] = state[src + name]
    norm = 'g_norm.weight' if src + 'g_norm.weight' in state else 'g_norm_swish_gate.weight'
    out[dst + 'g_norm.weight'] = state[src + norm]
    out[dst + 'in_proj.0.weight'] = state[src + 'local_conv.weight']
    width = state[src + 'g_proj.weight'].shape[0]
    out[dst + 'g_proj.bias'] = torch.randn(width)
    out[dst + 'l_norm.weight'] = torch.randn(state[src + 'o_proj.weight'].shape[1] // 2)


def to_vig_swiglu(state, src, dst, out, fused, down):
    out[dst + fused] = torch.cat([state[src + 'gate_proj.weight'], state[src + 'up_proj.weight']])
    out[dst + down] = state[src + 'down_proj.weight']


def vig_source(**kw):
    torch.manual_seed(0)
    m = plain(mixer='gla', mixer_cfg=VIG_MIXER, norm='rms', ffn='swiglu', out_scales=None, **kw)
    m.init_weights()
    for blk in m.blocks:
        torch.nn.init.zeros_(blk.attn.local_conv.bias)   # ViG's conv has no bias
    return m


def to_vig(state):
    out = {'patch_embed.proj.weight': state['patch_embed.proj.weight'],
           'patch_embed.proj.bias': state['patch_embed.proj.bias'],
           'pos_embed': state['pos_embed'], 'norm.weight': torch.randn(DIM),
           'head.weight': torch.randn(10, DIM), 'head.bias': torch.randn(10)}
    for i in range(DEPTH):
        s, d = f'blocks.{i}.', f'blocks.{i}.'
        out[d + 'attn_norm.weight'] = state[s + 'ln_1.weight']
        out[d + 'mlp_norm.weight'] = state[s + 'ln_2.weight']
        to_vig_attn(state, s + 'attn.', d + 'attn.', out)
        to_vig_swiglu(state, s + 'channel_mixer.', d + 'mlp.', out, 'gate_proj.weight',
                      'down_proj.weight')
    return out


def test_vig_plain_lands_where_it_should(tmp_path):
    src = vig_source()
    state = src.state_dict()
    path = tmp_path / 'vig_t.pth'
    torch.save({'model': to_vig(state)}, path)
    assert detect_format(read_checkpoint(str(path))[0])[0] == 'vig'
    with pytest.raises(CheckpointError, match=r'vig format.*l_norm.weight \(x2\).*'
                                              r'strict=False') as e:
        load(vig_source(), path)
    assert_one_line(e)
    torch.manual_seed(3)
    dst = plain(mixer='gla', mixer_cfg=VIG_MIXER, norm='rms', ffn='swiglu', out_scales=None)
    rep = load_pretrained(dst, str(path), strict=False)
    assert set(rep['dropped']) == {'head.weight', 'head.bias'}
    assert {k.split('.')[-2] for k in rep['unmapped'] if k.startswith('blocks')} == \
        {'g_proj', 'l_norm'}
    assert 'norm.weight' in rep['unmapped'] and 'ViG weights are an initialisation' in \
        rep['summary']
    for k, v in state.items():
        if k.startswith('norm1.'):
            continue                                    # ViG's final RMSNorm has no counterpart
        assert torch.equal(dst.state_dict()[k], v), k
    assert not rep['missing'] and set(rep['new']) == {'norm1.bias', 'norm1.weight'}
    # fused norm-gate mixers take g_norm into g_norm_swish_gate
    fused = plain(mixer='gla', mixer_cfg=dict(direction_gates=True, locality=True), norm='rms',
                  ffn='swiglu', out_scales=None)
    load_pretrained(fused, str(path), strict=False)
    assert torch.equal(fused.blocks[0].attn.g_norm_swish_gate.weight,
                       state['blocks.0.attn.g_norm.weight'])


def pyramid_vig(**kw):
    return pyramid(mixer='gla', mixer_cfg=VIG_MIXER, ffn='swiglu', **kw)


def to_vig_h(state, old_names=False):
    out = {'patch_embed.0.weight': state['patch_embed.proj.0.weight'],
           'patch_embed.0.bias': state['patch_embed.proj.0.bias'],
           'patch_embed.2.weight': torch.randn(8), 'patch_embed.2.bias': torch.randn(8),
           'patch_embed.5.weight': state['patch_embed.proj.3.weight'],
           'patch_embed.5.bias': state['patch_embed.proj.3.bias'],
           'patch_embed.7.weight': state['patch_embed.norm.weight'],
           'patch_embed.7.bias': state['patch_embed.norm.bias'],
           'classifier.norm.weight': state['norm3.weight'],
           'classifier.norm.bias': state['norm3.bias'],
           'classifier.head.weight': torch.randn(10, 64), 'classifier.head.bias': torch.randn(10)}
    for i in range(4):
        s, d = f'stages.{i}.blocks.0.', f'layers.{i}.blocks.0.'
        for a, b in (('ln_1', 'norm'), ('ln_2', 'norm2')):
            out[d + b + '.weight'] = state[s + a + '.weight']
            out[d + b + '.bias'] = state[s + a + '.bias']
        to_vig_attn(state, s + 'attn.', d + 'op.', out)
        to_vig_swiglu(state, s + 'channel_mixer.', d + 'mlp.', out, 'fc1.weight', 'fc2.weight')
        if i < 3:
            ds = f'stages.{i + 1}.downsample.'
            for a, b in (('reduction', '1'), ('norm', '3')):
                out[f'layers.{i}.downsample.{b}.weight'] = state[ds + a + '.weight']
                out[f'layers.{i}.downsample.{b}.bias'] = state[ds + a + '.bias']
    if old_names:       # names of earlier ViG-H code, renamed by ViG on load
        out = {k.replace('.blocks.0.norm.', '.blocks.0.ln_1.').replace('.op.', '.self_attention.')
               .replace('classifier.norm.', 'norm.').replace('classifier.head.', 'head.')
               .replace('patch_embed.0.', 'patch_embed.proj.'): v for k, v in out.items()}
    return out


@pytest.mark.parametrize('old_names', [False, True])
def test_vig_h_lands_where_it_should(tmp_path, old_names):
    torch.manual_seed(0)
    src = pyramid_vig()
    src.init_weights()
    for stage in src.stages:
        torch.nn.init.zeros_(stage.blocks[0].attn.local_conv.bias)
    state = src.state_dict()
    path = tmp_path / 'vig_h.pth'
    torch.save({'model': to_vig_h(state, old_names)}, path)
    with pytest.raises(CheckpointError, match=r'missing keys: \[patch_embed.proj.1.bias'):
        load(pyramid_vig(), path)
    torch.manual_seed(5)
    dst = pyramid_vig()
    rep = load_pretrained(dst, str(path), strict=False)
    assert rep['format'] == 'vig'
    assert set(rep['dropped']) == {'classifier.head.weight', 'classifier.head.bias'}
    assert {'patch_embed.2.weight', 'patch_embed.2.bias'} <= set(rep['unmapped'])
    assert all(k.startswith('patch_embed.proj.1.') for k in rep['missing'])
    assert sorted({k.split('.')[0] for k in rep['new']}) == ['norm0', 'norm1', 'norm2']
    for k, v in state.items():
        if k.startswith(('patch_embed.proj.1.', 'norm0.', 'norm1.', 'norm2.')):
            continue
        assert torch.equal(dst.state_dict()[k], v), k


def test_vig_h_into_plain_is_refused(tmp_path):
    path = tmp_path / 'vig_h.pth'
    torch.save({'model': to_vig_h(pyramid_vig().state_dict())}, path)
    with pytest.raises(CheckpointError, match='ViG-H checkpoint .*build FLAPyramid, not '
                                              'FLAPlain') as e:
        load(plain(), path)
    assert_one_line(e)


# ----------------------------------------------------------------------------------- fla_mm

@pytest.mark.parametrize('make', [plain, pyramid])
@pytest.mark.parametrize('prefix', [None, 'backbone.'])
def test_fla_mm_checkpoint_with_and_without_prefix(tmp_path, make, prefix):
    torch.manual_seed(0)
    src = make()
    src.init_weights()
    path = tmp_path / 'seg.pth'
    sd = {f'backbone.{k}': v for k, v in src.state_dict().items()}
    sd['decode_head.conv_seg.weight'] = torch.zeros(3, 4, 1, 1)
    torch.save({'state_dict': sd, 'meta': {'epoch': 1}}, path)
    torch.manual_seed(1)
    dst = make()
    rep = load_pretrained(dst, str(path), prefix=prefix)
    assert rep['format'] == 'fla_mm' and rep['ok'] and rep['loaded'] == rep['total']
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    bare = tmp_path / 'bare.safetensors'
    from safetensors.torch import save_file
    save_file(src.state_dict(), str(bare))
    assert load_pretrained(make(), str(bare))['ok']


def test_fla_mm_grid_change_and_backbone_only_checkpoint(tmp_path):
    src = plain(pretrain_img_size=(64, 32))
    path = tmp_path / 'own.pth'
    torch.save({'state_dict': src.state_dict(), 'meta': {'fla_mm': {'pos_hw': [4, 2]}}}, path)
    dst = plain(pretrain_img_size=(48, 80))
    rep = load_pretrained(dst, str(path))
    assert rep['resized'] == ['pos_embed: 4x2 -> 3x5 (bicubic)']
    # a classifier-only fla_mm checkpoint (no sfp) loads strictly; sfp stays as initialised
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith('sfp.')}
    torch.save(sd, path)
    rep = load_pretrained(plain(pretrain_img_size=(64, 32)), str(path))
    assert rep['ok'] and rep['new'] and all(k.startswith('sfp.') for k in rep['new'])
    # ... but a checkpoint with part of the pyramid is an error
    sd['sfp.1.weight'] = src.state_dict()['sfp.1.weight']
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r'missing keys: \[sfp\.\{i\}\.\{i\}\.bias \(x3\)'):
        load_pretrained(plain(pretrain_img_size=(64, 32)), str(path))


# ----------------------------------------------------------------------------------- errors

def test_missing_corrupt_truncated_files(tmp_path):
    with pytest.raises(CheckpointError, match='Checkpoint file not found: .*nope.pth') as e:
        load(plain(), tmp_path / 'nope.pth')
    assert_one_line(e)
    bad = tmp_path / 'corrupt.pth'
    bad.write_bytes(os.urandom(2000))
    with pytest.raises(CheckpointError, match='Cannot read checkpoint .*corrupt.pth') as e:
        load(plain(), bad)
    assert_one_line(e)
    good = tmp_path / 'trunc.pth'
    torch.save({'model': deit_state()}, good)
    good.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match='Cannot read checkpoint .*trunc.pth') as e:
        load(plain(), good)
    assert_one_line(e)
    notdict = tmp_path / 'list.pth'
    torch.save([1, 2, 3], notdict)
    with pytest.raises(CheckpointError, match='holds no state dict'):
        load(plain(), notdict)


def resnet_state():
    return {'conv1.weight': torch.zeros(64, 3, 7, 7), 'bn1.weight': torch.ones(64),
            'layer1.0.conv1.weight': torch.zeros(64, 64, 1, 1), 'fc.weight': torch.zeros(10, 64),
            'fc.bias': torch.zeros(10)}


def test_checkpoint_of_another_architecture(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save({'state_dict': resnet_state()}, path)
    with pytest.raises(CheckpointError, match=r'Cannot tell the format .*none of fla_mm, '
                                              r'hf_fla, vig, timm_vit.*format=') as e:
        load(plain(), path)
    assert_one_line(e)
    with pytest.raises(CheckpointError, match=r'timm_vit format, given as format=.*source '
                                              r'tensors with no counterpart: \[.*conv1') as e:
        load(plain(), path, format='timm_vit')
    assert_one_line(e)
    with pytest.raises(CheckpointError, match="Unknown checkpoint format 'mmcls'"):
        load(plain(), path, format='mmcls')
    torch.save({'model': deit_state()}, path)
    with pytest.raises(CheckpointError, match='timm ViT / DeiT checkpoints have the plain layout'):
        load(pyramid(), path)


def test_mismatched_width(tmp_path):
    path = tmp_path / 'wide.pth'
    torch.save({'model': deit_state(dim=48)}, path)
    with pytest.raises(CheckpointError, match=r'shape mismatches: \[.*checkpoint \(48, 3, 16, 16\) '
                                              r'vs model \(32, 3, 16, 16\).*48 channels wide, '
                                              r'the model 32') as e:
        load(deit_plain(), path)
    assert_one_line(e)
    rep = load_pretrained(deit_plain(), str(path), strict=False)
    assert rep['loaded'] == 0 and not rep['ok']


def test_existing_strict_message_names_missing_keys(tmp_path):
    """The backbone's init_weights path keeps its RuntimeError with named missing keys."""
    path = tmp_path / 'ck.pth'
    torch.save({'state_dict': plain().state_dict()}, path)
    with pytest.raises(RuntimeError, match='missing keys: .*gamma_1'):
        load(plain(layer_scale=0.1), path)


# ------------------------------------------------------------------------------------- tool

@pytest.mark.parametrize('ext', ['safetensors', 'pth'])
def test_convert_tool_timm_round_trip(tmp_path, ext, capsys):
    sd = deit_state()
    src = tmp_path / 'deit.pth'
    torch.save({'model': sd}, src)
    dst = tmp_path / f'out.{ext}'
    assert run_tool('convert_checkpoint', str(src), str(dst), '--img-size', '80', '48') == 0
    out = capsys.readouterr().out
    assert 'Wrote' in out and 'dropped' in out and 'resized' in out and '4x4 -> 5x3' in out
    state, meta, _ = read_checkpoint(str(dst))
    assert meta['fla_mm']['format'] == 'timm_vit' and meta['fla_mm']['pos_hw'] == [5, 3]
    assert 'head.weight' not in state and 'blocks.0.attn.q_proj.weight' in state
    m = deit_plain(pretrain_img_size=(80, 48))
    rep = load_pretrained(m, str(dst))
    assert rep['format'] == 'fla_mm' and rep['ok']
    x = torch.randn(1, 3, 80, 48)
    with torch.no_grad():
        ref = deit_reference(sd, x, HEADS)[:, 1:]
        assert (patch_tokens(m(x)[0]) - ref).abs().max() <= 1e-5


def test_convert_tool_vig_needs_no_strict_and_errors_cleanly(tmp_path, capsys):
    src = tmp_path / 'vig_h.pth'
    torch.save({'model': to_vig_h(pyramid_vig().state_dict())}, src)
    dst = tmp_path / 'vig_h_fla.pth'
    arch = json.dumps(dict(type='FLAPyramid', arch=dict(embed_dims=[16, 32, 32, 64],
                                                        depths=[1, 1, 1, 1],
                                                        num_heads=[1, 2, 2, 4]),
                           mixer='gla', mixer_cfg=VIG_MIXER, ffn='swiglu'))
    assert run_tool('convert_checkpoint', str(src), str(dst), '--arch', arch) == 1
    assert 'error: Checkpoint' in capsys.readouterr().err
    assert run_tool('convert_checkpoint', str(src), str(dst), '--arch', arch,
                    '--no-strict') == 0
    assert 'partial' in capsys.readouterr().out
    assert run_tool('convert_checkpoint', str(tmp_path / 'none.pth'), str(dst)) == 1
    assert 'not found' in capsys.readouterr().err
