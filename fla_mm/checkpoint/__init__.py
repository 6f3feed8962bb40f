from .loader import load_pretrained

__all__ = ['load_pretrained']
