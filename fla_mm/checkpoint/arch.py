"""Backbone configs that match a checkpoint, and the options a model must share with it.

``infer_backbone_cfg`` reads widths, depths and options off the tensors (and a Hugging Face
``config.json``); ``parse_arch`` reads ``tools/convert_checkpoint.py``'s ``--arch``
argument. Both give a dict with ``type`` ('FLAPlain' or 'FLAPyramid') and the backbone's
keyword arguments, which :func:`fla_mm.backbones.build_backbone` builds.
:func:`compare_hf_options` holds a model against what an fla-zoo ``config.json`` says, for
the loader. Nothing here imports the backbones: they import this package.
"""
import json
import os.path as osp
import re

from ..layers import FAMILIES
from .formats import square_side
from .io import CheckpointError

# timm ViT widths -> heads (ViT-Ti/S/B/L/H); other widths use 64-d heads as timm does.
VIT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
# ViG / ViG-H sizes (configs of hustvl/ViG).
VIG_HEADS = {192: 3, 384: 6, 768: 12}
VIGH_HEADS = {96: [3, 6, 12, 24], 128: [4, 8, 16, 32]}
# fla-zoo model_type (without '_vision') -> fla_mm mixer family.
HF_FAMILIES = {'gla': 'gla', 'simple_gla': 'simple_gla', 'retnet': 'retnet',
               'linear_attn': 'linear_attn', 'transformer': 'transformer', 'bitnet': 'bitnet',
               'delta_net': 'delta_net', 'gated_deltanet': 'gated_delta_net',
               'gated_delta_net': 'gated_delta_net', 'hgrn': 'hgrn', 'hgrn2': 'hgrn2',
               'rwkv6': 'rwkv6', 'rwkv7': 'rwkv7', 'gsa': 'gsa', 'abc': 'abc'}
# fla-zoo scan types -> fla_mm scans. Only uni-scan (fla-zoo's default) computes the same
# function: fla-zoo runs the whole mixer (output norm and gate included) per direction and
# sums its bi-scan directions without flipping the reversed one back.
HF_SCANS = {'uni-scan': 'uni', 'bi-scan': 'bi', 'cross-scan': 'cross', 'random-scan': 'random'}
LAYOUTS = {'plain': 'FLAPlain', 'pyramid': 'FLAPyramid'}


def _count(state, pattern):
    return len({m.group(1) for m in map(re.compile(pattern).match, state) if m})


