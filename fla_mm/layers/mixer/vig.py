"""ViG / ViG-H's mixer (hustvl/ViG GLA2D): GLA whose every input comes from a depthwise 3x3
conv of the token grid, with one decay gate per scan direction."""
import torch
import torch.nn as nn

from ... import ops
from ..modules import RMSNorm, activation_fn
from ..scan import num_directions
from .base import TokenMixer, heads, register_mixer
from .decay import log_decay


@register_mixer
class ViGGLAMixer(TokenMixer):
    family, op, gate, grid = 'vig_gla', staticmethod(ops.gla), 'key', True
    defaults = dict(expand_k=0.5, expand_v=1.0, gate_low_rank_dim=16, gate_logit_normalizer=16,
                    clamp_min=None, conv_act=None, conv_bias=False, out_act=None,
                    o_scale=None, norm_eps=1e-6)
    note = ('ViG / ViG-H\'s mixer (hustvl/ViG GLA2D, GatedLinearAttention with rope_mode '
            '"none"), exact: one decay gate per scan direction (always), the depthwise 3x3 '
            'conv local_conv (conv_bias: ViG use_bias_in_dwconv) feeding every projection '
            '(conv_act="silu": use_act_in_conv), o_scale times the merged directions '
            '(None: their mean, as ViG-H and ViG training; ViG\'s eval path: 0.25), g_norm '
            'and l_norm mixed by sigmoid(g_proj), out_act="swish": use_out_act. Needs the '
            '2-D grid; no fla.layers counterpart.')

    def build(self, dim, num_heads, cfg):
        key_dim, value_dim = self.head_dims(cfg, dim, num_heads)
        if value_dim != dim:
            raise ValueError(f'vig_gla normalises the local branch per value head: expand_v '
                             f'must be 1.0, got {cfg["expand_v"]}')
        self.num_gates = num_directions(self.scan)    # ViG: one decay gate per direction
        self.local_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=cfg['conv_bias'])
        self.conv_act, self.out_act = activation_fn(cfg['conv_act']), activation_fn(cfg['out_act'])
        self.qkv_proj(dim, key_dim, value_dim)
        self.gk_proj = nn.Sequential(nn.Linear(dim, cfg['gate_low_rank_dim'], bias=False),
                                     nn.Linear(cfg['gate_low_rank_dim'], key_dim * self.num_gates))
        self.g_proj = nn.Linear(dim, value_dim)
        self.g_norm = RMSNorm(self.head_v_dim, cfg['norm_eps'])
        self.l_norm = RMSNorm(self.head_v_dim, cfg['norm_eps'])
        self.o_proj = nn.Linear(value_dim, dim, bias=False)

    def mix(self, x, ctx):
        """l = act(DWConv3x3(x)); q, k, v, gates and the output gate all come from l;
        o = o_scale * merge(GLA per direction); s = sigmoid(g_proj(l));
        y = o_proj(out_act(g_norm(o) * s + l_norm(l) * (1 - s)))."""
        B, L, C = x.shape
        x = self.local_conv(x.transpose(1, 2).reshape(B, C, *ctx.hw)).flatten(2).transpose(1, 2)
        if self.conv_act is not None:
            x = self.conv_act(x)
        q, k, v = self.scanned_qkv(x, ctx)
        q, k, v = heads(q, self.head_k_dim), heads(k, self.head_k_dim), heads(v, self.head_v_dim)
        g = heads(ctx.scan_gates(log_decay(self, x), self.num_gates), self.head_k_dim)
        o = ctx.merge(self.op(q, k, v, g))
        scale = self.cfg['o_scale']
        o = o * (1.0 / self.num_gates if scale is None else scale)
        s = torch.sigmoid(heads(self.g_proj(x), self.head_v_dim))
        o = (self.g_norm(o) * s + self.l_norm(heads(x, self.head_v_dim)) * (1 - s))
        o = o.reshape(B, L, -1)
        return self.o_proj(o if self.out_act is None else self.out_act(o))
