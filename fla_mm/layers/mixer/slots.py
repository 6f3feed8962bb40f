"""Gated Slot Attention and ABC: attention over a bounded memory of ``num_slots`` slots."""
import torch.nn as nn
import torch.nn.functional as F

from ... import ops
from ..modules import RMSNorm, activation_fn
from .base import TokenMixer, heads, register_mixer

CONV_NORM = dict(use_short_conv=False, conv_size=4, conv_bias=False, norm_eps=1e-5,
                 elementwise_affine=True)


class SlotMixer(TokenMixer):
    """q, k, v (+ short convs) and the slot count both families share."""

    def build_qkv(self, dim, num_heads, cfg):
        key_dim, value_dim = self.head_dims(cfg, dim, num_heads)
        self.num_slots = cfg['num_slots'] or self.head_k_dim
        self.qkv_proj(dim, key_dim, value_dim)
        return key_dim, value_dim

    def scanned_heads(self, x, ctx):
        q, k, v = self.scanned_qkv(x, ctx)
        q, k, v = self.short_conv('q', q), self.short_conv('k', k), self.short_conv('v', v)
        return heads(q, self.head_k_dim), heads(k, self.head_k_dim), heads(v, self.head_v_dim)


@register_mixer
class GSAMixer(SlotMixer):
    family, op, fla = 'gsa', staticmethod(ops.gsa), 'GatedSlotAttention'
    defaults = dict(expand_k=1.0, expand_v=1.0, num_slots=None, gate_logit_normalizer=8,
                    feature_map='swish', scale=1.0, **CONV_NORM)
    note = 'exact for feature_map swish / relu (t2r not implemented), num_kv_heads=None.'

    def build(self, dim, num_heads, cfg):
        key_dim, value_dim = self.build_qkv(dim, num_heads, cfg)
        if value_dim != dim:
            raise ValueError(f'gsa normalises over dim={dim}: expand_v must be 1.0')
        if cfg['feature_map'] not in ('swish', 'relu'):
            raise ValueError(f"Unsupported gsa feature_map {cfg['feature_map']!r}; "
                             f"valid: swish, relu")
        self.f_proj = nn.Linear(dim, num_heads * self.num_slots, bias=False)
        self.short_convs(cfg, (key_dim, key_dim, value_dim))
        self.g_norm = RMSNorm(dim, cfg['norm_eps'], cfg['elementwise_affine'])
        self.o_proj = nn.Linear(value_dim, dim, bias=False)

    def mix(self, x, ctx):
        B, L = x.shape[:2]
        cfg = self.cfg
        q, k, v = self.scanned_heads(x, ctx)
        act = activation_fn(cfg['feature_map'])
        q, k = act(q), act(k)
        f = F.logsigmoid(self.f_proj(x).float()) / cfg['gate_logit_normalizer']
        f = heads(ctx.scan(f), self.num_slots)
        s = (1 - f.exp()).to(q.dtype)
        o = ctx.merge(self.op(q, k, F.silu(v), s, f, scale=cfg['scale']))
        return self.o_proj(self.g_norm(F.silu(o.reshape(B, L, -1))))


@register_mixer
class ABCMixer(SlotMixer):
    family, op, fla = 'abc', staticmethod(ops.abc), 'ABCAttention'
    defaults = dict(expand_k=0.5, expand_v=1.0, num_slots=None, use_rope=True,
                    use_input_gate=False, use_output_gate=True, use_norm=True, clamp_min=-32.0,
                    clamp_max=32.0, **CONV_NORM)
    note = 'exact (rotary along each scanned sequence).'

    def build(self, dim, num_heads, cfg):
        key_dim, value_dim = self.build_qkv(dim, num_heads, cfg)
        if cfg['use_output_gate']:
            self.g_proj = nn.Linear(dim, value_dim, bias=False)
        self.s_proj = nn.Linear(dim, num_heads * self.num_slots, bias=False)
        self.o_proj = nn.Linear(value_dim, dim, bias=False)
        self.short_convs(cfg, (key_dim, key_dim, value_dim))
        if cfg['use_norm']:
            self.g_norm = RMSNorm(self.head_v_dim, cfg['norm_eps'], cfg['elementwise_affine'])

    def mix(self, x, ctx):
        B, L = x.shape[:2]
        cfg = self.cfg
        q, k, v = self.scanned_heads(x, ctx)
        if cfg['use_input_gate']:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        if cfg['use_rope']:
            q, k = ops.rotary(q), ops.rotary(k)
        s = self.s_proj(x).clamp(cfg['clamp_min'], cfg['clamp_max'])
        o = ctx.merge(self.op(q, k, v, heads(ctx.scan(s), self.num_slots)))
        if cfg['use_output_gate']:
            g = heads(self.g_proj(x), self.head_v_dim)
            o = self.g_norm(o, g) if cfg['use_norm'] else F.silu(g) * o
        elif cfg['use_norm']:
            o = self.g_norm(o)
        return self.o_proj(o.reshape(B, L, -1))
