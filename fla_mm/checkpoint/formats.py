"""Key maps from the ImageNet checkpoints of other projects to fla_mm's backbones.

One converter per format, each a function ``convert(state, target, hf_config) ->
Conversion``. A converter renames and splits tensors only; the loader then resizes the
position embedding, checks every key and shape against the model and loads strictly.

Formats (``FORMATS``):

``fla_mm``
    fla_mm's own checkpoints (MMEngine ``state_dict`` / ``meta``, or what
    ``tools/convert_checkpoint.py`` writes), with or without the ``backbone.`` prefix of a
    whole segmentor / detector.
``hf_fla``
    FLA-based vision classifiers in Hugging Face layout (fla-zoo ``*ForImageClassification``,
    ``*VisionModel``, ``*ForMaskedImageModeling``) -> FLAPlain::

        backbone.embeddings.patch_embeddings.projection.*  -> patch_embed.proj.*
        backbone.embeddings.position_embeddings             -> pos_embed (no cls slot)
        backbone.encoder.blocks.{i}.{ln_1,attn.*,ln_2}.*     -> blocks.{i}.<same>
        backbone.encoder.blocks.{i}.channel_mixer.net.{0,2}  -> blocks.{i}.channel_mixer.fc{1,2}
        backbone.encoder.blocks.{i}.channel_mixer.{gate,up,down}_proj (fla GatedMLP) -> same
        backbone.layernorm.*                                -> norm{depth-1}.*
        dropped: backbone.pooler.*, classifier.*, embeddings.mask_token, decoder.*

    ``attn.*`` keys are unchanged for every mixer family: fla_mm's mixers carry the
    ``fla.layers`` parameter names.
``timm_vit``
    timm / DeiT ViTs -> FLAPlain(mixer='transformer'; ``cls_token=True`` for the exact
    DeiT function)::

        patch_embed.proj.*            -> patch_embed.proj.*
        cls_token + pos_embed[:, :1]  -> cls_token (the slot's position folded in), or dropped
        pos_embed[:, 1:]              -> pos_embed (resized as timm does: bicubic, antialias)
        blocks.{i}.attn.qkv.*         -> blocks.{i}.attn.{q,k,v}_proj.* (split in 3)
        blocks.{i}.attn.proj.*        -> blocks.{i}.attn.o_proj.*
        blocks.{i}.norm{1,2}.*        -> blocks.{i}.ln_{1,2}.*
        blocks.{i}.mlp.fc{1,2}.*      -> blocks.{i}.channel_mixer.fc{1,2}.*
        blocks.{i}.ls{1,2}.gamma      -> blocks.{i}.gamma_{1,2}
        norm.*                        -> norm{depth-1}.*
        dropped: head.*, head_dist.*, fc_norm.*
``vig``
    ViG (plain, -> FLAPlain) and ViG-H (hierarchical, -> FLAPyramid) official checkpoints
    (``model`` key), or ViG-H's OpenMMLab backbone (``outnorm{i}``), into the architecture
    that reproduces them (``tools/convert_checkpoint.py`` infers it; see
    :func:`fla_mm.checkpoint.arch.infer_backbone_cfg`): ``mixer='vig_gla'``, ``scan='bi'``,
    SwiGLU FFNs at ViG's widths, and for ViG-H ``stem='vig_h'``, ``norm_eps=1e-5``,
    ``mlp_multiple_of=32``; for ViG ``stem='vig'``, ``norm='rms'``, ``out_norm='rms'``,
    ``mlp_multiple_of=256``. ViG-H's old names are renamed first as ViG does on load
    (``patch_embed.proj`` -> ``patch_embed.0``, ``patch_embed.norm`` -> ``patch_embed.2``,
    ``layers.i.blocks.j.ln_1`` -> ``.norm``, ``.self_attention`` -> ``.op``, ``norm`` ->
    ``classifier.norm``, ``head`` -> ``classifier.head``)::

        patch_embed.{0,2,5,7} (ViG-H) / patch_embed.proj.{0,1,3,4} (ViG)
                                          -> patch_embed.proj.{0,1,3}, patch_embed.norm
        layers.i.blocks.j.{norm,norm2}   -> stages.i.blocks.j.{ln_1,ln_2}
        blocks.i.{attn_norm,mlp_norm}    -> blocks.i.{ln_1,ln_2}; gamma{1,2} -> gamma_{1,2}
        <op|attn>.in_proj.0.*            -> attn.local_conv.*
        <op|attn>.qkv_proj.weight        -> attn.{q,k,v}_proj.weight (split)
        <op|attn>.{gk_proj,g_proj,o_proj,g_norm,l_norm}.* -> attn.<same>
        mlp.{fc1|gate_proj} (fused SwiGLU) -> channel_mixer.{gate_proj,up_proj} (split)
        mlp.{fc2|down_proj}              -> channel_mixer.down_proj
        layers.i.downsample.{1,3}        -> stages.{i+1}.downsample.{reduction,norm}
        classifier.norm / norm (final)   -> norm{last}; outnorm{i} -> norm{i}
        dropped: classifier.head.*, head.*

    :data:`VIG_MISMATCH` lists ViG's options that fla_mm does not build (none of the
    released models uses them); :data:`VIG_OPTIONS` the ones the tensors do not show. Plain
    ViG on image sides that are not multiples of 16 differs at the border: FLAPlain pads the
    image to the patch grid, ViG's conv stem does not.
"""
import math
import re

