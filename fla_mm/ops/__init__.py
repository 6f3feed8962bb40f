"""One function per mixer family, one layout ([B, T, H, D]), two backends.

On CUDA tensors the FLA Triton kernel runs; on CPU (or with FLA_MM_BACKEND=reference) the
chunked PyTorch reference with the same math. Nothing outside this package knows which ran.
"""
from .families import (BACKENDS, BI_FUSED_FAMILIES, BI_KERNELS, OPS, KernelError, abc, backend,
                       bi_decay_attn, delta_rule, fla_available, gated_delta_rule, gla, gsa,
                       hgrn, l2norm, linear_attn, retnet, retnet_decay, rwkv6, rwkv7,
                       simple_gla, softmax_attn, triton_bwd_broken, triton_bwd_broken_for)

__all__ = ['BACKENDS', 'BI_FUSED_FAMILIES', 'BI_KERNELS', 'OPS', 'KernelError', 'abc', 'backend',
           'bi_decay_attn', 'delta_rule', 'fla_available', 'gated_delta_rule', 'gla', 'gsa',
           'hgrn', 'l2norm', 'linear_attn', 'retnet', 'retnet_decay', 'rwkv6', 'rwkv7',
           'simple_gla', 'softmax_attn', 'triton_bwd_broken', 'triton_bwd_broken_for']
