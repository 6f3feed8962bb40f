"""Readers and key maps for ImageNet checkpoints of other projects (see :mod:`.formats`)."""
from .formats import FORMATS, VIG_MISMATCH, detect_format
from .io import CheckpointError, read_checkpoint, save_checkpoint
from .loader import checkpoint_grid, convert_for_model, load_pretrained

__all__ = ['FORMATS', 'VIG_MISMATCH', 'CheckpointError', 'checkpoint_grid', 'convert_for_model',
           'detect_format', 'load_pretrained', 'read_checkpoint', 'save_checkpoint']
