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
import re

import pytest
import torch
import torch.nn.functional as F

from fla_mm import FLAPlain, FLAPyramid
from fla_mm.checkpoint import (CheckpointError, detect_format, load_pretrained,
                               read_checkpoint)
from fla_mm.backbones import build_backbone
from fla_mm.layers import FAMILIES, TokenMixer

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


def hf_folder(tmp_path, state, weights='model.safetensors', model_type='gla_vision', **config):
    """An fla-zoo folder: the weights and a config.json (``model_type=None``: without one
    fla_mm knows; ``config``: further entries, e.g. norm_eps)."""
    folder = tmp_path / 'hf'
    folder.mkdir(exist_ok=True)
    if weights.endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / weights))
    else:
        torch.save(state, folder / weights)
    entries = dict(model_type=model_type, hidden_size=DIM, num_hidden_layers=DEPTH,
                   num_heads=HEADS, image_size=64, patch_size=16)
    entries.update(config)
    (folder / 'config.json').write_text(json.dumps(
        {k: v for k, v in entries.items() if v is not None}))
    return folder


def hf_model_type(family):
    """fla-zoo's model_type of an fla_mm family (None: fla-zoo has no such model)."""
    from fla_mm.checkpoint.arch import HF_FAMILIES
    return next((f'{k}_vision' for k, f in HF_FAMILIES.items() if f == family), None)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_hf_fla_round_trip_every_family(tmp_path, family):
    # fla-zoo's attention is rotary at base 10000: the model must be so too (config.json check)
    kw = dict(mixer=family, out_scales=None,
              mixer_cfg=dict(rope_theta=10000.0) if family == 'transformer' else None)
    torch.manual_seed(0)
    src = plain(**kw)
    src.init_weights()
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in src.state_dict().items()}
    folder = hf_folder(tmp_path, to_hf(state, DEPTH), model_type=hf_model_type(family))
    torch.manual_seed(1)
    dst = load(plain(**kw), folder)
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


def test_hf_fla_config_sets_the_architecture():
    """config.json -> backbone: block / final LayerNorm eps (layer_norm_eps), the mixer's
    options, the scan (only fla-zoo's uni-scan is the same function), family quirks."""
    from fla_mm.checkpoint.arch import infer_backbone_cfg
    hf = dict(model_type='gla_vision', hidden_size=DIM, num_hidden_layers=DEPTH, num_heads=HEADS,
              image_size=64, patch_size=16, layer_norm_eps=1e-5, norm_eps=1e-6,
              train_scan_type='uni-scan', hidden_act='swish', qkv_bias=True)
    cfg = infer_backbone_cfg('hf_fla', to_hf(plain(mixer='gla').state_dict(), DEPTH), None, hf)
    assert cfg['norm_eps'] == 1e-5 and cfg['scan'] == 'uni' and cfg['mixer'] == 'gla'
    assert cfg['mixer_cfg']['norm_eps'] == 1e-6 and 'qkv_bias' not in cfg['mixer_cfg']
    assert build_backbone(cfg).norm1.eps == 1e-5
    hf.update(model_type='hgrn2_vision', test_scan_type='bi-scan')
    cfg = infer_backbone_cfg('hf_fla', {}, None, hf)
    assert 'norm_eps' not in cfg['mixer_cfg'] and cfg['scan'] == 'bi'   # FLA: always 1e-5
    hf.update(model_type='transformer_vision')
    state = to_hf(plain(mixer='transformer', mixer_cfg=dict(qkv_bias=False, o_bias=False))
                  .state_dict(), DEPTH)
    cfg = infer_backbone_cfg('hf_fla', state, None, hf)
    assert cfg['mixer_cfg'] == dict(qkv_bias=False, o_bias=False, rope_theta=10000.0,
                                    causal=False)


