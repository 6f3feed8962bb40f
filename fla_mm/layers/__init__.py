from .blocks import Block, DropPath, Mlp, SwiGLU
from .mixer import FAMILIES, TokenMixer
from .scan import SCANS, merge, scan

__all__ = ['Block', 'DropPath', 'Mlp', 'SwiGLU', 'FAMILIES', 'TokenMixer', 'SCANS', 'merge', 'scan']
