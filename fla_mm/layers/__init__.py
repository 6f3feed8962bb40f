"""Everything between the stem and a backbone's stage outputs, in PyTorch modules.

- ``modules``: small shared layers with ``fla.modules``' parameter names (RMSNorm,
  ShortConv, BitLinear, LoRA, token shift).
- ``scan``: scan orders, the 2-D grid to 1-D sequences and back, and the ScanContext a
  mixer's forward receives.
- ``mixer/``: one registered TokenMixer class per family (``mixer/base.py`` owns the
  options, scan, merge and locality; each family module holds its ``build`` and ``mix``).
- ``blocks``: the pre-norm residual block, FFNs, drop path, position-embedding resize.
- ``repmixer``: FastViT's reparameterisable conv blocks for early stages.

Layers call :mod:`fla_mm.ops` for every token-mixing op and never look at which backend ran.
"""
from .blocks import (BLOCK_STYLES, Block, DropPath, LayerNorm2d, Mlp, SwiGLU, block_style,
                     resize_pos_embed)
from .mixer import FAMILIES, MIXERS, TokenMixer, register_mixer
from .repmixer import ConvFFN, RepMixer, RepMixerBlock, reparameterize_model
from .scan import SCANS, ScanContext, merge, scan

__all__ = ['BLOCK_STYLES', 'Block', 'DropPath', 'LayerNorm2d', 'Mlp', 'SwiGLU', 'block_style',
           'resize_pos_embed', 'FAMILIES', 'MIXERS', 'TokenMixer', 'register_mixer', 'ConvFFN',
           'RepMixer', 'RepMixerBlock', 'reparameterize_model', 'SCANS', 'ScanContext', 'merge',
           'scan']
