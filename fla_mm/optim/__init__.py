from .layer_decay import FLALayerDecayOptimizerConstructor

__all__ = ['FLALayerDecayOptimizerConstructor']
