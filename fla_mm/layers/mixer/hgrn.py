"""HGRN (element-wise gated recurrence) and HGRN2 (its outer-product state, run as GLA)."""
import torch.nn as nn
import torch.nn.functional as F

from ... import ops
from ..modules import RMSNorm
from .base import TokenMixer, heads, register_mixer

CONV_NORM = dict(use_short_conv=False, conv_size=4, conv_bias=False, norm_eps=1e-5,
                 elementwise_affine=True)


@register_mixer
class HGRNMixer(TokenMixer):
    family, op, fla = 'hgrn', staticmethod(ops.hgrn), 'HGRNAttention'
    defaults = dict(expand_ratio=1, **CONV_NORM)
    note = ('exact; num_heads is unused (HGRN is element-wise); lower_bound (the HGRN '
            'model\'s per-layer forget-gate floor) is not supported.')

    def build(self, dim, num_heads, cfg):
        self.input_dim = int(dim * cfg['expand_ratio'])
        for n in ('i', 'f', 'g'):
            setattr(self, f'{n}_proj', nn.Linear(dim, self.input_dim, bias=False))
        self.short_convs(cfg, (self.input_dim, self.input_dim), None, names=('f', 'i'))
        self.g_norm = RMSNorm(self.input_dim, cfg['norm_eps'], cfg['elementwise_affine'])
        self.o_proj = nn.Linear(self.input_dim, dim, bias=False)

    def mix(self, x, ctx):
        i = self.short_conv('i', ctx.scan(self.i_proj(x)))
        f = self.short_conv('f', ctx.scan(self.f_proj(x)))
        f = F.logsigmoid(f.float())
        i = F.silu(i.float()) * (1 - f.exp())
        o = ctx.merge(self.op(i.to(x.dtype), f))
        return self.o_proj(self.g_norm(o, self.g_proj(x)))


@register_mixer
class HGRN2Mixer(TokenMixer):
    family, op, fla = 'hgrn2', staticmethod(ops.gla), 'HGRN2Attention'
    defaults = dict(expand_ratio=None, **CONV_NORM)
    note = ('exact with num_heads = dim // expand_ratio (expand_ratio defaults to '
            'dim // num_heads; FLA: 128); lower_bound is not supported.')

    def build(self, dim, num_heads, cfg):
        ratio = cfg['expand_ratio'] or dim // num_heads
        self.head_f_dim, self.head_i_dim = ratio, dim // num_heads
        self.forget_dim = num_heads * ratio
        self.q_proj = nn.Linear(dim, self.forget_dim, bias=False)
        self.f_proj = nn.Linear(dim, self.forget_dim, bias=False)
        self.i_proj = nn.Linear(dim, dim, bias=False)
        self.short_convs(cfg, (self.forget_dim, self.forget_dim, dim), None,
                         names=('q', 'f', 'i'))
        self.g_norm = RMSNorm(dim, cfg['norm_eps'], cfg['elementwise_affine'])
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def mix(self, x, ctx):
        B, L = x.shape[:2]
        q = F.silu(self.short_conv('q', ctx.scan(self.q_proj(x))))
        g = F.logsigmoid(self.short_conv('f', ctx.scan(self.f_proj(x))).float())
        i = self.short_conv('i', ctx.scan(self.i_proj(x)))
        k = (1 - g.exp()).to(i.dtype)
        o = self.op(heads(q, self.head_f_dim), heads(k, self.head_f_dim),
                    heads(i, self.head_i_dim), heads(g, self.head_f_dim))
        return self.o_proj(self.g_norm(ctx.merge(o).reshape(B, L, -1)))
