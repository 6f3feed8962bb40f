"""GLA, simple GLA and RetNet: one output-gated linear attention, three decays.

GLA decays per key channel (``gate='key'``), simple GLA per head (``'head'``), RetNet with a
fixed per-head rate. Their bi-scan without short conv runs as one op for both directions,
:func:`fla_mm.ops.bi_decay_attn`, which reads the directions in place (no flips); with rotary
(RetNet's default) it rotates q and k at each direction's own positions.
"""
import torch.nn as nn
import torch.nn.functional as F

from ... import ops
from ..modules import RMSNorm, activation_fn
from .base import TokenMixer, heads, register_mixer

CONV = dict(use_short_conv=False, conv_size=4, conv_bias=False)
NORM = dict(norm_eps=1e-5, elementwise_affine=True)
GATED_OUT = dict(gate_fn='swish', fuse_norm=True, use_output_gate=True)


def log_decay(mixer, x):
    """Data-dependent log decay: logsigmoid(gk_proj(x)) / gate_logit_normalizer, in fp32,
    floored at clamp_min where given; [B, L, gates * (key_dim or num_heads)]."""
    g = F.logsigmoid(mixer.gk_proj(x).float()) / mixer.cfg['gate_logit_normalizer']
    if mixer.cfg.get('clamp_min') is not None:
        g = g.clamp_min(mixer.cfg['clamp_min'])
    return g


class DecayMixer(TokenMixer):
    """q, k, v (+ feature map, short convs) -> decayed linear attention -> output gate."""

    def build(self, dim, num_heads, cfg):
        key_dim, value_dim = self.head_dims(cfg, dim, num_heads)
        self.feature_map_fn = activation_fn(cfg['feature_map'], 'feature_map')
        self.qkv_proj(dim, key_dim, value_dim)
        self.short_convs(cfg, (key_dim, key_dim, value_dim))
        if self.gate == 'key':
            self.gk_proj = nn.Sequential(
                nn.Linear(dim, cfg['gate_low_rank_dim'], bias=False),
                nn.Linear(cfg['gate_low_rank_dim'], key_dim * self.num_gates))
        elif self.gate == 'head':
            self.gk_proj = nn.Linear(dim, num_heads * self.num_gates)
        self.build_output_gate(cfg, value_dim, cfg.get('use_output_gate', True))
        self.o_proj = nn.Linear(value_dim, dim, bias=False)

    def build_output_gate(self, cfg, value_dim, gated):
        """g_proj + g_norm_swish_gate (fused) or g_norm + gate_fn, as fla.layers names them."""
        self.use_output_gate = gated
        if gated:
            self.g_proj = nn.Linear(self.dim, value_dim, bias=False)
        self.fuse_norm_and_gate = gated and cfg['gate_fn'] == 'swish' and cfg['fuse_norm']
        norm = RMSNorm(self.head_v_dim, cfg['norm_eps'], cfg['elementwise_affine'])
        if self.fuse_norm_and_gate:
            self.g_norm_swish_gate = norm
        else:
            self.g_norm = norm
            self.gate_fn = activation_fn(cfg['gate_fn'])

    def output(self, x, o):
        B, L = x.shape[:2]
        if self.use_output_gate:
            g = self.g_proj(x)
            if self.fuse_norm_and_gate:
                o = self.g_norm_swish_gate(o, heads(g, o.shape[-1])).reshape(B, L, -1)
            else:
                o = self.g_norm(o).reshape(B, L, -1) * self.gate_fn(g)
        else:
            o = self.g_norm(o).reshape(B, L, -1)
        return self.o_proj(o)

    def split_heads(self, q, k, v):
        """Split q, k, v into heads and apply the feature map to q and k."""
        q, k, v = heads(q, self.head_k_dim), heads(k, self.head_k_dim), heads(v, self.head_v_dim)
        if self.feature_map_fn is not None:
            q, k = self.feature_map_fn(q), self.feature_map_fn(k)
        return q, k, v

    def fused_bi(self):
        """True where a bi-scan runs as one op: no short conv (the directions share v), and
        with rotary (each direction its own q, k: the op's chunked form) a ``bi_config``
        that does not force the sweep."""
        return (self.scan == 'bi' and self.bi_kernel == 'fused'
                and self.family in ops.BI_FUSED_FAMILIES
                and not self.cfg.get('use_short_conv')
                and (not self.cfg.get('rotary') or self.bi_config is None
                     or self.bi_config.allows_chunked()))

    def mix(self, x, ctx):
        if self.fused_bi():
            return self.output(x, self.mix_bi_fused(x))
        q, k, v = self.scanned_qkv(x, ctx)
        q, k, v = self.split_heads(self.short_conv('q', q), self.short_conv('k', k),
                                   self.short_conv('v', v))
        args = (q, k, v)
        if self.gate is not None:
            g = ctx.scan_gates(log_decay(self, x), self.num_gates)
            args += (heads(g, self.head_k_dim) if self.gate == 'key' else g,)
        elif self.cfg.get('rotary'):
            args = (ops.rotary(q), ops.rotary(k), v)
        return self.output(x, ctx.merge(self.op(*args)))

    def mix_bi_fused(self, x):
        B, L = x.shape[:2]
        q, k, v = self.split_heads(self.q_proj(x), self.k_proj(x), self.v_proj(x))
        H = q.shape[2]
        kw = dict(config=self.bi_config)
        if self.cfg.get('rotary'):     # positions along each scanned sequence, as two_call
            kw.update(rotary_base=ops.ROTARY_BASE)
        if self.gate is None:     # RetNet: the fixed per-head decay, read through stride 0
            return ops.bi_decay_attn(q, k, v, ops.retnet_decay(H, x.device).expand(B, L, H),
                                     **kw)
        g = log_decay(self, x).reshape(B, L, self.num_gates, H, -1)   # [B, L, D, H, K or 1]
        if self.gate == 'head':
            g = g.squeeze(-1)
        if self.num_gates > 1:    # direction gates: both read in place, no stacked copy
            return ops.bi_decay_attn(q, k, v, g, stacked=True, **kw)
        return ops.bi_decay_attn(q, k, v, g[:, :, 0], **kw)


@register_mixer
class GLAMixer(DecayMixer):
    family, op, gate, fla = 'gla', staticmethod(ops.gla), 'key', 'GatedLinearAttention'
    defaults = dict(expand_k=0.5, expand_v=1.0, gate_low_rank_dim=16, gate_logit_normalizer=16,
                    clamp_min=None, feature_map=None, **CONV, **GATED_OUT, **NORM)
    note = 'exact (num_kv_heads=None only).'


@register_mixer
class SimpleGLAMixer(DecayMixer):
    family, op, gate = 'simple_gla', staticmethod(ops.simple_gla), 'head'
    fla = 'SimpleGatedLinearAttention'
    defaults = dict(expand_k=1.0, expand_v=1.0, gate_logit_normalizer=16, feature_map=None,
                    gate_fn='swish', fuse_norm=True, **CONV, **NORM)
    note = ('exact (num_kv_heads=None only). FLA defaults to use_short_conv=True; fla_mm to '
            'False (pass use_short_conv=True for the FLA default).')


@register_mixer
class RetNetMixer(DecayMixer):
    family, op, gate, fla = 'retnet', staticmethod(ops.retnet), None, 'MultiScaleRetention'
    defaults = dict(expand_k=1.0, expand_v=1.0, feature_map=None, rotary=True,
                    **CONV, **GATED_OUT, **NORM)
    note = ('exact with rotary=True (rotary positions count along each scanned sequence). '
            'FLA defaults to expand_v=2.0; fla_mm to 1.0.')
