"""One function per mixer family, one layout ([B, T, H, D]), two backends.

On CUDA tensors the FLA Triton kernel runs; on CPU the chunked PyTorch reference with the
same math. Nothing outside this package knows which one ran.
"""
from .families import OPS, fla_available, gla, linear_attn, retnet, simple_gla, softmax_attn

__all__ = ['OPS', 'fla_available', 'gla', 'linear_attn', 'retnet', 'simple_gla', 'softmax_attn']
