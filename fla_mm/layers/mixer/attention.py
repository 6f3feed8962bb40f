"""Softmax attention, the baseline (fla.layers.Attention), and BitNet's BitAttention.

Non-causal by default (vision), so no scan applies; ``causal=True`` makes them scanned
causal attention like the linear families.
"""
import torch.nn as nn

from ... import ops
from ..modules import BitLinear, RMSNorm
from .base import TokenMixer, heads, register_mixer


class AttentionMixer(TokenMixer):
    op, causal = staticmethod(ops.softmax_attn), False
    linear = nn.Linear

    def build(self, dim, num_heads, cfg):
        self.head_k_dim = self.head_v_dim = dim // num_heads
        if dim % num_heads:
            raise ValueError(f'dim={dim} must be divisible by num_heads={num_heads}')
        self.qkv_proj(dim, dim, dim, bias=cfg.get('qkv_bias', False), linear=self.linear)
        self.o_proj = self.linear(dim, dim, bias=cfg.get('o_bias', False))
        if cfg.get('qk_norm'):
            self.q_norm = RMSNorm(self.head_k_dim)
            self.k_norm = RMSNorm(self.head_k_dim)

    def mix(self, x, ctx):
        B, L = x.shape[:2]
        q, k, v = (heads(t, self.head_k_dim) for t in self.scanned_qkv(x, ctx))
        if self.cfg.get('qk_norm'):
            q, k = self.q_norm(q), self.k_norm(k)
        if self.cfg['rope_theta']:
            q, k = ops.rotary(q, self.cfg['rope_theta']), ops.rotary(k, self.cfg['rope_theta'])
        o = ctx.merge(self.op(q, k, v, causal=self.cfg['causal']))
        return self.o_proj(o.reshape(B, L, -1))


@register_mixer
class SoftmaxAttentionMixer(AttentionMixer):
    family, fla = 'transformer', 'Attention'
    defaults = dict(qkv_bias=True, o_bias=True, qk_norm=False, rope_theta=None, causal=False)
    note = ('vision defaults: non-causal, biases (ViT/DeiT layout), no rotary. FLA Attention '
            'is qkv_bias=False, o_bias=False, rope_theta=10000., causal=True: pass those for '
            'the same function (then the scan applies); window_size is not supported.')


@register_mixer
class BitAttentionMixer(AttentionMixer):
    family, fla, linear = 'bitnet', 'BitAttention', BitLinear
    defaults = dict(rope_theta=None, causal=False)
    note = ('BitLinear q/k/v/o projections (RMSNorm, 8-bit activations, ternary weights, '
            'straight-through) around softmax attention; non-causal and no rotary by default. '
            'BitAttention is always causal with rotary: pass rope_theta=10000., causal=True '
            'for the same function. The activation quantiser follows FusedBitLinear\'s fused '
            'kernel (fp32, ties away from zero).')
