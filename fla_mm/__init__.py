"""fla_mm: flash-linear-attention token mixers as OpenMMLab backbones.

Importing the package registers its public modules into MMEngine's registries (MODELS,
OPTIM_WRAPPER_CONSTRUCTORS, TRANSFORMS and HOOKS), which mmseg and mmdet both reach through
their parent registry, and adds what MMEngine checkpoints pickle to torch's weights-only
allowlist (:mod:`fla_mm.checkpoint.safe_globals`), so that MMEngine's and OpenMMLab's own
tools load fla_mm's checkpoints with torch's safe loading. This is the one place that
registers.
"""
from mmengine.registry import HOOKS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS, TRANSFORMS

from .backbones import FLAPlain, FLAPyramid
from .checkpoint import safe_globals
from .hooks import FiniteCheckHook, InputSizeCheckHook
from .optim import FLALayerDecayOptimizerConstructor, SummarizingOptimWrapperConstructor
from .transforms import NameFileOnError

__version__ = '0.1.0'

for _module in (FLAPyramid, FLAPlain):
    MODELS.register_module(module=_module, force=True)
for _constructor in (FLALayerDecayOptimizerConstructor, SummarizingOptimWrapperConstructor):
    OPTIM_WRAPPER_CONSTRUCTORS.register_module(module=_constructor, force=True)
TRANSFORMS.register_module(module=NameFileOnError, force=True)
for _hook in (FiniteCheckHook, InputSizeCheckHook):
    HOOKS.register_module(module=_hook, force=True)
safe_globals.register()

__all__ = ['FLAPlain', 'FLAPyramid', 'FLALayerDecayOptimizerConstructor',
           'SummarizingOptimWrapperConstructor', 'NameFileOnError',
           'FiniteCheckHook', 'InputSizeCheckHook', '__version__']
