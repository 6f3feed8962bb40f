from .blocks import (BLOCK_STYLES, Block, DropPath, LayerNorm2d, Mlp, SwiGLU, block_style,
                     resize_pos_embed)
from .mixer import FAMILIES, TokenMixer
from .repmixer import ConvFFN, RepMixer, RepMixerBlock, reparameterize_model
from .scan import SCANS, merge, scan

__all__ = ['BLOCK_STYLES', 'Block', 'DropPath', 'LayerNorm2d', 'Mlp', 'SwiGLU', 'block_style',
           'resize_pos_embed', 'FAMILIES', 'TokenMixer', 'ConvFFN', 'RepMixer', 'RepMixerBlock',
           'reparameterize_model', 'SCANS', 'merge', 'scan']