def test_hf_fla_config_options_that_change_the_function_stop_the_load(tmp_path):
    """(a) An option config.json states that the tensors do not show (fla-zoo GLA's mixer
    norm_eps=1e-6, the blocks' layer_norm_eps) stops a strict load naming both values; the
    backbone built with them loads; strict=False loads and reports the difference."""
    src = plain(mixer='gla', mixer_cfg=dict(norm_eps=1e-6))
    folder = hf_folder(tmp_path, to_hf(src.state_dict(), DEPTH), norm_eps=1e-6)
    with pytest.raises(CheckpointError, match=r'another function .*mixer_cfg\.norm_eps: '
                                              r'checkpoint 1e-06 \(config.json norm_eps\) vs '
                                              r'model 1e-05.*strict=False') as e:
        load(plain(mixer='gla'), folder)
    assert_one_line(e)
    assert load_pretrained(plain(mixer='gla', mixer_cfg=dict(norm_eps=1e-6)), str(folder))['ok']
    rep = load_pretrained(plain(mixer='gla'), str(folder), strict=False)
    assert not rep['ok'] and rep['loaded'] == rep['total'] - len(rep['new'])
    assert 'another function than the checkpoint\'s: mixer_cfg.norm_eps' in rep['summary']
    (folder / 'config.json').write_text(json.dumps(dict(
        json.loads((folder / 'config.json').read_text()), layer_norm_eps=1e-5)))
    with pytest.raises(CheckpointError, match=r'norm_eps: checkpoint 1e-05 \(config.json '
                                              r'layer_norm_eps\) vs model 1e-06'):
        load(plain(mixer='gla', mixer_cfg=dict(norm_eps=1e-6)), folder)
    # a config.json fla_mm cannot read: the tensors load, the report warns it went unchecked
    folder = hf_folder(tmp_path, to_hf(src.state_dict(), DEPTH), model_type='mamba_vision')
    rep = load_pretrained(plain(mixer='gla'), str(folder))
    assert rep['ok'] and "config.json not compared with the model" in rep['option_warnings'][0]
    assert "'mamba_vision' has no fla_mm mixer family" in rep['summary']


def test_hf_fla_bi_scan_checkpoint_loads_with_a_warning(tmp_path):
    """(b) fla-zoo's bi-scan maps to scan='bi', which is another function: the report warns;
    a model of another scan is an error."""
    folder = hf_folder(tmp_path, to_hf(plain(mixer='gla').state_dict(), DEPTH),
                       train_scan_type='bi-scan')
    rep = load_pretrained(plain(mixer='gla', scan='bi'), str(folder))
    assert rep['ok'] and len(rep['option_warnings']) == 1
    assert "fla-zoo's bi-scan" in rep['option_warnings'][0]
    assert 'only uni-scan is exact' in rep['summary']
    with pytest.raises(CheckpointError, match=r"scan: checkpoint 'bi' \(config.json "
                                              r"train_scan_type='bi-scan'\) vs model 'uni'"):
        load(plain(mixer='gla', scan='uni'), folder)
    uni = hf_folder(tmp_path, to_hf(plain(mixer='gla').state_dict(), DEPTH),
                    train_scan_type='uni-scan')
    assert not load_pretrained(plain(mixer='gla', scan='uni'), str(uni))['option_warnings']


def test_position_grid_comes_from_the_checkpoint(tmp_path):
    """(c) A backbone given no pretrain_img_size takes the checkpoint's grid (config.json
    image / patch size, fla_mm's meta, or the token count), so a 64-px checkpoint computes
    its own function at 64 px instead of going 4 -> 14 -> 4."""
    kw = dict(arch=PLAIN_ARCH, mixer='gla', scan='uni', drop_path_rate=0.0, out_scales=None)
    torch.manual_seed(0)
    src = FLAPlain(pretrain_img_size=64, **kw).eval()
    src.init_weights()
    folder = hf_folder(tmp_path, to_hf(src.state_dict(), DEPTH))
    init = dict(type='Pretrained', checkpoint=str(folder))
    m = FLAPlain(init_cfg=init, **kw).eval()
    assert m.pos_hw == (4, 4) and m.pos_embed.shape == (1, 16, DIM)
    m.init_weights()
    old = load(FLAPlain(pretrain_img_size=224, **kw).eval(), folder)  # the 4 -> 14 -> 4 path
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = src(x)[0]
        assert torch.equal(m(x)[0], ref)
        assert (old(x)[0] - ref).abs().max() > 1e-4
    wide = hf_folder(tmp_path, to_hf(FLAPlain(pretrain_img_size=(64, 32), **kw).state_dict(),
                                     DEPTH), image_size=[64, 32])
    assert FLAPlain(init_cfg=dict(init, checkpoint=str(wide)), **kw).pos_hw == (4, 2)
    bare = tmp_path / 'deit.pth'
    torch.save({'model': deit_state(grid=3)}, bare)              # 1 + 9 tokens, no config
    dm = deit_plain(pretrain_img_size=None, init_cfg=dict(type='Pretrained',
                                                          checkpoint=str(bare)))
    assert dm.pos_hw == (3, 3)
    # without init_cfg (an inference model): the state dict's grid, on the same parameter
    plain_m = FLAPlain(**kw)
    param = plain_m.pos_embed
    assert plain_m.pos_hw == (14, 14)
    plain_m.load_state_dict(src.state_dict())
    assert plain_m.pos_hw == (4, 4) and plain_m.pos_embed is param
    assert torch.equal(plain_m.pos_embed, src.pos_embed)


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
# Checkpoints in the key layouts of hustvl/ViG (classification/models/vig.py, vig_h.py) with
# the widths of its code, and reference forwards written here from the equations of ViG's
# modules on those keys. fla_mm loads them strictly and must compute the same function.