import torch.nn.functional as F

from .io import CheckpointError

FORMATS = ('fla_mm', 'hf_fla', 'vig', 'timm_vit')

VIG_MISMATCH = (
    'fla_mm builds ViG and ViG-H as released (configs/vig, configs/vig-h of hustvl/ViG) but '
    'not these options of ViG\'s code: a class token (IF_CLS_TOKEN, mid_clstok), rotary '
    'embeddings (ROPE_MODE other than "none"), USE_DIRPE, USE_LOWER_BOUND, USE_MSG, IF_RC_PE, '
    'SCAN_MODE "zigzag", USE_ACT_IN_PATCH, USE_SWIGLU=False (a SiLU MLP), ViG-H\'s v1 patch '
    'embedding, its v1 / v2 downsampling and NORM_LAYER "bn".')

VIG_OPTIONS = (
    'ViG options that the tensors do not show must match the source config: '
    'mixer_cfg conv_act="silu" for USE_ACT_IN_CONV=True and out_act="swish" for '
    'USE_OUT_ACT=True (both set in the released ViG-T only), o_scale=0.25 for plain ViG (its '
    'eval path halves the two directions\' sum twice; ViG-H and ViG training: the default, '
    'their mean).')


class Conversion:
    """Result of one converter: tensors under the model's names and what was left out."""

    def __init__(self, fmt):
        self.format = fmt
        self.state = {}
        self.dropped = {}      # source key -> reason; expected (classifier heads, poolers)
        self.unmapped = {}     # source key -> reason; no counterpart: an error when strict
        self.filled = {}       # model output norm -> the classifier's final norm it took
        self.resized = []      # 'key: old shape -> new shape (how)'
        self.notes = []

    def put(self, key, value):
        self.state[key] = value

    def drop(self, key, reason):
        self.dropped[key] = reason

    def unmap(self, key, reason):
        self.unmapped[key] = reason


class Target:
    """What a converter needs to know about the model it converts for."""

    def __init__(self, model):
        self.model = model
        self.name = type(model).__name__
        self.keys = set(model.state_dict())
        self.layout = ('plain' if hasattr(model, 'blocks') and hasattr(model, 'pos_embed')
                       else 'pyramid' if hasattr(model, 'stages') else None)
        self.pos_hw = getattr(model, 'pos_hw', None)
        self.interpolate_mode = getattr(model, 'interpolate_mode', 'bicubic')
        self.cls_token = getattr(model, 'cls_token', None) is not None
        if self.layout == 'plain':
            last = len(model.blocks) - 1
        elif self.layout == 'pyramid':
            last = len(model.stages) - 1
        else:
            last = None
        self.final_norm = f'norm{last}' if last is not None else None

    def has(self, key):
        return key in self.keys