def _timm(state):
    w = state['patch_embed.proj.weight']
    dim, patch = w.shape[0], w.shape[-1]
    depth = _count(state, r'^blocks\.(\d+)\.')
    n = state['pos_embed'].shape[1] if 'pos_embed' in state else None
    side = n and (square_side(n) or square_side(n - 1 - ('dist_token' in state)))
    cfg = dict(type='FLAPlain',
               arch=dict(embed_dims=dim, depth=depth,
                         num_heads=VIT_HEADS.get(dim, max(1, dim // 64))),
               patch_size=patch, mixer='transformer',
               mixer_cfg=dict(qkv_bias='blocks.0.attn.qkv.bias' in state,
                              o_bias='blocks.0.attn.proj.bias' in state),
               mlp_ratio=state['blocks.0.mlp.fc1.weight'].shape[0] / dim,
               cls_token='cls_token' in state, drop_path_rate=0.0, out_scales=None,
               out_indices=(-1,))
    if side:
        cfg['pretrain_img_size'] = side * patch
    if 'blocks.0.ls1.gamma' in state:
        cfg['layer_scale'] = 1.0
    return cfg


def _hf_family(hf_config):
    kind = str(hf_config.get('model_type', '')).replace('_vision', '')
    if kind not in HF_FAMILIES:
        raise CheckpointError(f'hf_fla model_type {hf_config.get("model_type")!r} has no fla_mm '
                              f'mixer family; valid: {", ".join(sorted(HF_FAMILIES))}. Pass '
                              f'--arch')
    return HF_FAMILIES[kind]


def hf_function_options(state, hf_config):
    """What an fla-zoo checkpoint's ``config.json`` fixes about its function that its tensors'
    names and shapes do not show: ``{option: (value, source)}``.

    Options are backbone arguments ('mixer', 'scan', 'norm_eps') or the mixer's ``fla.layers``
    options as 'mixer_cfg.<name>'; ``source`` names the config.json entry (or 'fla-zoo' for
    what fla-zoo's code fixes, 'tensors' for what the keys show). Entries config.json leaves
    out are left out here too (HF's save_pretrained writes them all). ``infer_backbone_cfg``
    builds from these; the loader compares them with the model it loads into.
    """
    family = _hf_family(hf_config)
    out = {'mixer': (family, f'model_type={hf_config["model_type"]!r}')}
    for k in FAMILIES[family]['defaults']:
        if k in hf_config and k != 'causal':
            out[f'mixer_cfg.{k}'] = (hf_config[k], k)
    if 'hidden_act' in hf_config and family in ('gla', 'retnet'):   # fla-zoo passes it there
        out['mixer_cfg.gate_fn'] = (hf_config['hidden_act'], 'hidden_act')
    if family == 'hgrn2':       # FLA's HGRN2Attention normalises with eps 1e-5, not norm_eps
        out.pop('mixer_cfg.norm_eps', None)
    if family == 'transformer':     # fla-zoo's FullAttention: rotary at base 10000, no causal mask
        for bias, proj in (('qkv_bias', 'q_proj'), ('o_bias', 'o_proj')):
            out[f'mixer_cfg.{bias}'] = (any(k.endswith(f'attn.{proj}.bias') for k in state),
                                        'tensors')
        out.update({'mixer_cfg.rope_theta': (10000.0, 'fla-zoo'),
                    'mixer_cfg.causal': (False, 'fla-zoo')})
    for key in ('test_scan_type', 'train_scan_type'):
        if hf_config.get(key):
            out['scan'] = (HF_SCANS.get(hf_config[key], 'uni'), f'{key}={hf_config[key]!r}')
            break
    if 'layer_norm_eps' in hf_config:
        out['norm_eps'] = (hf_config['layer_norm_eps'], 'layer_norm_eps')
    return out


def _hf(state, hf_config):
    if not hf_config:
        raise CheckpointError('hf_fla checkpoint without a config.json next to it: pass --arch '
                              '(e.g. \'{"arch": {"embed_dims": 384, "depth": 12, "num_heads": '
                              '6}, "mixer": "gla"}\')')
    opts = {k: v for k, (v, _) in hf_function_options(state, hf_config).items()}
    dim = hf_config['hidden_size']
    heads = hf_config.get('num_heads', hf_config.get('num_attention_heads'))
    swiglu = any('channel_mixer.gate_proj' in k for k in state)
    key = next((k for k in state if re.search(r'channel_mixer\.(net\.0|gate_proj)\.weight$', k)),
               None)
    size = hf_config.get('image_size', 224)
    size = size if isinstance(size, int) else tuple(size)
    return dict(type='FLAPlain',
                arch=dict(embed_dims=dim, depth=hf_config['num_hidden_layers'],
                          num_heads=heads),
                patch_size=hf_config.get('patch_size', 16), mixer=opts['mixer'],
                mixer_cfg={k.split('.', 1)[1]: v for k, v in opts.items()
                           if k.startswith('mixer_cfg.')},
                scan=opts.get('scan', 'uni'), norm_eps=opts.get('norm_eps', 1e-6),
                ffn='swiglu' if swiglu else 'mlp',
                mlp_ratio=(state[key].shape[0] / dim) if key else 4.0,
                pretrain_img_size=size, drop_path_rate=0.0, out_scales=None, out_indices=(-1,))


_MISSING = object()


def _model_values(model, option):
    """The values ``option`` (as :func:`hf_function_options` names it) has in the blocks of
    ``model`` (a plain backbone: ``blocks`` of ``attn`` mixers and ``ln_1`` / ``ln_2``)."""
    blocks = list(getattr(model, 'blocks', []))
    if option == 'mixer':
        return {b.attn.family for b in blocks}
    if option == 'scan':
        return {b.attn.scan for b in blocks if b.attn.cfg.get('causal', b.attn.causal)}
    if option == 'norm_eps':
        return {n.eps for b in blocks for n in (b.ln_1, b.ln_2)}
    name = option.split('.', 1)[1]
    return {b.attn.cfg.get(name, _MISSING) for b in blocks}


def compare_hf_options(model, state, hf_config):
    """``(errors, warnings)``: an error line per option where config.json and ``model``
    differ, naming both values (each such option computes another function; one that does
    not changes a tensor's name or shape, which the key check reports), and a warning for
    fla-zoo's bi- and cross-scan, which fla_mm's scans of the same name do not reproduce
    (only uni-scan is exact)."""
    errors, warnings, differ = [], [], set()
    options = hf_function_options(state, hf_config)
    same_family = _model_values(model, 'mixer') == {options['mixer'][0]}
    for option, (want, source) in options.items():
        if option.startswith('mixer_cfg.') and not same_family:
            continue        # another family's options: the 'mixer' line says it
        have = sorted(repr(v) for v in _model_values(model, option) if v is not _MISSING)
        if not have or have == [repr(want)]:
            continue
        differ.add(option)
        errors.append(f'{option}: checkpoint {want!r} (config.json {source}) vs model '
                      f'{" / ".join(have)}')
    scan = next((hf_config[k] for k in ('test_scan_type', 'train_scan_type')
                 if hf_config.get(k)), None)
    if scan in ('bi-scan', 'cross-scan') and 'scan' not in differ:
        warnings.append(
            f'scan: fla-zoo\'s {scan} (config.json) is loaded as fla_mm\'s scan='
            f'{HF_SCANS[scan]!r}, which is not the same function: fla-zoo runs the whole mixer '
            f'(output norm and gate included) per direction and sums the directions without '
            f'flipping the reversed one back; only uni-scan is exact')
    return errors, warnings


def _vig(state):
    """The architecture of hustvl/ViG's released configs (configs/vig, configs/vig-h) at the
    checkpoint's widths; only ViG-T sets USE_ACT_IN_CONV and USE_OUT_ACT (see VIG_OPTIONS)."""
    if any(k.startswith(('layers.', 'outnorm')) for k in state):
        depths, dims = [], []
        for i in range(_count(state, r'^layers\.(\d+)\.')):
            depths.append(_count(state, rf'^layers\.{i}\.blocks\.(\d+)\.'))
            w = next(v for k, v in state.items()
                     if re.match(rf'^layers\.{i}\.blocks\.0\.(norm|ln_1)\.weight$', k))
            dims.append(w.shape[0])
        fc1 = state.get('layers.0.blocks.0.mlp.fc1.weight')
        gmlp = 'layers.0.blocks.0.mlp.fc1.bias' not in state
        ffn = (dict(ffn='swiglu', mlp_ratio=8 / 3, mlp_multiple_of=32) if gmlp else
               dict(ffn='mlp', mlp_ratio=fc1.shape[0] / dims[0] if fc1 is not None else 4.0))
        conv_bias = any(k.endswith('.in_proj.0.bias') for k in state)
        return dict(type='FLAPyramid',
                    arch=dict(embed_dims=dims, depths=depths,
                              num_heads=VIGH_HEADS.get(dims[0], [max(1, d // 32) for d in dims])),
                    mixer='vig_gla', mixer_cfg=dict(conv_bias=True) if conv_bias else None,
                    scan='bi', stem='vig_h', norm_eps=1e-5, drop_path_rate=0.0, **ffn)
    dim = state['blocks.0.attn_norm.weight'].shape[0]
    swiglu = 'blocks.0.mlp.gate_proj.weight' in state
    hidden = (state['blocks.0.mlp.gate_proj.weight'].shape[0] // 2 if swiglu
              else state['blocks.0.mlp.fc1.weight'].shape[0])
    v2 = 'patch_embed.proj.0.weight' in state
    patch = 16 if v2 else state['patch_embed.proj.weight'].shape[-1]
    n = state['pos_embed'].shape[1] if 'pos_embed' in state else 196
    side = square_side(n) or square_side(n - 1) or 14
    mixer_cfg = dict(o_scale=0.25)
    if dim == 192:                                      # ViG-T
        mixer_cfg.update(conv_act='silu', out_act='swish')
    if 'blocks.0.attn.in_proj.0.bias' in state:
        mixer_cfg['conv_bias'] = True
    cfg = dict(type='FLAPlain',
               arch=dict(embed_dims=dim, depth=_count(state, r'^blocks\.(\d+)\.'),
                         num_heads=VIG_HEADS.get(dim, max(1, dim // 64))),
               patch_size=patch, stem='vig' if v2 else 'patch', mixer='vig_gla',
               mixer_cfg=mixer_cfg, scan='bi', norm='rms', out_norm='rms', norm_eps=1e-6,
               ffn='swiglu' if swiglu else 'mlp', mlp_ratio=hidden / dim,
               pretrain_img_size=side * patch, drop_path_rate=0.0, out_scales=None,
               out_indices=(-1,))
    if 'blocks.0.gamma1' in state:
        cfg['layer_scale'] = 1.0
    return cfg


def infer_backbone_cfg(fmt, state, meta=None, hf_config=None):
    """A backbone config whose keys and shapes match ``state`` of format ``fmt``."""
    if fmt == 'fla_mm':
        arch = ((meta or {}).get('fla_mm') or {}).get('arch')
        if not arch:
            raise CheckpointError('this fla_mm checkpoint does not record its backbone config: '
                                  'pass --arch (a config file, plain-SIZE / pyramid-SIZE, or a '
                                  'JSON dict of backbone arguments)')
        return dict(arch)
    if fmt == 'timm_vit':
        return _timm(state)
    if fmt == 'hf_fla':
        state = {k[len('backbone.'):] if k.startswith('backbone.') else k: v
                 for k, v in state.items()}
        return _hf(state, hf_config)
    if fmt == 'vig':
        return _vig(state)
    raise CheckpointError(f'Unknown format {fmt!r}')


def parse_arch(arch):
    """``--arch``: a config file (its model.backbone), 'plain-tiny' / 'pyramid-small' style
    shorthand, or a JSON dict of backbone arguments (with an optional "type")."""
    if arch.endswith('.py') and osp.isfile(arch):
        from mmengine.config import Config
        cfg = Config.fromfile(arch)
        model = cfg.get('model', {})
        bb = dict(model.get('backbone', model))
        return bb
    m = re.fullmatch(r'(plain|pyramid)(?:[-_:](\w+))?', arch)
    if m:
        cfg = dict(type=LAYOUTS[m.group(1)])
        if m.group(2):
            cfg['arch'] = m.group(2)
        return cfg
    try:
        cfg = json.loads(arch)
    except json.JSONDecodeError:
        raise CheckpointError(f'--arch {arch!r} is neither a config file, plain-SIZE / '
                              f'pyramid-SIZE, nor a JSON dict of backbone arguments') from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f'--arch JSON must be a dict, got {cfg!r}')
    cfg.setdefault('type', 'FLAPlain')
    return cfg

