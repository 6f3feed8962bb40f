from .pyramid import FLAPyramid

__all__ = ['FLAPyramid']