def final_norm(conv, target, src_key, suffix, value):
    """The source model's norm after its last block -> the model's output norm of its last
    block (or its last stage), when ``out_indices`` has one."""
    if target.final_norm and target.has(f'{target.final_norm}.{suffix}'):
        conv.put(f'{target.final_norm}.{suffix}', value)
        conv.filled[target.final_norm] = src_key[:-len(suffix) - 1]
    else:
        conv.drop(src_key, f'final norm: the model has no output norm after its last block '
                           f'({target.final_norm} not in its out_indices)')


def square_side(n):
    s = math.isqrt(n)
    return s if s * s == n else None


# ---- detection -----------------------------------------------------------------------------

_SIGNS = (
    ('timm_vit', re.compile(r'^blocks\.\d+\.(attn\.qkv\.weight|norm1\.weight)$')),
    ('hf_fla', re.compile(r'^(backbone\.)?(embeddings\.patch_embeddings\.projection\.weight|'
                          r'encoder\.(blocks|layers)\.\d+\.(ln_1|attn)\.)')),
    ('vig', re.compile(r'^(blocks\.\d+\.(attn\.qkv_proj|attn_norm)\.|'
                       r'layers\.\d+\.blocks\.\d+\.(op|self_attention)\.|outnorm\d+\.)')),
    ('fla_mm', re.compile(r'^(backbone\.)?(blocks\.\d+|stages\.\d+\.blocks\.\d+)\.'
                          r'(ln_1|attn|channel_mixer|mixer)\.|'
                          r'^(backbone\.)?patch_embed\.proj\.0\.')),
)


def detect_format(state, meta=None):
    """``(format, evidence)``: the format and the key (or meta entry) that gave it away."""
    if meta and 'fla_mm' in meta:
        return 'fla_mm', 'meta["fla_mm"]'
    for fmt, sign in _SIGNS:
        hit = next((k for k in state if sign.search(k)), None)
        if hit is not None:
            return fmt, f'key {hit!r}'
    keys = sorted(state)
    raise CheckpointError(
        f'Cannot tell the format of this checkpoint ({len(keys)} tensors, e.g. '
        f'{", ".join(keys[:6])}): it is none of {", ".join(FORMATS)} (a checkpoint of another '
        f'architecture?). Pass format=... in init_cfg if it is one of them')


# ---- fla_mm --------------------------------------------------------------------------------

def convert_fla_mm(state, target, hf_config=None):
    conv = Conversion('fla_mm')
    own_prefixed = any(k.startswith('backbone.') for k in state) and \
        not any(target.has(k) for k in state)
    for k, v in state.items():
        if own_prefixed:
            if not k.startswith('backbone.'):
                conv.drop(k, 'not part of the backbone (neck / head of a whole model)')
                continue
            k = k[len('backbone.'):]
        conv.put(k, v)
    if own_prefixed:
        conv.notes.append('keys taken from under "backbone."')
    return conv


# ---- Hugging Face FLA (fla-zoo) ------------------------------------------------------------

_HF_BLOCK = re.compile(r'^encoder\.(?:blocks|layers)\.(\d+)\.(.*)$')


def convert_hf_fla(state, target, hf_config=None):
    conv = Conversion('hf_fla')
    if target.layout != 'plain':
        raise CheckpointError(f'hf_fla checkpoints have the plain layout (one stride-16 stage); '
                              f'build FLAPlain, not {target.name}')
    for k, v in state.items():
        src = k
        if k.startswith('backbone.'):
            k = k[len('backbone.'):]
        elif k.startswith(('classifier.', 'decoder.', 'fc_norm.', 'head.')):
            conv.drop(src, 'classification / reconstruction head')
            continue
        m = _HF_BLOCK.match(k)
        if k.startswith('embeddings.patch_embeddings.projection.'):
            conv.put('patch_embed.proj.' + k.rsplit('.', 1)[1], v)
        elif k == 'embeddings.position_embeddings':
            conv.put('pos_embed', v)
        elif k in ('embeddings.mask_token', 'embeddings.cls_token'):
            conv.drop(src, 'masked-image-modeling token' if 'mask' in k else 'class token')
        elif m:
            i, rest = m.groups()
            rest = re.sub(r'^channel_mixer\.net\.0\.', 'channel_mixer.fc1.', rest)
            rest = re.sub(r'^channel_mixer\.net\.2\.', 'channel_mixer.fc2.', rest)
            conv.put(f'blocks.{i}.{rest}', v)
        elif k.startswith('layernorm.'):
            final_norm(conv, target, src, k.split('.', 1)[1], v)
        elif k.startswith('pooler.'):
            conv.drop(src, 'classification pooler')
        else:
            conv.unmap(src, 'no counterpart in FLAPlain')
    conv.src_hw = hf_grid(hf_config)
    return conv