def _rand(seed):
    g = torch.Generator().manual_seed(seed)
    return lambda *s, scale=0.2: torch.randn(*s, generator=g) * scale


def vig_attn_state(p, dim, heads, r):
    """ViG GatedLinearAttention / GLA2D tensors (expand_k 0.5, expand_v 1, rank-16 gates)."""
    key, s = dim // 2, dim ** -0.5
    return {p + 'in_proj.0.weight': r(dim, 1, 3, 3), p + 'qkv_proj.weight':
            r(2 * key + dim, dim, scale=s), p + 'gk_proj.0.weight': r(16, dim, scale=s),
            p + 'gk_proj.1.weight': r(2 * key, 16), p + 'gk_proj.1.bias': r(2 * key),
            p + 'o_proj.weight': r(dim, dim, scale=s), p + 'g_norm.weight': 1 + r(dim // heads),
            p + 'l_norm.weight': 1 + r(dim // heads), p + 'g_proj.weight': r(dim, dim, scale=s),
            p + 'g_proj.bias': r(dim)}


def vig_h_state(dims, depths, heads, seed=0, outnorms=False):
    """HierViG with the released options (v2 stem, ln2d, v3 downsampling, gMlp)."""
    r = _rand(seed)
    sd = {'patch_embed.0.weight': r(dims[0] // 2, 3, 3, 3), 'patch_embed.0.bias': r(dims[0] // 2),
          'patch_embed.2.weight': 1 + r(dims[0] // 2), 'patch_embed.2.bias': r(dims[0] // 2),
          'patch_embed.5.weight': r(dims[0], dims[0] // 2, 3, 3, scale=0.1),
          'patch_embed.5.bias': r(dims[0]), 'patch_embed.7.weight': 1 + r(dims[0]),
          'patch_embed.7.bias': r(dims[0])}
    for i, (d, n, h) in enumerate(zip(dims, depths, heads)):
        hidden = 32 * ((int(d * 4 * 2 / 3) + 31) // 32)         # gMlp's width rule
        for j in range(n):
            b = f'layers.{i}.blocks.{j}.'
            sd.update({b + 'norm.weight': 1 + r(d), b + 'norm.bias': r(d),
                       b + 'norm2.weight': 1 + r(d), b + 'norm2.bias': r(d),
                       b + 'mlp.fc1.weight': r(2 * hidden, d, scale=0.1),
                       b + 'mlp.fc2.weight': r(d, hidden, scale=0.1)})
            sd.update(vig_attn_state(b + 'op.', d, h, r))
        if i < len(dims) - 1:
            sd.update({f'layers.{i}.downsample.1.weight': r(dims[i + 1], d, 3, 3, scale=0.1),
                       f'layers.{i}.downsample.1.bias': r(dims[i + 1]),
                       f'layers.{i}.downsample.3.weight': 1 + r(dims[i + 1]),
                       f'layers.{i}.downsample.3.bias': r(dims[i + 1])})
        if outnorms:
            sd.update({f'outnorm{i}.weight': 1 + r(d), f'outnorm{i}.bias': r(d)})
    if not outnorms:
        sd.update({'classifier.norm.weight': 1 + r(dims[-1]), 'classifier.norm.bias': r(dims[-1]),
                   'classifier.head.weight': r(10, dims[-1]), 'classifier.head.bias': r(10)})
    return sd


def vig_state(dim, depth, grid, seed=0):
    """Plain ViG with the released options (V2PatchEmbed, GLAMLP, no class token)."""
    r = _rand(seed)
    hidden = 256 * ((int(dim * 4 * 2 / 3) + 255) // 256)        # GLAMLP's width rule
    sd = {'patch_embed.proj.0.weight': r(dim // 2, 3, 9, 9, scale=0.05),
          'patch_embed.proj.0.bias': r(dim // 2), 'patch_embed.proj.1.weight': 1 + r(dim // 2),
          'patch_embed.proj.1.bias': r(dim // 2),
          'patch_embed.proj.3.weight': r(dim, dim // 2, 3, 3, scale=0.05),
          'patch_embed.proj.3.bias': r(dim), 'patch_embed.proj.4.weight': 1 + r(dim),
          'patch_embed.proj.4.bias': r(dim), 'pos_embed': r(1, grid * grid, dim),
          'norm.weight': 1 + r(dim), 'head.weight': r(10, dim), 'head.bias': r(10)}
    for i in range(depth):
        b = f'blocks.{i}.'
        sd.update({b + 'attn_norm.weight': 1 + r(dim), b + 'mlp_norm.weight': 1 + r(dim),
                   b + 'mlp.gate_proj.weight': r(2 * hidden, dim, scale=0.1),
                   b + 'mlp.down_proj.weight': r(dim, hidden, scale=0.1)})
        sd.update(vig_attn_state(b + 'attn.', dim, dim // 64, r))
    return sd


def gla_recurrence(q, k, v, g, scale):
    """S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = scale * q_t S_t ([B, T, H, D])."""
    S = q.new_zeros(q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    out = []
    for t in range(q.shape[1]):
        S = S * g[:, t].exp()[..., None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(torch.einsum('bhk,bhkv->bhv', q[:, t] * scale, S))
    return torch.stack(out, 1)


def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def vig_mixer_reference(w, x, hw, heads, o_scale=0.5, conv_act=False, out_act=False, eps=1e-6):
    """ViG's GLA2D / GatedLinearAttention forward (eval), from its equations: everything comes
    from l = DWConv3x3(x); forward and backward GLA with their own gates; their sum times
    o_scale; g_norm(o) and l_norm(l) mixed by sigmoid(g_proj(l)); o_proj."""
    B, L, C = x.shape
    grid = x.transpose(1, 2).reshape(B, C, *hw)
    loc = F.conv2d(grid, w['in_proj.0.weight'], w.get('in_proj.0.bias'), padding=1, groups=C)
    loc = loc.flatten(2).transpose(1, 2)
    if conv_act:
        loc = F.silu(loc)
    key = w['gk_proj.1.weight'].shape[0] // 2
    q, k, v = F.linear(loc, w['qkv_proj.weight']).split([key, key, C], -1)
    gk = F.linear(F.linear(loc, w['gk_proj.0.weight']), w['gk_proj.1.weight'],
                  w['gk_proj.1.bias'])
    gf, gb = (F.logsigmoid(gk) / 16).chunk(2, -1)

    def heads_(t):
        return t.reshape(B, L, heads, -1)
    scale = (key // heads) ** -0.5
    fwd = gla_recurrence(heads_(q), heads_(k), heads_(v), heads_(gf), scale)
    bwd = gla_recurrence(*(heads_(t).flip(1) for t in (q, k, v, gb)), scale).flip(1)
    s = torch.sigmoid(heads_(F.linear(loc, w['g_proj.weight'], w['g_proj.bias'])))
    o = (rms((fwd + bwd) * o_scale, w['g_norm.weight'], eps) * s
         + rms(heads_(loc), w['l_norm.weight'], eps) * (1 - s)).reshape(B, L, C)
    return F.linear(F.silu(o) if out_act else o, w['o_proj.weight'])


def _sub(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _ln2d(x, w, b, eps=1e-5):
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, eps).permute(0, 3, 1, 2)


def vig_h_reference(sd, x, heads):
    """ViG-H (Backbone_HierViG) stage outputs from ViG-H's keys: v2 stem, pre-norm blocks
    (LayerNorm eps 1e-5, GLA2D, gMlp SwiGLU), 3x3 stride-2 downsampling, output norms
    (outnorm{i}; a classifier checkpoint: classifier.norm on the last stage, none before)."""
    h = F.conv2d(x, sd['patch_embed.0.weight'], sd['patch_embed.0.bias'], 2, 1)
    h = F.gelu(_ln2d(h, sd['patch_embed.2.weight'], sd['patch_embed.2.bias']))
    h = F.conv2d(h, sd['patch_embed.5.weight'], sd['patch_embed.5.bias'], 2, 1)
    h = _ln2d(h, sd['patch_embed.7.weight'], sd['patch_embed.7.bias'])
    outs = []
    for i, nh in enumerate(heads):
        B, C, H, W = h.shape
        t = h.flatten(2).transpose(1, 2)
        for j in range(len({k.split('.')[3] for k in sd if k.startswith(f'layers.{i}.blocks')})):
            b = f'layers.{i}.blocks.{j}.'
            y = F.layer_norm(t, (C,), sd[b + 'norm.weight'], sd[b + 'norm.bias'], 1e-5)
            t = t + vig_mixer_reference(_sub(sd, b + 'op.'), y, (H, W), nh)
            y = F.layer_norm(t, (C,), sd[b + 'norm2.weight'], sd[b + 'norm2.bias'], 1e-5)
            gate, up = F.linear(y, sd[b + 'mlp.fc1.weight']).chunk(2, -1)
            t = t + F.linear(F.silu(gate) * up, sd[b + 'mlp.fc2.weight'])
        h = t.transpose(1, 2).reshape(B, C, H, W)
        norm = f'outnorm{i}.' if f'outnorm{i}.weight' in sd else \
            'classifier.norm.' if i == len(heads) - 1 else None
        outs.append(_ln2d(h, sd[norm + 'weight'], sd[norm + 'bias']) if norm else
                    _ln2d(h, None, None))
        if i < len(heads) - 1:
            h = F.conv2d(h, sd[f'layers.{i}.downsample.1.weight'],
                         sd[f'layers.{i}.downsample.1.bias'], 2, 1)
            h = _ln2d(h, sd[f'layers.{i}.downsample.3.weight'], sd[f'layers.{i}.downsample.3.bias'])
    return outs


def vig_reference(sd, x, heads):
    """Plain ViG forward_features ('feat'): V2PatchEmbed (conv 9/8 - LayerNorm2d - SiLU -
    conv 3/2 - LayerNorm2d), + pos_embed (bicubic to the grid), RMSNorm (eps 1e-6) pre-norm
    blocks of GatedLinearAttention (eval: the directions' sum halved twice) and GLAMLP, final
    RMSNorm."""
    h = F.conv2d(x, sd['patch_embed.proj.0.weight'], sd['patch_embed.proj.0.bias'], 8, 1)
    h = F.silu(_ln2d(h, sd['patch_embed.proj.1.weight'], sd['patch_embed.proj.1.bias']))
    h = F.conv2d(h, sd['patch_embed.proj.3.weight'], sd['patch_embed.proj.3.bias'], 2, 1)
    h = _ln2d(h, sd['patch_embed.proj.4.weight'], sd['patch_embed.proj.4.bias'])
    B, C, H, W = h.shape
    pe = sd['pos_embed']
    s = math.isqrt(pe.shape[1])
    if (H, W) != (s, s):
        pe = F.interpolate(pe.reshape(1, s, s, C).permute(0, 3, 1, 2), size=(H, W),
                           mode='bicubic', align_corners=False).flatten(2).transpose(1, 2)
    t = h.flatten(2).transpose(1, 2) + pe
    for i in range(len({k.split('.')[1] for k in sd if k.startswith('blocks.')})):
        b = f'blocks.{i}.'
        t = t + vig_mixer_reference(_sub(sd, b + 'attn.'), rms(t, sd[b + 'attn_norm.weight'],
                                                                1e-6), (H, W), heads, 0.25)
        gate, up = F.linear(rms(t, sd[b + 'mlp_norm.weight'], 1e-6),
                            sd[b + 'mlp.gate_proj.weight']).chunk(2, -1)
        t = t + F.linear(F.silu(gate) * up, sd[b + 'mlp.down_proj.weight'])
    return rms(t, sd['norm.weight'], 1e-6).transpose(1, 2).reshape(B, C, H, W)


VIG_H_DIMS, VIG_H_HEADS = [32, 64, 64, 128], [1, 2, 2, 4]     # heads = dim // 32 as inferred


def vig_backbone(path):
    """The backbone that tools/convert_checkpoint.py infers from the checkpoint."""
    from fla_mm.checkpoint.arch import infer_backbone_cfg
    cfg = infer_backbone_cfg('vig', read_checkpoint(str(path))[0])
    return build_backbone(cfg).eval(), cfg


@pytest.mark.parametrize('outnorms', [False, True])
def test_vig_h_reproduces_vig_h(tmp_path, outnorms):
    sd = vig_h_state(VIG_H_DIMS, [1, 2, 1, 1], VIG_H_HEADS, outnorms=outnorms)
    path = tmp_path / 'vig_h.pth'
    torch.save({'model': sd}, path)
    m, cfg = vig_backbone(path)
    assert cfg['arch']['num_heads'] == VIG_H_HEADS and cfg['mixer'] == 'vig_gla'
    rep = load_pretrained(m, str(path))                 # strict
    assert rep['format'] == 'vig' and rep['ok'] and not rep['unmapped']
    assert set(rep['dropped']) == (set() if outnorms else
                                   {'classifier.head.weight', 'classifier.head.bias'})
    assert set(rep['new']) == (set() if outnorms else
                               {f'norm{i}.{p}' for i in range(3) for p in ('weight', 'bias')})
    if not outnorms:        # stages 0-2 of a classifier checkpoint: LayerNorms at their init
        assert all((getattr(m, f'norm{i}').weight == 1).all() for i in range(3))
    widths = [s.blocks[0].channel_mixer.down_proj.in_features for s in m.stages]
    assert widths == [96, 192, 192, 352]            # gMlp: ceil32(int(8 * dim / 3))
    gen = torch.Generator().manual_seed(0)
    for shape in [(32, 32), (44, 28)]:
        x = torch.randn(2, 3, *shape, generator=gen)
        with torch.no_grad():
            ref = vig_h_reference(sd, x, VIG_H_HEADS)
            out = m(x)
        for a, b in zip(out, ref):   # fp32 rounding through 5 blocks: relative to the outputs
            assert a.shape == b.shape
            assert (a - b).abs().max() <= 1e-5 * b.abs().max().clamp_min(1)


def test_vig_h_report_names_ignored_entries_and_output_norms(tmp_path):
    """(d) The report names the file's entries it did not load (an EMA copy beside
    'model'), the output norm filled from the classifier's final norm and the new ones."""
    sd = vig_h_state(VIG_H_DIMS, [1, 1, 1, 1], VIG_H_HEADS)
    path = tmp_path / 'vig_h.pth'
    torch.save({'model': sd, 'model_ema': dict(sd), 'epoch': 299}, path)
    m, _ = vig_backbone(path)
    rep = load_pretrained(m, str(path))
    assert set(rep['ignored']) == {'model_ema', 'epoch'}
    assert rep['ignored']['model_ema'].startswith(f'a dict of {len(sd)} tensors')
    assert rep['filled'] == {'norm3': 'classifier.norm'}
    assert "model_ema: a dict of" in rep['summary'] and "beside 'model'" in rep['summary']
    assert "output norms filled from the classifier's final norm: norm3 <- classifier.norm" \
        in rep['summary']
    assert 'new output norms (not in the checkpoint, at their initialisation): norm0, norm1, ' \
        'norm2' in rep['summary']
    own = tmp_path / 'seg.pth'            # a prefix's outside keys are named too
    torch.save({'state_dict': {**{f'backbone.{k}': v for k, v in plain().state_dict().items()},
                               'decode_head.conv_seg.weight': torch.zeros(3, 4, 1, 1)}}, own)
    rep = load_pretrained(plain(), str(own), prefix='backbone.')
    assert rep['ignored'] == {'decode_head.conv_seg.weight': "outside prefix 'backbone.'"}


def test_vig_h_every_tensor_lands_where_it_should(tmp_path):
    sd = vig_h_state(VIG_H_DIMS, [1, 1, 1, 1], VIG_H_HEADS)
    path = tmp_path / 'vig_h.pth'
    old = {re.sub(r'(blocks\.\d+)\.norm\.', r'\1.ln_1.', k.replace('.op.', '.self_attention.'))
           .replace('classifier.norm.', 'norm.').replace('classifier.head.', 'head.')
           .replace('patch_embed.0.', 'patch_embed.proj.').replace('patch_embed.2.',
                                                                    'patch_embed.norm.'): v
           for k, v in sd.items()}              # names of earlier ViG-H code, renamed on load
    torch.save({'model': old}, path)
    m, _ = vig_backbone(path)
    load_pretrained(m, str(path))
    own = m.state_dict()
    b, a = 'layers.2.blocks.0.', 'stages.2.blocks.0.'
    q, k, v = sd[b + 'op.qkv_proj.weight'].split([32, 32, 64])
    gate, up = sd[b + 'mlp.fc1.weight'].chunk(2)
    pairs = {'patch_embed.2.weight': 'patch_embed.proj.1.weight',
             'patch_embed.5.weight': 'patch_embed.proj.3.weight',
             'patch_embed.7.bias': 'patch_embed.norm.bias',
             b + 'norm.bias': a + 'ln_1.bias', b + 'norm2.weight': a + 'ln_2.weight',
             b + 'op.in_proj.0.weight': a + 'attn.local_conv.weight',
             b + 'op.gk_proj.1.bias': a + 'attn.gk_proj.1.bias',
             b + 'op.g_proj.bias': a + 'attn.g_proj.bias',
             b + 'op.l_norm.weight': a + 'attn.l_norm.weight',
             b + 'mlp.fc2.weight': a + 'channel_mixer.down_proj.weight',
             'layers.1.downsample.1.weight': 'stages.2.downsample.reduction.weight',
             'layers.1.downsample.3.bias': 'stages.2.downsample.norm.bias',
             'classifier.norm.weight': 'norm3.weight'}
    for src, dst in pairs.items():
        assert torch.equal(own[dst], sd[src]), dst
    for t, dst in ((q, 'q_proj'), (k, 'k_proj'), (v, 'v_proj')):
        assert torch.equal(own[a + f'attn.{dst}.weight'], t)
    assert torch.equal(own[a + 'channel_mixer.gate_proj.weight'], gate)
    assert torch.equal(own[a + 'channel_mixer.up_proj.weight'], up)


def test_vig_h_into_the_wrong_model_is_one_clear_error(tmp_path):
    path = tmp_path / 'vig_h.pth'
    torch.save({'model': vig_h_state(VIG_H_DIMS, [1, 1, 1, 1], VIG_H_HEADS)}, path)
    with pytest.raises(CheckpointError, match='ViG-H checkpoint .*build FLAPyramid, not '
                                              'FLAPlain') as e:
        load(plain(), path)
    assert_one_line(e)
    m = FLAPyramid(arch=dict(embed_dims=VIG_H_DIMS, depths=[1, 1, 1, 1], num_heads=VIG_H_HEADS),
                   mixer='vig_gla', norm_eps=1e-5, ffn='swiglu', mlp_ratio=8 / 3,
                   mlp_multiple_of=32)                  # BatchNorm stem: not ViG-H's
    with pytest.raises(CheckpointError, match=r'missing keys: \[patch_embed.proj.1.bias.*'
                                              r'stem="vig_h".*fla_mm builds ViG') as e:
        load(m, path)
    assert_one_line(e)


def test_vig_reproduces_vig(tmp_path):
    sd = vig_state(128, 2, grid=4)
    path = tmp_path / 'vig_s.pth'
    torch.save({'model': sd}, path)
    m, cfg = vig_backbone(path)
    assert cfg['stem'] == 'vig' and cfg['mixer_cfg'] == dict(o_scale=0.25)
    rep = load_pretrained(m, str(path))
    assert rep['ok'] and set(rep['dropped']) == {'head.weight', 'head.bias'} and not rep['new']
    assert m.blocks[0].channel_mixer.down_proj.in_features == 512   # GLAMLP: ceil256(8d/3)
    own = m.state_dict()
    q, k, v = sd['blocks.1.attn.qkv_proj.weight'].split([64, 64, 128])
    assert torch.equal(own['blocks.1.attn.k_proj.weight'], k)
    assert torch.equal(own['patch_embed.norm.weight'], sd['patch_embed.proj.4.weight'])
    assert torch.equal(own['norm1.weight'], sd['norm.weight'])
    assert torch.equal(own['blocks.0.ln_2.weight'], sd['blocks.0.mlp_norm.weight'])
    for shape in [(64, 64), (96, 48)]:
        x = torch.randn(2, 3, *shape)
        with torch.no_grad():
            ref = vig_reference(sd, x, heads=2)
            out = m(x)[0]
        assert out.shape == ref.shape and (out - ref).abs().max() <= 1e-5


@pytest.mark.parametrize('opts', [dict(), dict(conv_act='silu', out_act='swish', o_scale=0.25)])
def test_vig_gla_mixer_is_vigs_equations(opts):
    """One vig_gla mixer against the reference written from ViG's equations (bi scan)."""
    r = _rand(0)
    w = vig_attn_state('', 32, 2, r)
    m = TokenMixer(32, 2, family='vig_gla', scan='bi', **opts).eval()
    q, k, v = w['qkv_proj.weight'].split([16, 16, 32])
    own = {'local_conv.weight': w['in_proj.0.weight'], 'q_proj.weight': q, 'k_proj.weight': k,
           'v_proj.weight': v, **{n: w[n] for n in w if n not in ('in_proj.0.weight',
                                                                  'qkv_proj.weight')}}
    m.load_state_dict(own)
    x = torch.randn(2, 20, 32)
    with torch.no_grad():
        ref = vig_mixer_reference(w, x, (4, 5), 2, o_scale=opts.get('o_scale', 0.5),
                                  conv_act='conv_act' in opts, out_act='out_act' in opts)
        assert (m(x, (4, 5)) - ref).abs().max() <= 1e-5


def test_vig_options_the_tensors_do_not_show():
    """ViG-T's released config sets use_act_in_conv and use_out_act; the others do not."""
    from fla_mm.checkpoint.arch import infer_backbone_cfg
    for dim, acts in ((192, dict(conv_act='silu', out_act='swish')), (384, {})):
        cfg = infer_backbone_cfg('vig', vig_state(dim, 1, 2))
        assert cfg['mixer_cfg'] == dict(o_scale=0.25, **acts)
        assert cfg['arch']['num_heads'] == dim // 64 and cfg['pretrain_img_size'] == 32


def test_vig_gla_needs_the_grid():
    with pytest.raises(ValueError, match='injects locality itself'):
        TokenMixer(32, 2, family='vig_gla', locality=True)
    with pytest.raises(ValueError, match='cls_token=True needs mixers .*vig_gla'):
        plain(mixer='vig_gla', cls_token=True)
    with pytest.raises(ValueError, match='expand_v must be 1.0'):
        TokenMixer(32, 2, family='vig_gla', expand_v=2.0)


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


def test_map_location_reaches_torch_load(tmp_path):
    """init_cfg's map_location (MMEngine's Pretrained argument) is where tensors are read to."""
    path = tmp_path / 'ck.pth'
    torch.save({'state_dict': plain().state_dict()}, path)
    seen = []

    def to_cpu(storage, location):
        seen.append(location)
        return storage
    assert load_pretrained(plain(), str(path), map_location=to_cpu)['ok']
    assert seen and set(seen) == {'cpu'}


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
    state, meta, _, _ = read_checkpoint(str(dst))
    assert meta['fla_mm']['format'] == 'timm_vit' and meta['fla_mm']['pos_hw'] == [5, 3]
    assert 'head.weight' not in state and 'blocks.0.attn.q_proj.weight' in state
    m = deit_plain(pretrain_img_size=(80, 48))
    rep = load_pretrained(m, str(dst))
    assert rep['format'] == 'fla_mm' and rep['ok']
    x = torch.randn(1, 3, 80, 48)
    with torch.no_grad():
        ref = deit_reference(sd, x, HEADS)[:, 1:]
        assert (patch_tokens(m(x)[0]) - ref).abs().max() <= 1e-5


def test_convert_tool_vig_h_infers_the_architecture(tmp_path, capsys):
    sd = vig_h_state(VIG_H_DIMS, [1, 1, 1, 1], VIG_H_HEADS)
    src = tmp_path / 'vig_h.pth'
    torch.save({'model': sd}, src)
    dst = tmp_path / 'vig_h_fla.pth'
    assert run_tool('convert_checkpoint', str(src), str(dst)) == 0
    assert 'Wrote' in capsys.readouterr().out
    state, meta, _, _ = read_checkpoint(str(dst))
    assert meta['fla_mm']['arch']['stem'] == 'vig_h'
    m, _ = vig_backbone(src)
    assert load_pretrained(m, str(dst))['format'] == 'fla_mm'
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (m(x)[3] - vig_h_reference(sd, x, VIG_H_HEADS)[3]).abs().max() <= 1e-5
    arch = json.dumps(dict(type='FLAPyramid', arch=dict(embed_dims=VIG_H_DIMS, depths=[1] * 4,
                                                        num_heads=VIG_H_HEADS), mixer='gla'))
    assert run_tool('convert_checkpoint', str(src), str(dst), '--arch', arch) == 1
    assert 'error: Checkpoint' in capsys.readouterr().err
    assert run_tool('convert_checkpoint', str(src), str(dst), '--arch', arch,
                    '--no-strict') == 0
    assert 'partial' in capsys.readouterr().out
    assert run_tool('convert_checkpoint', str(tmp_path / 'none.pth'), str(dst)) == 1
    assert 'not found' in capsys.readouterr().err


# ------------------------------------------------------------- MMEngine checkpoints, safely

def test_init_cfg_loads_a_real_mmengine_checkpoint(toy_seg_run):
    """An iter_N.pth that mmseg's train.py wrote (message hub, numpy scalars, optimizer
    state) loads under init_cfg with torch's weights-only loading; every backbone tensor
    lands where it was."""
    from mmengine.config import Config
    ckpt = toy_seg_run['checkpoint']
    saved = torch.load(ckpt, map_location='cpu')          # torch's default: weights only
    assert type(saved['message_hub']['log_scalars']['train/loss']).__name__ == 'HistoryBuffer'
    cfg = Config.fromfile(toy_seg_run['config']).model.backbone
    cfg.pop('type')
    model = load(FLAPyramid(**cfg), ckpt)
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved['state_dict']['backbone.' + k]), k


class _NotAllowed:
    """A class no allowlist knows: its pickle must be refused, not unpickled."""


@pytest.mark.parametrize('payload', ['class', 'getattr'])
def test_untrusted_pickle_is_refused_even_with_the_override(tmp_path, monkeypatch, payload):
    """weights_only=True stays on whatever the environment says: a pickled object outside the
    allowlist, or a getattr beyond HistoryBuffer's statistics, is one CheckpointError."""
    import numpy as np

    class Reach:
        def __reduce__(self):
            return getattr, (np.dtype, 'mro')

    obj = _NotAllowed() if payload == 'class' else Reach()
    path = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': plain().state_dict(), 'extra': obj}, path)
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    with pytest.raises(CheckpointError, match='holds pickled Python objects that fla_mm does '
                                              'not load') as e:
        load(plain(), path)
    assert_one_line(e)
    assert ('_NotAllowed' if payload == 'class' else "getattr(<class 'numpy.dtype'>, 'mro')") \
        in str(e.value)
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in str(e.value)
