"""RWKV6 and RWKV7. Their token shift is taken in raster order (the previous token of the
row, zero at the first) for every scan direction, so the data-dependent projections are
computed once per token."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ... import ops
from ..modules import LerpLinear, LoRA, activation_fn, token_shift
from .base import TokenMixer, heads, register_mixer


@register_mixer
class RWKV6Mixer(TokenMixer):
    family, op, fla = 'rwkv6', staticmethod(ops.rwkv6), 'RWKV6Attention'
    defaults = dict(expand_k=0.5, expand_v=1.0, gate_fn='swish', proj_low_rank_dim=32,
                    gate_low_rank_dim=64, norm_eps=1e-5, elementwise_affine=True)
    note = ('exact for scan="uni". The token shift is taken in raster order (previous token '
            'in the row, zero at the first) for every scan direction, so the data-dependent '
            'projections are computed once per token. fuse_norm is ignored (same math).')

    def build(self, dim, num_heads, cfg):
        key_dim, value_dim = self.head_dims(cfg, dim, num_heads)
        r = cfg['proj_low_rank_dim']
        self.x_proj = nn.Sequential(LerpLinear(dim, r * 5, with_mu=True), nn.Tanh(),
                                    nn.Linear(r * 5, dim, bias=False))
        self.x_bias = nn.Parameter(torch.zeros(5, dim))
        self.r_proj = LerpLinear(dim, key_dim)
        self.w_proj = LerpLinear(dim, key_dim, rank=cfg['gate_low_rank_dim'])
        self.k_proj = LerpLinear(dim, key_dim)
        self.v_proj = LerpLinear(dim, value_dim)
        self.g_proj = LerpLinear(dim, value_dim)
        self.bonus = nn.Parameter(torch.zeros(num_heads, self.head_k_dim))
        self.g_norm = nn.GroupNorm(num_heads, value_dim, eps=cfg['norm_eps'],
                                   affine=cfg['elementwise_affine'])
        self.o_proj = nn.Linear(value_dim, dim, bias=False)
        self.gate_fn = activation_fn(cfg['gate_fn'])
        lora = {id(p) for mod in self.modules() if isinstance(mod, LoRA)
                for p in mod.parameters()}
        for mod in self.modules():
            if isinstance(mod, nn.Linear) and id(mod.weight) not in lora:
                nn.init.xavier_uniform_(mod.weight, gain=2 ** -2.5)

    def mix(self, x, ctx):
        B, L, C = x.shape
        delta = token_shift(x)
        r = self.cfg['proj_low_rank_dim']
        xx = torch.tanh(self.x_proj[0](x, delta)).view(B, L, 5, r)
        xx = torch.einsum('btnr,hnr->btnh', xx, self.x_proj[2].weight.view(C, 5, r)) + self.x_bias
        mr, mw, mk, mv, mg = xx.unbind(-2)
        rr, w = self.r_proj(x, delta, mr), self.w_proj(x, delta, mw)
        k, v, g = self.k_proj(x, delta, mk), self.v_proj(x, delta, mv), self.g_proj(x, delta, mg)
        w = -torch.exp(w.float())
        rr, w, k = (heads(ctx.scan(t), self.head_k_dim) for t in (rr, w, k))
        o = self.op(rr, k, heads(ctx.scan(v), self.head_v_dim), w, self.bonus, scale=1.0)
        o = ctx.merge(o).reshape(B * L, -1)
        return self.o_proj(self.g_norm(o).view(B, L, -1) * self.gate_fn(g))


def rwkv7_rank(given, dim, factor, mult):
    """RWKV7's LoRA rank rule: a multiple of 32 near mult * sqrt(dim) * factor, at least 32."""
    return given or max(32, int(round(mult * dim ** 0.5 * factor / 32) * 32))


@register_mixer
class RWKV7Mixer(TokenMixer):
    family, op, fla = 'rwkv7', staticmethod(ops.rwkv7), 'RWKV7Attention'
    defaults = dict(expand_v=1.0, decay_low_rank_dim=None, gate_low_rank_dim=None,
                    a_low_rank_dim=None, norm_eps=1e-5, elementwise_affine=True)
    note = ('as RWKV7Attention with layer_idx=0 (no v_lora / v_first value residual across '
            'layers) and fuse_norm=False, for scan="uni"; token shift in raster order as '
            'rwkv6; head_dim = dim // num_heads; init is simplified (k_k=0.85, k_a=1, '
            'r_k=-0.04, LoRA as FLA, not the layer-dependent RWKV schedule).')

    def build(self, dim, num_heads, cfg):
        self.head_dim = self.head_k_dim = dim // num_heads
        self.key_dim, self.value_dim = dim, round(dim * cfg['expand_v'])
        self.head_v_dim = self.value_dim // num_heads
        factor = self.head_dim / 64
        for n in 'rwkvag':
            setattr(self, f'x_{n}', nn.Parameter(torch.zeros(1, 1, dim)))
        self.k_k = nn.Parameter(torch.full((dim,), 0.85))
        self.k_a = nn.Parameter(torch.ones(dim))
        self.r_k = nn.Parameter(torch.full((num_heads, self.head_dim), -0.04))
        self.r_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, self.value_dim, bias=False)
        self.o_proj = nn.Linear(self.value_dim, dim, bias=False)
        self.w_lora = LoRA(dim, dim, rwkv7_rank(cfg['decay_low_rank_dim'], dim, factor, 2.5))
        self.a_lora = LoRA(dim, dim, rwkv7_rank(cfg['a_low_rank_dim'], dim, factor, 2.5),
                           activation=None)
        self.g_lora = LoRA(dim, self.value_dim, rwkv7_rank(cfg['gate_low_rank_dim'], dim, 1, 5),
                           activation='sigmoid', bias=False)
        self.g_norm = nn.GroupNorm(num_heads, self.value_dim, eps=self.head_dim * cfg['norm_eps'],
                                   affine=cfg['elementwise_affine'])

    def mix(self, x, ctx):
        B, L, _ = x.shape
        delta = token_shift(x)
        xr, xw, xk, xv, xa, xg = (torch.addcmul(x, delta, getattr(self, f'x_{n}'))
                                  for n in 'rwkvag')
        r, k, v = self.r_proj(xr), self.k_proj(xk), self.v_proj(xv)
        w = ops.families.RWKV7_LOG_DECAY_MIN * self.w_lora(xw).float().sigmoid()
        a = self.a_lora(xa).sigmoid()
        g = self.g_lora(xg)
        kk = F.normalize(heads(k * self.k_k, self.head_dim), dim=-1, p=2.0)
        k = k.addcmul(k * (a - 1), self.k_a)
        r, w, k, a = (heads(t, self.head_dim) for t in (r, w, k, a))
        v = heads(v, self.head_v_dim)
        s = ctx.scan
        o = self.op(s(r), s(w), s(k), s(v), s(-kk), s(kk * a), scale=1.0)
        o = self.g_norm(ctx.merge(o).reshape(B * L, -1)).view(B, L, -1)
        o = (o + ((r * k * self.r_k).sum(-1, keepdim=True) * v).view(B, L, -1)) * g
        return self.o_proj(o)
