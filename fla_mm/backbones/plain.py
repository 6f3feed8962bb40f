"""Plain layout: patch-16 embedding, blocks at one stride, simple feature pyramid (ViTDet)."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import Block, LayerNorm2d, block_style, resize_pos_embed
from ..layers.blocks import NORMS
from .base import (FLABackboneBase, check_indices, check_mixers, per_item, pretrained_grid,
                   resolve_arch, to_2tuple)
from .stem import build_stem

# DeiT-T / S / B widths.
ARCHS = {
    'tiny': dict(embed_dims=192, depth=12, num_heads=3),
    'small': dict(embed_dims=384, depth=12, num_heads=6),
    'base': dict(embed_dims=768, depth=12, num_heads=12),
}

SFP_SCALES = (4.0, 2.0, 1.0, 0.5)


def _sfp_branch(dim, scale):
    """One scale of the simple feature pyramid; channels stay ``dim``."""
    if scale == 4.0:
        return nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, 2), LayerNorm2d(dim, eps=1e-6),
                             nn.GELU(), nn.ConvTranspose2d(dim, dim, 2, 2))
    if scale == 2.0:
        return nn.ConvTranspose2d(dim, dim, 2, 2)
    if scale == 1.0:
        return nn.Identity()
    return nn.MaxPool2d(2, 2, ceil_mode=True)


class FLAPlain(FLABackboneBase):
    """Single-stride linear-attention backbone (ViG / DeiT layout) with a feature pyramid.

    The image is zero-padded on the right / bottom to a multiple of the patch size; a
    cls-token-free absolute position embedding, learned at ``pretrain_img_size``, is resized
    (bicubic) to the token grid of each input, non-square included. The blocks picked by
    ``out_indices`` are normed and, with ``out_scales``, turned into a simple feature pyramid
    (ViTDet: two deconvs for 4x, one for 2x, identity, max-pool), so UperNet and FPN take it
    unchanged. Outputs are cropped back to ceil(H/s) x ceil(W/s) for stride s.

    Args:
        arch: 'tiny' | 'small' | 'base' or dict(embed_dims, depth, num_heads).
        patch_size: patch (and token) stride.
        mixer: family of every block, or a list with one per block.
        scan: scan order; default from ``block``.
        mixer_cfg: extra TokenMixer options, a dict or one per block.
        hybrid_layers: block indices that use softmax attention ('transformer').
        hybrid_cfg: TokenMixer options of those blocks (``mixer_cfg`` is not applied to them).
        block, mlp_ratio, ffn, norm: block style ('vig' or 'illama') and overrides.
        mlp_multiple_of: round FFN widths up to a multiple of this (ViG's and FLA's SwiGLU:
            256 with ``mlp_ratio=8/3``).
        norm_eps: eps of the block and output norms (None: 1e-6).
        out_norm: output norms 'ln' (LayerNorm) or 'rms' (ViG's final RMSNorm).
        stem: 'patch' (one patch_size conv) or a conv stem, e.g. 'vig' (ViG's two-conv
            V2PatchEmbed); see :mod:`fla_mm.backbones.stem`.
        drop_path_rate: stochastic depth, rising linearly over the blocks.
        layer_scale: initial per-channel residual scale, or None.
        in_channels: image channels.
        out_indices: blocks (negative counts from the end) whose normed features are
            returned. With ``out_scales``: either one block, turned into every scale (ViTDet),
            or one block per scale (BEiT-style, e.g. (3, 5, 7, 11)).
        out_scales: pyramid scales relative to stride ``patch_size`` (from 4.0, 2.0, 1.0,
            0.5), or None for the plain stride-16 maps of every picked block.
        frozen_stages: -1 none; 0 the patch embedding and position embedding; k those and
            blocks 0..k-1 (with their output norms). The feature pyramid is never frozen.
        norm_eval: keep BatchNorm layers in eval mode while training.
        with_cp: activation checkpointing per block.
        pretrain_img_size: image size (int or (H, W)) the position embedding is stored at.
            None (default): the grid of the checkpoint it is given, so that the model
            computes the checkpoint's function at the checkpoint's resolution instead of
            resizing its position embedding there and back: read at build from the
            ``init_cfg`` Pretrained checkpoint (its meta, config.json image / patch size,
            or its position embedding's token count), so the optimizer and DDP see the
            final shape; a state dict of another grid loaded later (an ``init_cfg``-less
            inference model) re-shapes ``pos_embed`` in place. 224 where no checkpoint
            tells. A model that DDP wraps before such a load should be given the grid.
        interpolate_mode: position-embedding resize mode.
        cls_token: prepend one learned class token that takes part in every block and is
            dropped before the outputs (the ViT / DeiT function, so timm checkpoints load
            with their class token; its position embedding is folded into it). The blocks
            then see one sequence of 1 + H*W tokens, so it needs mixers that do not use the
            2-D grid: no 'cross' scan, no locality and no vig_gla.
        cuda_graph: in training on CUDA, replay forward and backward from a CUDA graph
            per input shape (see ``FLABackboneBase._setup_cuda_graph``).
        compile: False, True or a dict of ``torch.compile`` arguments: the forward (with
            ``cuda_graph``, only what each graph captures: the fast path for training on
            GPUs, eager elsewhere) through ``torch.compile``
            (``FLABackboneBase._setup_compile``).
        init_cfg: e.g. dict(type='Pretrained', checkpoint=PATH, prefix='backbone.').
    """

    @staticmethod
    def input_multiple(backbone_cfg):
        """Other sizes are zero-padded to the patch size, and the padded tokens enter every
        scan's state: a training crop should be a multiple of this."""
        return backbone_cfg.get('patch_size', 16)

    def __init__(self, arch='small', patch_size=16, mixer='gla', scan=None, mixer_cfg=None,
                 hybrid_layers=(), hybrid_cfg=None, block='vig', mlp_ratio=None, ffn=None,
                 norm=None, mlp_multiple_of=1, norm_eps=1e-6, out_norm='ln', stem='patch',
                 drop_path_rate=0.1, layer_scale=None, in_channels=3,
                 out_indices=(-1,), out_scales=SFP_SCALES, frozen_stages=-1, norm_eval=False,
                 with_cp=False, pretrain_img_size=None, interpolate_mode='bicubic', cls_token=False,
                 cuda_graph=False, compile=False, init_cfg=None, **unknown):
        super().__init__(init_cfg=init_cfg, unknown=unknown)
        arch = resolve_arch(arch, ARCHS)
        dim, depth, heads = arch['embed_dims'], arch['depth'], arch['num_heads']
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f'patch_size must be a positive int, got {patch_size!r}')
        mixers = per_item(mixer, depth, 'mixer (one per block)')
        check_mixers(mixers)
        mixer_cfgs = per_item(mixer_cfg, depth, 'mixer_cfg (one per block)')
        hybrid = set(check_indices(tuple(hybrid_layers), depth, 'hybrid_layers'))
        self.out_indices = check_indices(out_indices, depth, 'out_indices')
        if out_scales is not None:
            out_scales = tuple(float(s) for s in out_scales)
            bad = [s for s in out_scales if s not in SFP_SCALES]
            if bad or not out_scales:
                raise ValueError(f'out_scales {out_scales} has {bad}; valid scales: '
                                 f'{SFP_SCALES} (or None for no pyramid)')
            if len(self.out_indices) not in (1, len(out_scales)):
                raise ValueError(f'out_indices {tuple(out_indices)} must pick 1 block (all '
                                 f'scales from it) or {len(out_scales)} blocks (one per scale '
                                 f'of out_scales {out_scales})')
        if not (isinstance(frozen_stages, int) and -1 <= frozen_stages <= depth):
            raise ValueError(f'frozen_stages={frozen_stages!r}; valid: -1 (none), 0 (patch '
                             f'and position embedding) ... {depth} (all blocks)')
        style = block_style(block, scan=scan, mlp_ratio=mlp_ratio, ffn=ffn, norm=norm)
        if out_norm not in NORMS:
            raise ValueError(f'Unknown out_norm {out_norm!r}; valid: {", ".join(NORMS)}')
        norm_eps = 1e-6 if norm_eps is None else norm_eps
        self.in_channels, self.patch_size, self.depth = in_channels, patch_size, depth
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval
        self.grid_from_checkpoint = pretrain_img_size is None
        if pretrain_img_size is None:
            grid = pretrained_grid(init_cfg)
            pretrain_img_size = tuple(g * patch_size for g in grid) if grid else 224
        self.pretrain_img_size = to_2tuple(pretrain_img_size, 'pretrain_img_size')
        self.pos_hw = tuple(s // patch_size for s in self.pretrain_img_size)
        if min(self.pos_hw) < 1:
            raise ValueError(f'pretrain_img_size {pretrain_img_size} is smaller than the patch '
                             f'size {patch_size}')
        self.interpolate_mode = interpolate_mode
        self.out_scales = out_scales

        self.patch_embed = build_stem(stem, in_channels, dim, patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.pos_hw[0] * self.pos_hw[1], dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(dim, heads,
                  mixer=dict(family='transformer' if i in hybrid else mixers[i],
                             scan=style['scan'],
                             **((hybrid_cfg if i in hybrid else mixer_cfgs[i]) or {})),
                  mlp_ratio=style['mlp_ratio'], ffn=style['ffn'], norm=style['norm'],
                  norm_eps=norm_eps, mlp_multiple_of=mlp_multiple_of, drop_path=dpr[i],
                  layer_scale=layer_scale, with_cp=with_cp)
            for i in range(depth))
        grid_mixers = [i for i, b in enumerate(self.blocks)
                       if b.attn.scan == 'cross' or b.attn.locality or b.attn.grid]
        if cls_token and grid_mixers:
            raise ValueError(f'cls_token=True needs mixers that do not use the 2-D grid; blocks '
                             f'{grid_mixers} use the cross scan, locality or vig_gla')
        for i in self.out_indices:
            self.add_module(f'norm{i}', NORMS[out_norm](dim, eps=norm_eps))
        if out_scales is not None:
            self.sfp = nn.ModuleList(_sfp_branch(dim, s) for s in out_scales)
            self.out_strides = [patch_size / s for s in out_scales]
            self.out_channels = [dim] * len(out_scales)
        else:
            self.sfp = None
            self.out_strides = [patch_size] * len(self.out_indices)
            self.out_channels = [dim] * len(self.out_indices)
        self.num_features = list(self.out_channels)
        self._freeze_stages()
        self._setup_cuda_graph(cuda_graph, with_cp)
        self._setup_compile(compile)

    def _frozen_parts(self):
        if self.frozen_stages < 0:
            return []
        parts = [self.patch_embed, self.pos_embed]
        if self.cls_token is not None:
            parts.append(self.cls_token)
        for i in range(self.frozen_stages):
            parts.append(self.blocks[i])
            if i in self.out_indices:
                parts.append(getattr(self, f'norm{i}'))
        return parts

    def take_pos_grid(self, hw):
        """Give the position embedding the token grid ``hw`` (its values are overwritten by
        the load that follows). In place, so the parameter stays the one an optimizer holds."""
        hw = tuple(int(s) for s in hw)
        self.pos_embed.data = self.pos_embed.data.new_zeros(1, hw[0] * hw[1],
                                                            self.pos_embed.shape[-1])
        self.pos_hw = hw
        self.pretrain_img_size = tuple(s * self.patch_size for s in hw)

    def adapt_state_dict(self, state, prefix=''):
        """Fit a checkpoint's ``pos_embed`` stored at another grid (square, cls-token-free,
        or with one leading cls token, which is dropped) to this model, in place: resized to
        this model's grid, or, for a model given no pretrain_img_size, taken with its grid."""
        key = prefix + 'pos_embed'
        pe = state.get(key)
        if pe is None or pe.shape == self.pos_embed.shape:
            return state
        L = pe.shape[1]
        side = math.isqrt(L)
        if side * side != L and math.isqrt(L - 1) ** 2 == L - 1:
            pe, side = pe[:, 1:], math.isqrt(L - 1)
        if side * side != pe.shape[1] or pe.shape[-1] != self.pos_embed.shape[-1]:
            raise ValueError(f'Cannot resize checkpoint pos_embed of shape {tuple(pe.shape)} to '
                             f'{tuple(self.pos_embed.shape)}: expected a square grid of '
                             f'{self.pos_embed.shape[-1]}-d embeddings')
        if self.grid_from_checkpoint:
            self.take_pos_grid((side, side))
            state[key] = pe
        else:
            state[key] = resize_pos_embed(pe, (side, side), self.pos_hw, self.interpolate_mode)
        return state

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.adapt_state_dict(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _default_init(self):
        super()._default_init()
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    @property
    def num_layers(self):
        return self.depth

    def layer_id(self, name):
        head = name.split('.')[0]
        if head in ('patch_embed', 'pos_embed', 'cls_token'):
            return 0
        if head == 'blocks':
            return int(name.split('.')[1]) + 1
        return self.num_layers + 1

    def _forward(self, x):
        H, W = x.shape[2:]
        p = self.patch_size
        x = F.pad(x, (0, (-W) % p, 0, (-H) % p))
        x, hw = self.patch_embed(x)
        x = x + resize_pos_embed(self.pos_embed, self.pos_hw, hw, self.interpolate_mode)
        n_cls, blk_hw = 0, hw
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
            n_cls, blk_hw = 1, (1, x.shape[1])
        feats = []
        for i, blk in enumerate(self.blocks):
            x = blk(x, blk_hw)
            if i in self.out_indices:
                f = getattr(self, f'norm{i}')(x[:, n_cls:])
                feats.append(f.transpose(1, 2).reshape(x.shape[0], -1, *hw))
        if self.sfp is None:
            return tuple(f.contiguous() for f in feats)
        if len(feats) == 1:
            feats = feats * len(self.sfp)
        outs = []
        for f, branch, stride in zip(feats, self.sfp, self.out_strides):
            h, w = self.out_hw((H, W), stride)
            outs.append(branch(f)[:, :, :h, :w].contiguous())
        return tuple(outs)
