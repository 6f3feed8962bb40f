from .plain import FLAPlain
from .pyramid import FLAPyramid

__all__ = ['FLAPlain', 'FLAPyramid']
