"""fla_mm: flash-linear-attention token mixers as OpenMMLab backbones.

Importing the package registers its public modules into MMEngine's MODELS registry, which
mmseg and mmdet both reach through their parent registry.
"""
from mmengine.registry import MODELS

from .backbones import FLAPyramid

__version__ = '0.1.0'

for _module in (FLAPyramid,):
    MODELS.register_module(module=_module, force=True)

__all__ = ['FLAPyramid', '__version__']
