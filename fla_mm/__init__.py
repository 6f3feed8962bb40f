"""fla_mm: flash-linear-attention token mixers as OpenMMLab backbones.

Importing the package registers its public modules into MMEngine's registries (MODELS and
OPTIM_WRAPPER_CONSTRUCTORS), which mmseg and mmdet both reach through their parent registry.
This is the one place that registers.
"""
from mmengine.registry import MODELS, OPTIM_WRAPPER_CONSTRUCTORS

from .backbones import FLAPlain, FLAPyramid
from .optim import FLALayerDecayOptimizerConstructor

__version__ = '0.1.0'

for _module in (FLAPyramid, FLAPlain):
    MODELS.register_module(module=_module, force=True)
OPTIM_WRAPPER_CONSTRUCTORS.register_module(module=FLALayerDecayOptimizerConstructor, force=True)

__all__ = ['FLAPlain', 'FLAPyramid', 'FLALayerDecayOptimizerConstructor', '__version__']
