"""Pyramid layout: conv stem to stride 4, four stages with conv downsampling (ViG-H / Swin)."""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from ..layers import Block

ARCHS = {
    'tiny': dict(embed_dims=[96, 192, 384, 768], depths=[2, 2, 5, 2], num_heads=[3, 6, 12, 24]),
    'small': dict(embed_dims=[96, 192, 384, 768], depths=[2, 2, 15, 2], num_heads=[3, 6, 12, 24]),
    'base': dict(embed_dims=[128, 256, 512, 1024], depths=[2, 2, 15, 2], num_heads=[4, 8, 16, 32]),
}


def resolve_arch(arch, archs):
    """A named size or a dict with the same keys."""
    if isinstance(arch, str):
        if arch not in archs:
            raise ValueError(f'Unknown arch {arch!r}; valid sizes: {", ".join(archs)} '
                             f'(or a dict with keys {", ".join(next(iter(archs.values())))})')
        return copy.deepcopy(archs[arch])
    missing = set(next(iter(archs.values()))) - set(arch)
    if missing:
        raise ValueError(f'arch dict lacks keys {sorted(missing)}')
    return dict(arch)


def check_input(x, in_channels):
    if x.dim() != 4:
        raise ValueError(f'Backbone input must be 4-D [B, C, H, W], got shape {tuple(x.shape)}')
    if x.shape[1] != in_channels:
        raise ValueError(f'Backbone expects {in_channels} input channels, got {x.shape[1]} '
                         f'(input shape {tuple(x.shape)})')


class Stem(nn.Module):
    """Two stride-2 3x3 convs: image -> tokens at stride 4."""

    def __init__(self, in_channels, dim):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, dim // 2, 3, 2, 1), nn.BatchNorm2d(dim // 2), nn.GELU(),
            nn.Conv2d(dim // 2, dim, 3, 2, 1))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.proj(x)
        hw = x.shape[2:]
        return self.norm(x.flatten(2).transpose(1, 2)), tuple(hw)


class Downsample(nn.Module):
    """Stride-2 3x3 conv between stages, then LayerNorm on the tokens."""

    def __init__(self, dim, out_dim):
        super().__init__()
        self.reduction = nn.Conv2d(dim, out_dim, 3, 2, 1)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x, hw):
        B, L, C = x.shape
        x = self.reduction(x.transpose(1, 2).reshape(B, C, *hw))
        hw = tuple(x.shape[2:])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class Stage(nn.Module):
    def __init__(self, blocks, downsample=None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class FLAPyramid(BaseModule):
    """Four-stage linear-attention backbone emitting stride 4/8/16/32 maps.

    Args:
        arch: 'tiny' | 'small' | 'base' or dict(embed_dims, depths, num_heads).
        mixer: family name for every block, or a list of four (one per stage).
        scan: scan order ('uni', 'bi', 'cross', 'random').
        mixer_cfg: extra TokenMixer options (expand_k, direction_gates, ...).
        hybrid_layers: global block indices that use softmax attention ('transformer').
        mlp_ratio, ffn: FFN width and kind ('mlp' or 'swiglu').
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        layer_scale: initial value of per-channel residual scales, or None.
        out_indices: stages whose (normed) maps are returned.
        frozen_stages: stages (and the stem, from 0) kept frozen and in eval mode; -1 = none.
        norm_eval: keep BatchNorm layers in eval mode while training.
        with_cp: activation checkpointing per block.
        pretrain_img_size: the classification resolution (kept for checkpoint resizing).
        init_cfg: e.g. dict(type='Pretrained', checkpoint=PATH, prefix='backbone.').
    """

    def __init__(self, arch='tiny', mixer='gla', scan='bi', mixer_cfg=None, hybrid_layers=(),
                 mlp_ratio=4.0, ffn='mlp', drop_path_rate=0.1, layer_scale=None, in_channels=3,
                 out_indices=(0, 1, 2, 3), frozen_stages=-1, norm_eval=False, with_cp=False,
                 pretrain_img_size=224, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        arch = resolve_arch(arch, ARCHS)
        dims, depths, heads = arch['embed_dims'], arch['depths'], arch['num_heads']
        mixers = [mixer] * len(depths) if isinstance(mixer, str) else list(mixer)
        if len(mixers) != len(depths):
            raise ValueError(f'mixer list needs {len(depths)} entries (one per stage), got {mixers}')
        for i in out_indices:
            if not 0 <= i < len(depths):
                raise ValueError(f'out_indices {out_indices} must lie in [0, {len(depths)})')
        self.in_channels, self.out_indices = in_channels, tuple(out_indices)
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval
        self.pretrain_img_size = pretrain_img_size
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.patch_embed = Stem(in_channels, dims[0])
        self.stages = nn.ModuleList()
        idx = 0
        for i, depth in enumerate(depths):
            blocks = []
            for _ in range(depth):
                family = 'transformer' if idx in hybrid_layers else mixers[i]
                blocks.append(Block(dims[i], heads[i],
                                    mixer=dict(family=family, scan=scan, **(mixer_cfg or {})),
                                    mlp_ratio=mlp_ratio, ffn=ffn, drop_path=dpr[idx],
                                    layer_scale=layer_scale, with_cp=with_cp))
                idx += 1
            down = Downsample(dims[i], dims[i + 1]) if i + 1 < len(depths) else None
            self.stages.append(Stage(blocks, down))
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(dims[i]))
        self.num_features = dims
        self._freeze_stages()

    def _freeze_stages(self):
        frozen = []
        if self.frozen_stages >= 0:
            frozen.append(self.patch_embed)
        for i in range(min(self.frozen_stages + 1, len(self.stages))):
            frozen.append(self.stages[i])
            if i in self.out_indices:
                frozen.append(getattr(self, f'norm{i}'))
            if i > 0 and self.stages[i - 1].downsample is not None:
                frozen.append(self.stages[i - 1].downsample)
        for m in frozen:
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def init_weights(self):
        if self.init_cfg is not None and self.init_cfg.get('type') == 'Pretrained':
            from ..checkpoint import load_pretrained
            load_pretrained(self, **{k: v for k, v in self.init_cfg.items() if k != 'type'})
            return
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        super().init_weights()

    def forward(self, x):
        check_input(x, self.in_channels)
        x, hw = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.stages):
            for blk in stage.blocks:
                x = blk(x, hw)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(x)
                outs.append(out.transpose(1, 2).reshape(x.shape[0], -1, *hw).contiguous())
            if stage.downsample is not None:
                x, hw = stage.downsample(x, hw)
        return tuple(outs)