def hf_grid(hf_config):
    """The token grid (h, w) of a Hugging Face config.json's image_size / patch_size, or None."""
    if not hf_config or 'image_size' not in hf_config or 'patch_size' not in hf_config:
        return None
    size, patch = hf_config['image_size'], hf_config['patch_size']
    size = size if isinstance(size, (list, tuple)) else (size, size)
    patch = patch if isinstance(patch, (list, tuple)) else (patch, patch)
    return (size[0] // patch[0], size[1] // patch[1])


# ---- timm ViT / DeiT -----------------------------------------------------------------------

_TIMM_BLOCK = {
    'norm1.': 'ln_1.', 'norm2.': 'ln_2.', 'attn.proj.': 'attn.o_proj.',
    'mlp.fc1.': 'channel_mixer.fc1.', 'mlp.fc2.': 'channel_mixer.fc2.',
    'ls1.gamma': 'gamma_1', 'ls2.gamma': 'gamma_2',
}


def resize_timm(pe, src_hw, dst_hw):
    """Resize a [1, h*w, C] grid the way timm's ``resample_abs_pos_embed`` does (bicubic with
    antialias), so the result equals timm's model at the new size."""
    C = pe.shape[-1]
    grid = pe.reshape(1, *src_hw, C).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=dst_hw, mode='bicubic', antialias=True)
    return grid.permute(0, 2, 3, 1).reshape(1, -1, C).to(pe.dtype)


def convert_timm_vit(state, target, hf_config=None):
    conv = Conversion('timm_vit')
    if target.layout != 'plain':
        raise CheckpointError(f'timm ViT / DeiT checkpoints have the plain layout; build '
                              f'FLAPlain(mixer="transformer"), not {target.name}')
    prefix_tokens = [t for t in ('cls_token', 'dist_token') if t in state]
    n_reg = state['reg_token'].shape[1] if 'reg_token' in state else 0
    for k, v in state.items():
        m = re.match(r'^blocks\.(\d+)\.(.*)$', k)
        if k in ('cls_token', 'dist_token', 'reg_token', 'pos_embed'):
            continue
        if k.startswith('patch_embed.proj.'):
            conv.put(k, v)
        elif m:
            i, rest = m.groups()
            if rest.startswith('attn.qkv.'):
                for name, part in zip('qkv', v.chunk(3, 0)):
                    conv.put(f'blocks.{i}.attn.{name}_proj.{rest.rsplit(".", 1)[1]}', part)
                continue
            new = next((rest.replace(a, b, 1) for a, b in _TIMM_BLOCK.items()
                        if rest.startswith(a)), None)
            if new is None:
                conv.unmap(k, 'no counterpart in fla_mm\'s block (e.g. timm qk-norm / MLP norm)')
            else:
                conv.put(f'blocks.{i}.{new}', v)
        elif k.startswith('norm.'):
            final_norm(conv, target, k, k.split('.', 1)[1], v)
        elif k.startswith(('head.', 'head_dist.', 'fc_norm.', 'attn_pool.')):
            conv.drop(k, 'classification head')
        else:
            conv.unmap(k, 'no counterpart in FLAPlain')

    pe = state.get('pos_embed')
    n_prefix = len(prefix_tokens) + n_reg
    embed_class = bool(pe is not None and n_prefix and square_side(pe.shape[1] - n_prefix)
                       and not square_side(pe.shape[1]))
    prefix_pos = pe[:, :n_prefix] if embed_class else None
    if pe is not None:
        grid = pe[:, n_prefix:] if embed_class else pe
        side = square_side(grid.shape[1])
        if side and target.pos_hw and (side, side) != tuple(target.pos_hw) \
                and grid.shape[-1] == target.model.pos_embed.shape[-1]:
            new = resize_timm(grid, (side, side), target.pos_hw)
            conv.resized.append(f'pos_embed: {side}x{side} -> {target.pos_hw[0]}x'
                                f'{target.pos_hw[1]} (bicubic, antialias, as timm)')
            grid = new
        conv.put('pos_embed', grid)
        if embed_class:
            conv.notes.append(f'dropped {n_prefix} prefix slot(s) of pos_embed')
    if 'cls_token' in state:
        cls = state['cls_token']
        if target.cls_token:
            conv.put('cls_token', cls + prefix_pos[:, :1] if prefix_pos is not None else cls)
            if prefix_pos is not None:
                conv.notes.append('cls_token = cls_token + pos_embed[:, 0] (its position folded '
                                  'in)')
        else:
            conv.drop('cls_token', 'the model has no class token (cls_token=False): patch '
                                   'tokens no longer attend to it, so features differ from '
                                   'the source ViT; build FLAPlain(cls_token=True) for its '
                                   'exact function')
    if 'dist_token' in state:
        conv.unmap('dist_token', 'distillation token: FLAPlain carries at most one class token')
    if 'reg_token' in state:
        conv.unmap('reg_token', 'register tokens: FLAPlain carries at most one class token')
    return conv


