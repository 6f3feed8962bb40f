"""DeltaNet and Gated DeltaNet: the delta rule, with an optional data-dependent decay."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import ops
from ..modules import RMSNorm, activation_fn
from .base import TokenMixer, heads, register_mixer


class DeltaRuleMixer(TokenMixer):
    """The output path both share: o_norm (gated by g_proj with use_gate) and o_proj."""

    def build_output(self, cfg, value_dim, activation='swish'):
        if cfg['use_gate']:
            self.g_proj = nn.Linear(self.dim, value_dim, bias=False)
            self.o_norm = RMSNorm(self.head_v_dim, cfg['norm_eps'], activation=activation)
        else:
            self.o_norm = RMSNorm(self.head_v_dim, cfg['norm_eps'])
        self.o_proj = nn.Linear(value_dim, self.dim, bias=False)

    def output(self, x, o):
        B, L = x.shape[:2]
        g = heads(self.g_proj(x), self.head_v_dim) if self.cfg['use_gate'] else None
        return self.o_proj(self.o_norm(o, g).reshape(B, L, -1))


@register_mixer
class DeltaNetMixer(DeltaRuleMixer):
    family, op, fla = 'delta_net', staticmethod(ops.delta_rule), 'DeltaNet'
    defaults = dict(expand_k=1.0, expand_v=1.0, use_beta=True, use_gate=False,
                    use_short_conv=True, conv_size=4, conv_bias=False, allow_neg_eigval=False,
                    qk_activation='silu', qk_norm='l2', norm_eps=1e-5)
    note = 'exact.'

    def build(self, dim, num_heads, cfg):
        key_dim, value_dim = self.head_dims(cfg, dim, num_heads)
        self.qkv_proj(dim, key_dim, value_dim)
        if cfg['use_beta']:
            self.b_proj = nn.Linear(dim, num_heads, bias=False)
        qk_act = 'silu' if cfg['qk_activation'] == 'silu' else None
        self.short_convs(cfg, (key_dim, key_dim, value_dim), (qk_act, qk_act, 'silu'))
        if cfg['qk_norm'] not in ('l2', 'sum'):
            raise ValueError(f"Unknown qk_norm {cfg['qk_norm']!r}; valid: l2, sum")
        activation_fn(cfg['qk_activation'], 'qk_activation')
        self.build_output(cfg, value_dim)

    def mix(self, x, ctx):
        cfg = self.cfg
        q, k, v = self.scanned_qkv(x, ctx)
        qk_act = 'silu' if cfg['qk_activation'] == 'silu' else None
        q, k = self.short_conv('q', q, qk_act), self.short_conv('k', k, qk_act)
        v = self.short_conv('v', v, 'silu')
        q, k, v = heads(q, self.head_k_dim), heads(k, self.head_k_dim), heads(v, self.head_v_dim)
        if cfg['qk_activation'] != 'silu':
            act = activation_fn(cfg['qk_activation'])
            q, k = act(q), act(k)
        if cfg['qk_norm'] == 'sum':
            q, k = q / q.sum(-1, keepdim=True), k / k.sum(-1, keepdim=True)
        if cfg['use_beta']:
            beta = ctx.scan(self.b_proj(x).float().sigmoid())
        else:
            beta = q.new_ones(q.shape[:3], dtype=torch.float32)
        if cfg['allow_neg_eigval']:
            beta = beta * 2.0
        o = self.op(q, k, v, beta.to(q.dtype), qk_l2norm=cfg['qk_norm'] == 'l2')
        return self.output(x, ctx.merge(o))


@register_mixer
class GatedDeltaNetMixer(DeltaRuleMixer):
    family, op, gate = 'gated_delta_net', staticmethod(ops.gated_delta_rule), 'head'
    fla = 'GatedDeltaNet'
    defaults = dict(expand_k=1.0, expand_v=1.0, head_dim=None, num_v_heads=None,
                    use_gate=True, use_short_conv=True, conv_size=4, conv_bias=False,
                    allow_neg_eigval=False, norm_eps=1e-5, output_gate_activation='swish')
    note = ('exact with head_dim and expand_v given as in GatedDeltaNet (head_dim defaults to '
            'dim*expand_k/num_heads; FLA: 256 and expand_v=2); num_v_heads must equal '
            'num_heads. The gate -exp(A_log)*softplus(a+dt_bias) and sigmoid(beta) run in '
            'PyTorch, not in the kernel.')

    def build(self, dim, num_heads, cfg):
        head_dim = cfg['head_dim'] or round(dim * cfg['expand_k']) // num_heads
        if cfg['num_v_heads'] not in (None, num_heads):
            raise ValueError('gated_delta_net: num_v_heads != num_heads is not supported')
        self.head_k_dim, self.head_v_dim = head_dim, round(head_dim * cfg['expand_v'])
        key_dim, value_dim = num_heads * self.head_k_dim, num_heads * self.head_v_dim
        self.key_dim, self.value_dim = key_dim, value_dim
        self.qkv_proj(dim, key_dim, value_dim)
        gates = num_heads * self.num_gates
        self.a_proj = nn.Linear(dim, gates, bias=False)
        self.b_proj = nn.Linear(dim, num_heads, bias=False)
        A = torch.empty(gates).uniform_(0, 16)
        self.A_log = nn.Parameter(torch.log(A))
        dt = torch.exp(torch.rand(gates) * (math.log(0.1) - math.log(0.001))
                       + math.log(0.001)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log._no_weight_decay = self.dt_bias._no_weight_decay = True
        self.short_convs(cfg, (key_dim, key_dim, value_dim))
        self.build_output(cfg, value_dim, cfg['output_gate_activation'])

    def mix(self, x, ctx):
        q, k, v = self.scanned_qkv(x, ctx)
        q, k, v = (self.short_conv(n, t, 'silu') for n, t in zip('qkv', (q, k, v)))
        q, k, v = heads(q, self.head_k_dim), heads(k, self.head_k_dim), heads(v, self.head_v_dim)
        g = -self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias.float())
        beta = self.b_proj(x).float().sigmoid()
        if self.cfg['allow_neg_eigval']:
            beta = beta * 2.0
        o = self.op(q, k, v, ctx.scan_gates(g, self.num_gates), ctx.scan(beta).to(q.dtype),
                    qk_l2norm=True)
        return self.output(x, ctx.merge(o))
