"""Linear attention (fla.layers.LinearAttention): feature-mapped q, k, no decay."""
import torch.nn as nn

from ... import ops
from ..modules import HadamardFeatureMap, RMSNorm, activation_fn
from .base import TokenMixer, heads, register_mixer


@register_mixer
class LinearAttentionMixer(TokenMixer):
    family, op, fla = 'linear_attn', staticmethod(ops.linear_attn), 'LinearAttention'
    defaults = dict(expand_k=1.0, expand_v=1.0, feature_map='elementwise_product',
                    tie_feature_map_qk=False, output_norm='rmsnorm', norm_q=False, norm_k=False,
                    do_feature_map_norm=False, norm_eps=1e-5, elementwise_affine=True)
    note = ('exact for feature maps elementwise_product / identity / relu / elu and '
            'do_feature_map_norm=False; hedgehog, t2r and dpfp are not implemented.')

    def build(self, dim, num_heads, cfg):
        key_dim, value_dim = self.head_dims(cfg, dim, num_heads)
        fm = cfg['feature_map']
        if fm == 'elementwise_product':
            self.feature_map_q = HadamardFeatureMap(self.head_k_dim)
            self.feature_map_k = (self.feature_map_q if cfg['tie_feature_map_qk']
                                  else HadamardFeatureMap(self.head_k_dim))
        elif fm in ('identity', 'relu', 'elu'):
            self.feature_map_q = self.feature_map_k = activation_fn(fm)
        else:
            raise ValueError(f'Unsupported linear_attn feature_map {fm!r}; valid: '
                             f'elementwise_product, identity, relu, elu')
        if cfg['do_feature_map_norm']:
            raise ValueError('linear_attn: do_feature_map_norm=True is not supported')
        self.qkv_proj(dim, key_dim, value_dim)
        if cfg['output_norm'] == 'rmsnorm':
            self.norm = RMSNorm(self.head_v_dim, cfg['norm_eps'], cfg['elementwise_affine'])
        elif cfg['output_norm'] == 'identity':
            self.norm = nn.Identity()
        else:
            raise ValueError(f"Unknown output_norm {cfg['output_norm']!r}; valid: rmsnorm, "
                             f"identity")
        self.o_proj = nn.Linear(value_dim, dim, bias=False)

    def mix(self, x, ctx):
        B, L = x.shape[:2]
        q, k, v = self.scanned_qkv(x, ctx)
        q = self.feature_map_q(heads(q, self.head_k_dim))
        k = self.feature_map_k(heads(k, self.head_k_dim))
        if self.cfg['norm_q']:
            q = q / (q.sum(-1, True) + 1e-4)
        if self.cfg['norm_k']:
            k = k / (k.sum(-1, True) + 1e-4)
        o = ctx.merge(self.op(q, k, heads(v, self.head_v_dim)))
        return self.o_proj(self.norm(o).reshape(B, L, -1))