# ---- ViG / ViG-H ---------------------------------------------------------------------------

_VIGH_RENAMES = (
    (r'^patch_embed\.proj\.', 'patch_embed.0.'),
    (r'^patch_embed\.norm\.', 'patch_embed.2.'),
    (r'^(layers\.\d+\.blocks\.\d+)\.ln_1\.', r'\1.norm.'),
    (r'^(layers\.\d+\.blocks\.\d+)\.self_attention\.', r'\1.op.'),
    (r'^norm\.', 'classifier.norm.'),
    (r'^head\.', 'classifier.head.'),
)

# ViG's mixer tensors that keep their name in fla_mm's vig_gla mixer.
_VIG_ATTN_SAME = ('gk_proj.0.weight', 'gk_proj.1.weight', 'gk_proj.1.bias', 'g_proj.weight',
                  'g_proj.bias', 'o_proj.weight', 'g_norm.weight', 'l_norm.weight')


def _vig_attn(conv, state, src, dst):
    """ViG's GatedLinearAttention / GLA2D (under ``src``) -> fla_mm's vig_gla mixer."""
    gk = state.get(src + 'gk_proj.1.weight')
    for k in [k for k in state if k.startswith(src)]:
        v, name = state[k], k[len(src):]
        if name == 'qkv_proj.weight' and gk is not None:
            key_dim = gk.shape[0] // 2                  # ViG: two direction gates, always
            for n, part in zip('qkv', v.split([key_dim, key_dim, v.shape[0] - 2 * key_dim])):
                conv.put(f'{dst}{n}_proj.weight', part)
        elif name in ('in_proj.0.weight', 'in_proj.0.bias'):
            conv.put(dst + 'local_conv.' + name.rsplit('.', 1)[1], v)
        elif name in _VIG_ATTN_SAME:
            conv.put(dst + name, v)
        else:
            conv.unmap(k, 'no counterpart in fla_mm\'s vig_gla mixer (ViG use_dirpe / rope_mode '
                          'are not supported)')


