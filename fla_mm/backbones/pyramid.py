"""Pyramid layout: conv stem to stride 4, four stages with conv downsampling (ViG-H / Swin)."""
import torch.nn as nn

from ..layers import Block, RepMixerBlock, block_style
from ..layers.blocks import NORMS
from .base import FLABackboneBase, check_indices, check_mixers, per_item, resolve_arch
from .stem import build_stem

# ViG-H-T / S / B scale (Swin-T / S / B widths).
ARCHS = {
    'tiny': dict(embed_dims=[96, 192, 384, 768], depths=[2, 2, 5, 2], num_heads=[3, 6, 12, 24]),
    'small': dict(embed_dims=[96, 192, 384, 768], depths=[2, 2, 15, 2], num_heads=[3, 6, 12, 24]),
    'base': dict(embed_dims=[128, 256, 512, 1024], depths=[2, 2, 15, 2], num_heads=[4, 8, 16, 32]),
}

CONV_MIXERS = ('repmixer',)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (ceil of odd sizes), then LayerNorm on the tokens."""

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
    """Downsample into the stage (none for the first), then its blocks."""

    def __init__(self, blocks, downsample=None):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x, hw):
        if self.downsample is not None:
            x, hw = self.downsample(x, hw)
        for blk in self.blocks:
            x = blk(x, hw)
        return x, hw


class FLAPyramid(FLABackboneBase):
    """Four-stage linear-attention backbone emitting stride 4/8/16/32 maps.

    Any input size of at least 4x4 works; output ``i`` has ceil(H/s) x ceil(W/s) cells for
    its stride s = 4 * 2**i (the stride-2 convs round odd sizes up).

    Args:
        arch: 'tiny' | 'small' | 'base' or dict(embed_dims, depths, num_heads).
        mixer: mixer of every block, or a list with one per stage: a family of
            ``fla_mm.layers.FAMILIES`` or 'repmixer' (FastViT conv stage, e.g.
            ``['repmixer', 'repmixer', 'gla', 'gla']``).
        scan: scan order ('uni', 'bi', 'cross', 'random'); default from ``block``.
        mixer_cfg: extra TokenMixer options (expand_k, direction_gates, ...), a dict or one
            per stage; for 'repmixer' stages: kernel_size.
        hybrid_layers: global block indices (0-based over all stages) that use softmax
            attention ('transformer') instead.
        hybrid_cfg: TokenMixer options of those blocks (``mixer_cfg`` is not applied to them).
        block: block style, 'vig' (LayerNorm + GELU MLP, bi scan) or 'illama' (RMSNorm +
            SwiGLU, causal uni scan); ``mlp_ratio``, ``ffn``, ``norm`` override its defaults.
        mlp_multiple_of: round FFN widths up to a multiple of this (ViG-H: 32 with
            ``mlp_ratio=8/3``).
        norm_eps: eps of the block and output norms; None: 1e-6 in blocks, 1e-5 in the
            output norms (ViG-H: 1e-5 everywhere). Stem and downsampling norms use 1e-5.
        out_norm: output norms 'ln' (LayerNorm) or 'rms'.
        stem: 'conv_bn' (conv-BN-GELU-conv), 'vig_h' (conv-LN-GELU-conv, ViG-H), 'patch'
            (one 4x4 conv); see :mod:`fla_mm.backbones.stem`.
        drop_path_rate: stochastic depth, rising linearly over all blocks.
        layer_scale: initial per-channel residual scale, or None (RepMixer stages use 1e-5
            when None, as FastViT).
        in_channels: image channels.
        out_indices: stages whose (normed) maps are returned.
        frozen_stages: -1 none; 0 the stem; k the stem and stages 0..k-1 (with their
            downsampling and output norms): no gradients, eval mode after ``.train()``.
        norm_eval: keep BatchNorm layers in eval mode while training.
        with_cp: activation checkpointing per block.
        pretrain_img_size: the classification resolution; the pyramid has no absolute
            position embedding, so it is only recorded (for converters and the plain layout's
            symmetry).
        cuda_graph: in training on CUDA, replay forward and backward from a CUDA graph
            per input shape (see ``FLABackboneBase._setup_cuda_graph``).
        compile: False, True or a dict of ``torch.compile`` arguments: the forward (with
            ``cuda_graph``, only what each graph captures: the fast path for training on
            GPUs, eager elsewhere) through ``torch.compile``
            (``FLABackboneBase._setup_compile``).
        init_cfg: e.g. dict(type='Pretrained', checkpoint=PATH, prefix='backbone.').
    """

    patch_size = 4

    @staticmethod
    def input_multiple(backbone_cfg):
        """Input sizes that are multiples of this pass every stage without ceil rounding
        (stem 4, then three stride-2 downsamples), so each output is exactly H/stride."""
        return 32

    def __init__(self, arch='tiny', mixer='gla', scan=None, mixer_cfg=None, hybrid_layers=(),
                 hybrid_cfg=None, block='vig', mlp_ratio=None, ffn=None, norm=None,
                 mlp_multiple_of=1, norm_eps=None, out_norm='ln', stem='conv_bn',
                 drop_path_rate=0.1, layer_scale=None, in_channels=3, out_indices=(0, 1, 2, 3),
                 frozen_stages=-1, norm_eval=False, with_cp=False, pretrain_img_size=224,
                 cuda_graph=False, compile=False, init_cfg=None, **unknown):
        super().__init__(init_cfg=init_cfg, unknown=unknown)
        arch = resolve_arch(arch, ARCHS)
        dims, depths, heads = arch['embed_dims'], arch['depths'], arch['num_heads']
        n = len(depths)
        if not (len(dims) == len(heads) == n):
            raise ValueError(f'arch embed_dims {dims}, depths {depths} and num_heads {heads} '
                             f'must have the same length')
        mixers = per_item(mixer, n, 'mixer (one per stage)')
        check_mixers(mixers, extra=CONV_MIXERS)
        mixer_cfgs = per_item(mixer_cfg, n, 'mixer_cfg (one per stage)')
        total = sum(depths)
        hybrid = set(check_indices(tuple(hybrid_layers), total, 'hybrid_layers'))
        self.out_indices = check_indices(out_indices, n, 'out_indices')
        if not (isinstance(frozen_stages, int) and -1 <= frozen_stages <= n):
            raise ValueError(f'frozen_stages={frozen_stages!r}; valid: -1 (none), 0 (stem) '
                             f'... {n} (stem and all stages)')
        style = block_style(block, scan=scan, mlp_ratio=mlp_ratio, ffn=ffn, norm=norm)
        if out_norm not in NORMS:
            raise ValueError(f'Unknown out_norm {out_norm!r}; valid: {", ".join(NORMS)}')
        self.in_channels, self.frozen_stages, self.norm_eval = in_channels, frozen_stages, norm_eval
        self.pretrain_img_size = pretrain_img_size
        self.depths, self.mixers = list(depths), mixers
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]

        self.patch_embed = build_stem(stem, in_channels, dims[0], self.patch_size)
        self.stages = nn.ModuleList()
        idx = 0
        for i, depth in enumerate(depths):
            blocks = []
            for _ in range(depth):
                cfg = dict((hybrid_cfg if idx in hybrid else mixer_cfgs[i]) or {})
                if mixers[i] == 'repmixer' and idx not in hybrid:
                    blocks.append(RepMixerBlock(
                        dims[i], mlp_ratio=style['mlp_ratio'], drop_path=dpr[idx],
                        layer_scale=layer_scale or 1e-5, with_cp=with_cp, **cfg))
                else:
                    family = 'transformer' if idx in hybrid else mixers[i]
                    blocks.append(Block(
                        dims[i], heads[i], mixer=dict(family=family, scan=style['scan'], **cfg),
                        mlp_ratio=style['mlp_ratio'], ffn=style['ffn'], norm=style['norm'],
                        norm_eps=1e-6 if norm_eps is None else norm_eps,
                        mlp_multiple_of=mlp_multiple_of,
                        drop_path=dpr[idx], layer_scale=layer_scale, with_cp=with_cp))
                idx += 1
            down = Downsample(dims[i - 1], dims[i]) if i > 0 else None
            self.stages.append(Stage(blocks, down))
        for i in self.out_indices:
            self.add_module(f'norm{i}', NORMS[out_norm](
                dims[i], eps=1e-5 if norm_eps is None else norm_eps))
        self.num_features = list(dims)
        self.out_channels = [dims[i] for i in self.out_indices]
        self.out_strides = [4 * 2 ** i for i in self.out_indices]
        self._freeze_stages()
        self._setup_cuda_graph(cuda_graph, with_cp)
        self._setup_compile(compile)

    def _frozen_parts(self):
        parts = []
        if self.frozen_stages >= 0:
            parts.append(self.patch_embed)
        for i in range(self.frozen_stages):
            parts.append(self.stages[i])
            if i in self.out_indices:
                parts.append(getattr(self, f'norm{i}'))
        return parts

    @property
    def num_layers(self):
        return sum(self.depths)

    def layer_id(self, name):
        parts = name.split('.')
        if parts[0] == 'patch_embed':
            return 0
        if parts[0] == 'stages':
            s = int(parts[1])
            offset = sum(self.depths[:s])
            if parts[2] == 'blocks':
                return offset + int(parts[3]) + 1
            return offset + 1      # the downsampling into stage s goes with its first block
        return self.num_layers + 1

    def _forward(self, x):
        x, hw = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, hw = stage(x, hw)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(x)
                outs.append(out.transpose(1, 2).reshape(x.shape[0], -1, *hw).contiguous())
        return tuple(outs)
