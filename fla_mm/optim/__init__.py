from .layer_decay import FLALayerDecayOptimizerConstructor
from .summarizing import SummarizingOptimWrapperConstructor

__all__ = ['FLALayerDecayOptimizerConstructor', 'SummarizingOptimWrapperConstructor']