def _vig_ffn(conv, state, src, dst, gelu_mlp):
    """ViG FFNs: a fused SwiGLU (GLAMLP.gate_proj / gMlp.fc1 without bias) is split into
    gate_proj / up_proj; ViG-H's GELU Mlp keeps fc1 / fc2."""
    fused = src + ('gate_proj.weight' if src + 'gate_proj.weight' in state else 'fc1.weight')
    swiglu = src + 'gate_proj.weight' in state or (src + 'fc1.weight' in state
                                                    and src + 'fc1.bias' not in state)
    for k in [k for k in state if k.startswith(src)]:
        v, name = state[k], k[len(src):]
        if swiglu and k == fused:
            gate, up = v.chunk(2, 0)
            conv.put(dst + 'gate_proj.weight', gate)
            conv.put(dst + 'up_proj.weight', up)
        elif swiglu and name in ('down_proj.weight', 'fc2.weight'):
            conv.put(dst + 'down_proj.weight', v)
        elif not swiglu and gelu_mlp and name.split('.')[0] in ('fc1', 'fc2'):
            conv.put(dst + name, v)
        else:
            conv.unmap(k, 'no counterpart in fla_mm\'s FFN (plain ViG\'s SiLU MLP, '
                          'USE_SWIGLU=False, is not supported)')


def _vig_stem(conv, target, k, v, names, bn_slot):
    """ViG's two-conv stem (``names``: ViG key prefix -> fla_mm's) into a conv stem."""
    src = next((p for p in names if k.startswith(p)), None)
    if src is None:
        conv.unmap(k, 'no counterpart in fla_mm\'s stems')
    elif names[src] == 'patch_embed.proj.1.' and target.has(bn_slot):
        conv.unmap(k, 'the ViG stem has a LayerNorm after its first conv, the model a '
                      'BatchNorm: build it with the ViG stem (stem="vig_h" / "vig")')
    else:
        conv.put(names[src] + k[len(src):], v)


def _convert_vig_plain(conv, state, target):
    if target.layout != 'plain':
        raise CheckpointError(f'this is a plain ViG checkpoint (blocks.*); build FLAPlain, '
                              f'not {target.name}')
    v2 = {'patch_embed.proj.0.': 'patch_embed.proj.0.', 'patch_embed.proj.1.':
          'patch_embed.proj.1.', 'patch_embed.proj.3.': 'patch_embed.proj.3.',
          'patch_embed.proj.4.': 'patch_embed.norm.'}
    cls = 'cls_token' in state
    for k, v in state.items():
        m = re.match(r'^blocks\.(\d+)\.(.*)$', k)
        if m:
            i, rest = m.groups()
            b = f'blocks.{i}.'
            if rest.startswith(('attn.', 'mlp.')):
                continue
            new = {'attn_norm.weight': 'ln_1.weight', 'mlp_norm.weight': 'ln_2.weight',
                   'gamma1': 'gamma_1', 'gamma2': 'gamma_2'}.get(rest)
            if new:
                conv.put(b + new, v)
            else:
                conv.unmap(k, 'no counterpart in fla_mm\'s block')
        elif k in ('patch_embed.proj.weight', 'patch_embed.proj.bias'):
            conv.put(k, v)                               # ViG v1: one patch_size conv
        elif k.startswith('patch_embed.'):
            _vig_stem(conv, target, k, v, v2, 'patch_embed.proj.1.running_mean')
        elif k == 'pos_embed':
            # ViG appends its class token at the end, with the last position slot
            conv.put('pos_embed', v[:, :-1] if cls and not square_side(v.shape[1]) else v)
        elif k == 'cls_token':
            conv.unmap(k, 'ViG\'s class token (appended after the patches, left out of the '
                          'local conv) has no counterpart')
        elif k == 'norm.weight':
            final_norm(conv, target, k, 'weight', v)
        elif k.startswith('head.'):
            conv.drop(k, 'classification head')
        else:
            conv.unmap(k, 'no counterpart in FLAPlain (ViG use_lower_bound / if_rc_pe are '
                          'not supported)')
    blocks = sorted({int(k.split('.')[1]) for k in state if re.match(r'^blocks\.\d+\.', k)})
    for i in blocks:
        _vig_attn(conv, state, f'blocks.{i}.attn.', f'blocks.{i}.attn.')
        _vig_ffn(conv, state, f'blocks.{i}.mlp.', f'blocks.{i}.channel_mixer.', False)


def _convert_vig_h(conv, state, target):
    if target.layout != 'pyramid':
        raise CheckpointError(f'this is a ViG-H checkpoint (layers.*: four stages); build '
                              f'FLAPyramid, not {target.name}')
    renamed = {}
    for k, v in state.items():
        for pat, rep in _VIGH_RENAMES:
            k = re.sub(pat, rep, k)
        renamed[k] = v
    state = renamed
    v2_stem = 'patch_embed.5.weight' in state
    stem = {'patch_embed.0.': 'patch_embed.proj.0.', 'patch_embed.2.': 'patch_embed.proj.1.',
            'patch_embed.5.': 'patch_embed.proj.3.', 'patch_embed.7.': 'patch_embed.norm.'}
    for k, v in state.items():
        m = re.match(r'^layers\.(\d+)\.blocks\.(\d+)\.(.*)$', k)
        d = re.match(r'^layers\.(\d+)\.downsample\.(\d+|\w+)\.(.*)$', k)
        if m:
            i, j, rest = m.groups()
            b = f'stages.{i}.blocks.{j}.'
            if rest.startswith(('op.', 'mlp.')):
                continue
            if rest.startswith('norm.'):
                conv.put(b + 'ln_1.' + rest[5:], v)
            elif rest.startswith('norm2.'):
                conv.put(b + 'ln_2.' + rest[6:], v)
            else:
                conv.unmap(k, 'no counterpart in fla_mm\'s block')
        elif d:
            i, part, rest = d.groups()
            s = f'stages.{int(i) + 1}.downsample.'
            w = state.get(f'layers.{i}.downsample.1.weight')
            if part in ('1', '3') and w is not None and tuple(w.shape[-2:]) == (3, 3):
                conv.put(s + ('reduction.' if part == '1' else 'norm.') + rest, v)
            else:
                conv.unmap(k, 'ViG-H v1 / v2 downsampling (patch merging or a 2x2 conv); '
                              'FLAPyramid downsamples with a 3x3 stride-2 conv (ViG-H v3)')
        elif k.startswith('patch_embed.'):
            if v2_stem:
                _vig_stem(conv, target, k, v, stem, 'patch_embed.proj.1.running_mean')
            else:
                conv.unmap(k, 'ViG-H v1 patch embedding (one 4x4 conv and a norm); '
                              'FLAPyramid\'s stems are the v2 two-conv ones')
        elif k.startswith('classifier.norm.'):
            final_norm(conv, target, k, k.split('.', 2)[2], v)
        elif k.startswith('classifier.head.'):
            conv.drop(k, 'classification head')
        elif re.match(r'^outnorm\d+\.', k):
            conv.put('norm' + k[len('outnorm'):], v)
        else:
            conv.unmap(k, 'no counterpart in FLAPyramid')
    blocks = sorted({tuple(k.split('.')[1:4:2]) for k in state
                     if re.match(r'^layers\.\d+\.blocks\.\d+\.', k)})
    for i, j in blocks:
        src, dst = f'layers.{i}.blocks.{j}.', f'stages.{i}.blocks.{j}.'
        _vig_attn(conv, state, src + 'op.', dst + 'attn.')
        _vig_ffn(conv, state, src + 'mlp.', dst + 'channel_mixer.', True)


def convert_vig(state, target, hf_config=None):
    conv = Conversion('vig')
    if any(k.startswith(('layers.', 'outnorm')) for k in state):
        _convert_vig_h(conv, state, target)
    else:
        _convert_vig_plain(conv, state, target)
    conv.notes.append(VIG_OPTIONS)
    return conv


CONVERTERS = dict(fla_mm=convert_fla_mm, hf_fla=convert_hf_fla, vig=convert_vig,
                  timm_vit=convert_timm_vit)


def get_converter(fmt):
    if fmt not in CONVERTERS:
        raise CheckpointError(f'Unknown checkpoint format {fmt!r}; valid: '
                              f'{", ".join(FORMATS)} (or None to detect it)')
    return CONVERTERS[fmt]


__all__ = ['FORMATS', 'VIG_MISMATCH', 'VIG_OPTIONS', 'Conversion', 'Target', 'detect_format',
           'get_converter', 'hf_grid', 'resize_timm', 'square_side']
