"""Token mixers: scan -> FLA op -> merge, one table entry per family.

A family is a row of :data:`FAMILIES`: its op, its options with their defaults, and two
functions, ``build(mixer, dim, num_heads, cfg)`` (creates the parameters, named and shaped as
the corresponding ``fla.layers`` module) and ``mix(mixer, x)`` (per-token projections, the scan,
the op through ``mixer.spec['op']``, the merge and the output path). So a mixer built with the
options of an ``fla.layers`` module has that module's state_dict keys and shapes, and with
``scan='uni'`` computes the same function, up to the differences written in each row's
``note``. What holds for every family:

- Projections and per-token gates are computed once per token in raster order, then q/k/v and
  gates are scanned to [D*B, L, ...] so that ONE op call handles all directions, and the op
  outputs are merged (summed over directions) before the output norm / gate / o_proj.
- Short convolutions (``use_short_conv``) and rotary embeddings act on the scanned sequences,
  so each direction sees its own causal neighbourhood and positions.
- Decays are computed in fp32 and stay fp32 under autocast.
- No KV cache, attention mask or cu_seqlens: images are dense.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from .scan import merge, num_directions, scan

ACTS = dict(swish=F.silu, silu=F.silu, sigmoid=torch.sigmoid, relu=F.relu, gelu=F.gelu,
            identity=lambda x: x, elu=lambda x: F.elu(x) + 1.0)


def _act(name, what='activation'):
    if name is None:
        return None
    if name not in ACTS:
        raise ValueError(f'Unknown {what} {name!r}; valid: {", ".join(ACTS)}')
    return ACTS[name]


# ---- small layers with fla.modules' parameter names -----------------------------------------

class RMSNorm(nn.Module):
    """RMSNorm over the last dimension (fla.modules.RMSNorm), optionally gated
    (fla.modules.FusedRMSNormGated: norm(x) * act(g))."""

    def __init__(self, dim, eps=1e-5, elementwise_affine=True, activation='swish'):
        super().__init__()
        self.eps = eps
        self.activation = _act(activation)
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x, g=None):
        dtype = x.dtype
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            y = y * self.weight.float()
        if g is not None:
            y = y * self.activation(g.float())
        return y.to(dtype)


class ShortConv(nn.Conv1d):
    """Causal depthwise conv over a sequence [N, L, C] (fla.modules.ShortConvolution)."""

    def __init__(self, channels, kernel_size, bias=False, activation='silu'):
        super().__init__(channels, channels, kernel_size, padding=kernel_size - 1,
                         groups=channels, bias=bias)
        self.act = _act(activation)

    def forward(self, x):
        L = x.shape[1]
        y = F.conv1d(x.transpose(1, 2), self.weight.to(x.dtype),
                     None if self.bias is None else self.bias.to(x.dtype),
                     padding=self.kernel_size[0] - 1, groups=self.groups)[..., :L]
        y = y.transpose(1, 2)
        return y if self.act is None else self.act(y)


def round_half_away(t):
    """Round to the nearest integer, ties away from zero (torch.round rounds ties to even)."""
    return t.sign() * (t.abs() + 0.5).floor()


class BitLinear(nn.Linear):
    """fla.modules.FusedBitLinear: RMSNorm, 8-bit activations and ternary weights, with
    straight-through gradients.

    As FLA's fused kernel (not its unfused ``BitLinear``): the norm and the per-token absmax
    activation quantiser run in fp32 whatever the input dtype, ties round away from zero, and
    the quantised activations are cast back to the input dtype. Weights: per-tensor mean |w|
    scale, torch rounding (FLA's ``weight_quant``)."""

    def __init__(self, in_features, out_features, bias=False):
        super().__init__(in_features, out_features, bias=bias)
        self.norm = RMSNorm(in_features, eps=1e-8)

    def forward(self, x):
        y = self.norm(x.float())
        s = 127.0 / y.abs().amax(-1, keepdim=True).clamp(min=1e-5)
        y = (y + (round_half_away(y * s).clamp(-128, 127) / s - y).detach()).to(x.dtype)
        w = self.weight
        sw = 1.0 / w.abs().mean().clamp(min=1e-5)
        w = w + ((w * sw).round().clamp(-1, 1) / sw - w).detach()
        return F.linear(y, w, self.bias)


class HadamardFeatureMap(nn.Module):
    def __init__(self, head_dim):
        super().__init__()
        self.layer1 = nn.Linear(head_dim, head_dim)
        self.layer2 = nn.Linear(head_dim, head_dim)

    def forward(self, x):
        return self.layer1(x) * self.layer2(x)


class LoRA(nn.Module):
    """fla.layers.rwkv6.LoRA: Linear -> activation -> Linear, as ``lora.0`` / ``lora.2``."""

    def __init__(self, dim, out, rank, bias=True, activation='tanh'):
        super().__init__()
        act = dict(tanh=nn.Tanh(), sigmoid=nn.Sigmoid(), relu=nn.ReLU())
        self.lora = nn.Sequential(nn.Linear(dim, rank, bias=False),
                                  act[activation] if activation else nn.Identity(),
                                  nn.Linear(rank, out, bias=bias))
        nn.init.zeros_(self.lora[0].weight)
        nn.init.orthogonal_(self.lora[2].weight, gain=0.1 * max(1.0, math.sqrt(rank / out)))
        if bias:
            nn.init.zeros_(self.lora[2].bias)

    def forward(self, x):
        return self.lora(x)


class LerpLinear(nn.Module):
    """fla.layers.rwkv6.LerpLinear / DDLerpLinear: linear(x + delta * mu)."""

    def __init__(self, dim, out, rank=None, with_mu=False):
        super().__init__()
        self.linear = nn.Linear(dim, out, bias=False) if rank is None else LoRA(dim, out, rank)
        if with_mu:
            self.mu = nn.Parameter(torch.zeros(dim))

    def forward(self, x, delta, mu=None):
        return self.linear(x + delta * (self.mu if mu is None else mu))


def rotary(x, base=10000.0):
    """Non-interleaved rotary embedding (fla.modules.RotaryEmbedding) at positions 0..L-1."""
    L, D = x.shape[1], x.shape[-1]
    inv = 1.0 / (base ** (torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D))
    f = torch.outer(torch.arange(L, device=x.device, dtype=torch.float32), inv)
    cos, sin = f.cos()[:, None], f.sin()[:, None]                  # [L, 1, D/2]
    x1, x2 = x.float().chunk(2, -1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).to(x.dtype)


def token_shift(x):
    """RWKV's delta x_{t-1} - x_t in raster order (x_{-1} = 0), the same for every scan."""
    return F.pad(x, (0, 0, 1, -1)) - x


# ---- family builders and mixers ---------------------------------------------------------------

def _convs(m, cfg, dims, act='silu', names=('q', 'k', 'v')):
    m.use_short_conv = cfg.get('use_short_conv', False)
    if m.use_short_conv:
        acts = act if isinstance(act, (tuple, list)) else [act] * len(names)
        for n, d, a in zip(names, dims, acts):
            setattr(m, f'{n}_conv1d', ShortConv(d, cfg['conv_size'], cfg['conv_bias'], a))


def _conv(m, name, t, act=None):
    """Short conv of the scanned stream ``t`` [D*B, L, C], or the bare activation."""
    if m.use_short_conv:
        return getattr(m, f'{name}_conv1d')(t)
    return t if act is None else _act(act)(t)


def _heads(t, d):
    return t.reshape(*t.shape[:2], -1, d)


def _output_gate(m, cfg, value_dim, head_v, gated=True):
    """g_proj + g_norm_swish_gate (fused) or g_norm + gate_fn, as GLA / RetNet / simple GLA."""
    m.use_output_gate = gated
    if gated:
        m.g_proj = nn.Linear(m.dim, value_dim, bias=False)
    m.fuse_norm_and_gate = gated and cfg['gate_fn'] == 'swish' and cfg['fuse_norm']
    norm = RMSNorm(head_v, cfg['norm_eps'], cfg['elementwise_affine'])
    if m.fuse_norm_and_gate:
        m.g_norm_swish_gate = norm
    else:
        m.g_norm = norm
        m.gate_fn = _act(cfg['gate_fn'])


def _apply_output_gate(m, x, o):
    B, L = x.shape[:2]
    if m.use_output_gate:
        g = m.g_proj(x)
        if m.fuse_norm_and_gate:
            o = m.g_norm_swish_gate(o, _heads(g, o.shape[-1])).reshape(B, L, -1)
        else:
            o = m.g_norm(o).reshape(B, L, -1) * m.gate_fn(g)
    else:
        o = m.g_norm(o).reshape(B, L, -1)
    return m.o_proj(o)


def _dims(m, cfg, dim, num_heads):
    key_dim, value_dim = round(dim * cfg['expand_k']), round(dim * cfg['expand_v'])
    if key_dim % num_heads or value_dim % num_heads:
        raise ValueError(f'dim*expand_k={key_dim} and dim*expand_v={value_dim} must be '
                         f'divisible by num_heads={num_heads}')
    m.key_dim, m.value_dim = key_dim, value_dim
    m.head_k_dim, m.head_v_dim = key_dim // num_heads, value_dim // num_heads
    return key_dim, value_dim


def _qkv(m, dim, key_dim, value_dim, bias=False, linear=nn.Linear):
    m.q_proj = linear(dim, key_dim, bias=bias)
    m.k_proj = linear(dim, key_dim, bias=bias)
    m.v_proj = linear(dim, value_dim, bias=bias)


def _scanned_qkv(m, x):
    return (m.scan_(p(x)) for p in (m.q_proj, m.k_proj, m.v_proj))


# GLA / simple GLA / RetNet: one output-gated shape, three decays.

def _log_decay(m, x):
    """Data-dependent log decay: logsigmoid(gk_proj(x)) / gate_logit_normalizer, in fp32,
    floored at clamp_min where given; [B, L, gates * (key_dim or num_heads)]."""
    g = F.logsigmoid(m.gk_proj(x).float()) / m.cfg['gate_logit_normalizer']
    if m.cfg.get('clamp_min') is not None:
        g = g.clamp_min(m.cfg['clamp_min'])
    return g


def _gla_heads(m, q, k, v):
    """Split q, k, v into heads and apply the feature map to q and k."""
    q, k, v = _heads(q, m.head_k_dim), _heads(k, m.head_k_dim), _heads(v, m.head_v_dim)
    if m.feature_map_fn is not None:
        q, k = m.feature_map_fn(q), m.feature_map_fn(k)
    return q, k, v


def build_gla_like(m, dim, num_heads, cfg):
    key_dim, value_dim = _dims(m, cfg, dim, num_heads)
    m.feature_map_fn = _act(cfg['feature_map'], 'feature_map')
    _qkv(m, dim, key_dim, value_dim)
    _convs(m, cfg, (key_dim, key_dim, value_dim))
    kind = m.spec['gate']
    if kind == 'key':
        m.gk_proj = nn.Sequential(nn.Linear(dim, cfg['gate_low_rank_dim'], bias=False),
                                  nn.Linear(cfg['gate_low_rank_dim'], key_dim * m.num_gates))
    elif kind == 'head':
        m.gk_proj = nn.Linear(dim, num_heads * m.num_gates)
    _output_gate(m, cfg, value_dim, m.head_v_dim, cfg.get('use_output_gate', True))
    m.o_proj = nn.Linear(value_dim, dim, bias=False)


# Families whose bi-scan fla_mm's fused kernel computes; bi_kernel='auto' (the default) uses
# it for all of them. GLA's per-key-channel kernel passed its GPU tests at L = 1 to 16384
# (H200) and beats two chunk_gla calls at 1024, 4096 and 16384 tokens (0.81 / 1.99 / 7.83 ms
# against 2.82 / 3.18 / 12.4, not the same run; README).
BI_KERNEL_CHOICES = ('auto',) + ops.BI_KERNELS
FUSED_BI_FAMILIES = ('retnet', 'simple_gla', 'gla')


def _fused_bi(m):
    """Bi-scans whose two directions share q, k and v (no short conv, no rotary) run as one
    op, :func:`ops.bi_decay_attn`, without materialised flips."""
    return (m.scan == 'bi' and m.bi_kernel != 'two_call' and m.family in FUSED_BI_FAMILIES
            and not m.cfg.get('use_short_conv') and not m.cfg.get('rotary'))


def _mix_bi_decay(m, x):
    B, L = x.shape[:2]
    q, k, v = _gla_heads(m, m.q_proj(x), m.k_proj(x), m.v_proj(x))
    if m.spec['gate'] is None:   # RetNet: the fixed per-head decay, read through stride 0
        H = q.shape[2]
        return ops.bi_decay_attn(q, k, v, ops.retnet_decay(H, x.device).expand(B, L, H))
    g = _log_decay(m, x).reshape(B, L, m.num_gates, q.shape[2], -1)    # [B, L, directions, H, K or 1]
    if m.spec['gate'] == 'head':
        g = g.squeeze(-1)
    if m.num_gates > 1:          # direction gates: both read in place, no stacked copy
        return ops.bi_decay_attn(q, k, v, g, stacked=True)
    return ops.bi_decay_attn(q, k, v, g[:, :, 0])


def mix_gla_like(m, x):
    if _fused_bi(m):
        return _apply_output_gate(m, x, _mix_bi_decay(m, x))
    q, k, v = _scanned_qkv(m, x)
    q, k, v = _gla_heads(m, _conv(m, 'q', q), _conv(m, 'k', k), _conv(m, 'v', v))
    args = (q, k, v)
    if m.spec['gate'] is not None:
        g = m.scan_gate_(_log_decay(m, x))
        args += (_heads(g, m.head_k_dim) if m.spec['gate'] == 'key' else g,)
    elif m.cfg.get('rotary'):
        q, k = rotary(q), rotary(k)
        args = (q, k, v)
    return _apply_output_gate(m, x, m.merge_(m.spec['op'](*args)))


def build_linear_attn(m, dim, num_heads, cfg):
    key_dim, value_dim = _dims(m, cfg, dim, num_heads)
    fm = cfg['feature_map']
    if fm == 'elementwise_product':
        m.feature_map_q = HadamardFeatureMap(m.head_k_dim)
        m.feature_map_k = (m.feature_map_q if cfg['tie_feature_map_qk']
                           else HadamardFeatureMap(m.head_k_dim))
    elif fm in ('identity', 'relu', 'elu'):
        m.feature_map_q = m.feature_map_k = _act(fm)
    else:
        raise ValueError(f'Unsupported linear_attn feature_map {fm!r}; valid: '
                         f'elementwise_product, identity, relu, elu')
    if cfg['do_feature_map_norm']:
        raise ValueError('linear_attn: do_feature_map_norm=True is not supported')
    _qkv(m, dim, key_dim, value_dim)
    if cfg['output_norm'] == 'rmsnorm':
        m.norm = RMSNorm(m.head_v_dim, cfg['norm_eps'], cfg['elementwise_affine'])
    elif cfg['output_norm'] == 'identity':
        m.norm = nn.Identity()
    else:
        raise ValueError(f"Unknown output_norm {cfg['output_norm']!r}; valid: rmsnorm, identity")
    m.o_proj = nn.Linear(value_dim, dim, bias=False)


def mix_linear_attn(m, x):
    B, L = x.shape[:2]
    q, k, v = _scanned_qkv(m, x)
    q = m.feature_map_q(_heads(q, m.head_k_dim))
    k = m.feature_map_k(_heads(k, m.head_k_dim))
    if m.cfg['norm_q']:
        q = q / (q.sum(-1, True) + 1e-4)
    if m.cfg['norm_k']:
        k = k / (k.sum(-1, True) + 1e-4)
    o = m.merge_(m.spec['op'](q, k, _heads(v, m.head_v_dim)))
    return m.o_proj(m.norm(o).reshape(B, L, -1))


def build_attention(m, dim, num_heads, cfg):
    m.head_k_dim = m.head_v_dim = dim // num_heads
    if dim % num_heads:
        raise ValueError(f'dim={dim} must be divisible by num_heads={num_heads}')
    bitnet = m.family == 'bitnet'
    _qkv(m, dim, dim, dim, bias=cfg.get('qkv_bias', False),
         linear=BitLinear if bitnet else nn.Linear)
    m.o_proj = (BitLinear if bitnet else nn.Linear)(dim, dim, bias=cfg.get('o_bias', False))
    if cfg.get('qk_norm'):
        m.q_norm = RMSNorm(m.head_k_dim)
        m.k_norm = RMSNorm(m.head_k_dim)


def mix_attention(m, x):
    B, L = x.shape[:2]
    q, k, v = (_heads(t, m.head_k_dim) for t in _scanned_qkv(m, x))
    if m.cfg.get('qk_norm'):
        q, k = m.q_norm(q), m.k_norm(k)
    if m.cfg['rope_theta']:
        q, k = rotary(q, m.cfg['rope_theta']), rotary(k, m.cfg['rope_theta'])
    o = m.merge_(m.spec['op'](q, k, v, causal=m.cfg['causal']))
    return m.o_proj(o.reshape(B, L, -1))


def _delta_output(m, cfg, value_dim, activation='swish'):
    if cfg['use_gate']:
        m.g_proj = nn.Linear(m.dim, value_dim, bias=False)
        m.o_norm = RMSNorm(m.head_v_dim, cfg['norm_eps'], activation=activation)
    else:
        m.o_norm = RMSNorm(m.head_v_dim, cfg['norm_eps'])
    m.o_proj = nn.Linear(value_dim, m.dim, bias=False)


def _apply_delta_output(m, x, o):
    B, L = x.shape[:2]
    g = _heads(m.g_proj(x), m.head_v_dim) if m.cfg['use_gate'] else None
    return m.o_proj(m.o_norm(o, g).reshape(B, L, -1))


def build_delta_net(m, dim, num_heads, cfg):
    key_dim, value_dim = _dims(m, cfg, dim, num_heads)
    _qkv(m, dim, key_dim, value_dim)
    if cfg['use_beta']:
        m.b_proj = nn.Linear(dim, num_heads, bias=False)
    qk_act = 'silu' if cfg['qk_activation'] == 'silu' else None
    _convs(m, cfg, (key_dim, key_dim, value_dim), (qk_act, qk_act, 'silu'))
    if cfg['qk_norm'] not in ('l2', 'sum'):
        raise ValueError(f"Unknown qk_norm {cfg['qk_norm']!r}; valid: l2, sum")
    _act(cfg['qk_activation'], 'qk_activation')
    _delta_output(m, cfg, value_dim)


def mix_delta_net(m, x):
    cfg = m.cfg
    q, k, v = _scanned_qkv(m, x)
    qk_act = 'silu' if cfg['qk_activation'] == 'silu' else None
    q, k, v = _conv(m, 'q', q, qk_act), _conv(m, 'k', k, qk_act), _conv(m, 'v', v, 'silu')
    q, k, v = _heads(q, m.head_k_dim), _heads(k, m.head_k_dim), _heads(v, m.head_v_dim)
    if cfg['qk_activation'] != 'silu':
        q, k = _act(cfg['qk_activation'])(q), _act(cfg['qk_activation'])(k)
    if cfg['qk_norm'] == 'sum':
        q, k = q / q.sum(-1, keepdim=True), k / k.sum(-1, keepdim=True)
    if cfg['use_beta']:
        beta = m.scan_(m.b_proj(x).float().sigmoid())
    else:
        beta = q.new_ones(q.shape[:3], dtype=torch.float32)
    if cfg['allow_neg_eigval']:
        beta = beta * 2.0
    o = m.spec['op'](q, k, v, beta.to(q.dtype), qk_l2norm=cfg['qk_norm'] == 'l2')
    return _apply_delta_output(m, x, m.merge_(o))


def build_gated_delta_net(m, dim, num_heads, cfg):
    head_dim = cfg['head_dim'] or round(dim * cfg['expand_k']) // num_heads
    if cfg['num_v_heads'] not in (None, num_heads):
        raise ValueError('gated_delta_net: num_v_heads != num_heads is not supported')
    m.head_k_dim, m.head_v_dim = head_dim, round(head_dim * cfg['expand_v'])
    key_dim, value_dim = num_heads * m.head_k_dim, num_heads * m.head_v_dim
    m.key_dim, m.value_dim = key_dim, value_dim
    _qkv(m, dim, key_dim, value_dim)
    m.a_proj = nn.Linear(dim, num_heads * m.num_gates, bias=False)
    m.b_proj = nn.Linear(dim, num_heads, bias=False)
    A = torch.empty(num_heads * m.num_gates).uniform_(0, 16)
    m.A_log = nn.Parameter(torch.log(A))
    dt = torch.exp(torch.rand(num_heads * m.num_gates) * (math.log(0.1) - math.log(0.001))
                   + math.log(0.001)).clamp(min=1e-4)
    m.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
    m.A_log._no_weight_decay = m.dt_bias._no_weight_decay = True
    _convs(m, cfg, (key_dim, key_dim, value_dim))
    _delta_output(m, cfg, value_dim, cfg['output_gate_activation'])


def mix_gated_delta_net(m, x):
    q, k, v = _scanned_qkv(m, x)
    q, k, v = _conv(m, 'q', q, 'silu'), _conv(m, 'k', k, 'silu'), _conv(m, 'v', v, 'silu')
    q, k, v = _heads(q, m.head_k_dim), _heads(k, m.head_k_dim), _heads(v, m.head_v_dim)
    g = -m.A_log.float().exp() * F.softplus(m.a_proj(x).float() + m.dt_bias.float())
    beta = m.b_proj(x).float().sigmoid()
    if m.cfg['allow_neg_eigval']:
        beta = beta * 2.0
    o = m.spec['op'](q, k, v, m.scan_gate_(g), m.scan_(beta).to(q.dtype), qk_l2norm=True)
    return _apply_delta_output(m, x, m.merge_(o))


def build_hgrn(m, dim, num_heads, cfg):
    m.input_dim = int(dim * cfg['expand_ratio'])
    for n in ('i', 'f', 'g'):
        setattr(m, f'{n}_proj', nn.Linear(dim, m.input_dim, bias=False))
    _convs(m, cfg, (m.input_dim, m.input_dim), None, names=('f', 'i'))
    m.g_norm = RMSNorm(m.input_dim, cfg['norm_eps'], cfg['elementwise_affine'])
    m.o_proj = nn.Linear(m.input_dim, dim, bias=False)


def mix_hgrn(m, x):
    i, f = _conv(m, 'i', m.scan_(m.i_proj(x))), _conv(m, 'f', m.scan_(m.f_proj(x)))
    f = F.logsigmoid(f.float())
    i = F.silu(i.float()) * (1 - f.exp())
    o = m.merge_(m.spec['op'](i.to(x.dtype), f))
    return m.o_proj(m.g_norm(o, m.g_proj(x)))


def build_hgrn2(m, dim, num_heads, cfg):
    ratio = cfg['expand_ratio'] or dim // num_heads
    m.head_f_dim, m.head_i_dim = ratio, dim // num_heads
    m.forget_dim = num_heads * ratio
    m.q_proj = nn.Linear(dim, m.forget_dim, bias=False)
    m.f_proj = nn.Linear(dim, m.forget_dim, bias=False)
    m.i_proj = nn.Linear(dim, dim, bias=False)
    _convs(m, cfg, (m.forget_dim, m.forget_dim, dim), None, names=('q', 'f', 'i'))
    m.g_norm = RMSNorm(dim, cfg['norm_eps'], cfg['elementwise_affine'])
    m.o_proj = nn.Linear(dim, dim, bias=False)


def mix_hgrn2(m, x):
    B, L = x.shape[:2]
    q = F.silu(_conv(m, 'q', m.scan_(m.q_proj(x))))
    g = F.logsigmoid(_conv(m, 'f', m.scan_(m.f_proj(x))).float())
    i = _conv(m, 'i', m.scan_(m.i_proj(x)))
    k = (1 - g.exp()).to(i.dtype)
    o = m.spec['op'](_heads(q, m.head_f_dim), _heads(k, m.head_f_dim), _heads(i, m.head_i_dim),
                     _heads(g, m.head_f_dim))
    return m.o_proj(m.g_norm(m.merge_(o).reshape(B, L, -1)))


def build_rwkv6(m, dim, num_heads, cfg):
    key_dim, value_dim = _dims(m, cfg, dim, num_heads)
    r = cfg['proj_low_rank_dim']
    m.x_proj = nn.Sequential(LerpLinear(dim, r * 5, with_mu=True), nn.Tanh(),
                             nn.Linear(r * 5, dim, bias=False))
    m.x_bias = nn.Parameter(torch.zeros(5, dim))
    m.r_proj = LerpLinear(dim, key_dim)
    m.w_proj = LerpLinear(dim, key_dim, rank=cfg['gate_low_rank_dim'])
    m.k_proj = LerpLinear(dim, key_dim)
    m.v_proj = LerpLinear(dim, value_dim)
    m.g_proj = LerpLinear(dim, value_dim)
    m.bonus = nn.Parameter(torch.zeros(num_heads, m.head_k_dim))
    m.g_norm = nn.GroupNorm(num_heads, value_dim, eps=cfg['norm_eps'],
                            affine=cfg['elementwise_affine'])
    m.o_proj = nn.Linear(value_dim, dim, bias=False)
    m.gate_fn = _act(cfg['gate_fn'])
    lora = {id(p) for mod in m.modules() if isinstance(mod, LoRA) for p in mod.parameters()}
    for mod in m.modules():
        if isinstance(mod, nn.Linear) and id(mod.weight) not in lora:
            nn.init.xavier_uniform_(mod.weight, gain=2 ** -2.5)


def mix_rwkv6(m, x):
    B, L, C = x.shape
    delta = token_shift(x)
    r = m.cfg['proj_low_rank_dim']
    xx = torch.tanh(m.x_proj[0](x, delta)).view(B, L, 5, r)
    xx = torch.einsum('btnr,hnr->btnh', xx, m.x_proj[2].weight.view(C, 5, r)) + m.x_bias
    mr, mw, mk, mv, mg = xx.unbind(-2)
    rr, w = m.r_proj(x, delta, mr), m.w_proj(x, delta, mw)
    k, v, g = m.k_proj(x, delta, mk), m.v_proj(x, delta, mv), m.g_proj(x, delta, mg)
    w = -torch.exp(w.float())
    rr, w, k = (_heads(m.scan_(t), m.head_k_dim) for t in (rr, w, k))
    o = m.spec['op'](rr, k, _heads(m.scan_(v), m.head_v_dim), w, m.bonus, scale=1.0)
    o = m.merge_(o).reshape(B * L, -1)
    return m.o_proj(m.g_norm(o).view(B, L, -1) * m.gate_fn(g))


def _rwkv7_rank(given, dim, factor, mult):
    return given or max(32, int(round(mult * dim ** 0.5 * factor / 32) * 32))


def build_rwkv7(m, dim, num_heads, cfg):
    m.head_dim = m.head_k_dim = dim // num_heads
    m.key_dim, m.value_dim = dim, round(dim * cfg['expand_v'])
    m.head_v_dim = m.value_dim // num_heads
    factor = m.head_dim / 64
    for n in 'rwkvag':
        setattr(m, f'x_{n}', nn.Parameter(torch.zeros(1, 1, dim)))
    m.k_k = nn.Parameter(torch.full((dim,), 0.85))
    m.k_a = nn.Parameter(torch.ones(dim))
    m.r_k = nn.Parameter(torch.full((num_heads, m.head_dim), -0.04))
    m.r_proj = nn.Linear(dim, dim, bias=False)
    m.k_proj = nn.Linear(dim, dim, bias=False)
    m.v_proj = nn.Linear(dim, m.value_dim, bias=False)
    m.o_proj = nn.Linear(m.value_dim, dim, bias=False)
    m.w_lora = LoRA(dim, dim, _rwkv7_rank(cfg['decay_low_rank_dim'], dim, factor, 2.5))
    m.a_lora = LoRA(dim, dim, _rwkv7_rank(cfg['a_low_rank_dim'], dim, factor, 2.5),
                    activation=None)
    m.g_lora = LoRA(dim, m.value_dim, _rwkv7_rank(cfg['gate_low_rank_dim'], dim, 1, 5),
                    activation='sigmoid', bias=False)
    m.g_norm = nn.GroupNorm(num_heads, m.value_dim, eps=m.head_dim * cfg['norm_eps'],
                            affine=cfg['elementwise_affine'])


def mix_rwkv7(m, x):
    B, L, _ = x.shape
    delta = token_shift(x)
    xr, xw, xk, xv, xa, xg = (torch.addcmul(x, delta, getattr(m, f'x_{n}')) for n in 'rwkvag')
    r, k, v = m.r_proj(xr), m.k_proj(xk), m.v_proj(xv)
    w = ops.families.RWKV7_LOG_DECAY_MIN * m.w_lora(xw).float().sigmoid()
    a = m.a_lora(xa).sigmoid()
    g = m.g_lora(xg)
    kk = F.normalize(_heads(k * m.k_k, m.head_dim), dim=-1, p=2.0)
    k = k.addcmul(k * (a - 1), m.k_a)
    r, w, k, a = (_heads(t, m.head_dim) for t in (r, w, k, a))
    v = _heads(v, m.head_v_dim)
    s = m.scan_
    o = m.spec['op'](s(r), s(w), s(k), s(v), s(-kk), s(kk * a), scale=1.0)
    o = m.g_norm(m.merge_(o).reshape(B * L, -1)).view(B, L, -1)
    o = (o + ((r * k * m.r_k).sum(-1, keepdim=True) * v).view(B, L, -1)) * g
    return m.o_proj(o)


def build_slots(m, dim, num_heads, cfg):
    key_dim, value_dim = _dims(m, cfg, dim, num_heads)
    m.num_slots = cfg['num_slots'] or m.head_k_dim
    _qkv(m, dim, key_dim, value_dim)
    if m.family == 'gsa':
        if value_dim != dim:
            raise ValueError(f'gsa normalises over dim={dim}: expand_v must be 1.0')
        if cfg['feature_map'] not in ('swish', 'relu'):
            raise ValueError(f"Unsupported gsa feature_map {cfg['feature_map']!r}; "
                             f"valid: swish, relu")
        m.f_proj = nn.Linear(dim, num_heads * m.num_slots, bias=False)
        _convs(m, cfg, (key_dim, key_dim, value_dim))
        m.g_norm = RMSNorm(dim, cfg['norm_eps'], cfg['elementwise_affine'])
        m.o_proj = nn.Linear(value_dim, dim, bias=False)
        return
    if cfg['use_output_gate']:
        m.g_proj = nn.Linear(dim, value_dim, bias=False)
    m.s_proj = nn.Linear(dim, num_heads * m.num_slots, bias=False)
    m.o_proj = nn.Linear(value_dim, dim, bias=False)
    _convs(m, cfg, (key_dim, key_dim, value_dim))
    if cfg['use_norm']:
        m.g_norm = RMSNorm(m.head_v_dim, cfg['norm_eps'], cfg['elementwise_affine'])


def mix_slots(m, x):
    B, L = x.shape[:2]
    cfg = m.cfg
    q, k, v = _scanned_qkv(m, x)
    q, k, v = _conv(m, 'q', q), _conv(m, 'k', k), _conv(m, 'v', v)
    q, k, v = _heads(q, m.head_k_dim), _heads(k, m.head_k_dim), _heads(v, m.head_v_dim)
    if m.family == 'gsa':
        q, k = _act(cfg['feature_map'])(q), _act(cfg['feature_map'])(k)
        f = F.logsigmoid(m.f_proj(x).float()) / cfg['gate_logit_normalizer']
        f = _heads(m.scan_(f), m.num_slots)
        s = (1 - f.exp()).to(q.dtype)
        o = m.merge_(m.spec['op'](q, k, F.silu(v), s, f, scale=cfg['scale']))
        return m.o_proj(m.g_norm(F.silu(o.reshape(B, L, -1))))
    if cfg['use_input_gate']:
        q, k, v = F.silu(q), F.silu(k), F.silu(v)
    if cfg['use_rope']:
        q, k = rotary(q), rotary(k)
    s = m.s_proj(x).clamp(cfg['clamp_min'], cfg['clamp_max'])
    o = m.merge_(m.spec['op'](q, k, v, _heads(m.scan_(s), m.num_slots)))
    if cfg['use_output_gate']:
        g = _heads(m.g_proj(x), m.head_v_dim)
        o = m.g_norm(o, g) if cfg['use_norm'] else F.silu(g) * o
    elif cfg['use_norm']:
        o = m.g_norm(o)
    return m.o_proj(o.reshape(B, L, -1))


# ViG / ViG-H (hustvl/ViG): GLA whose every input comes from a depthwise 3x3 conv of the grid.

def build_vig_gla(m, dim, num_heads, cfg):
    key_dim, value_dim = _dims(m, cfg, dim, num_heads)
    if value_dim != dim:
        raise ValueError(f'vig_gla normalises the local branch per value head: expand_v must '
                         f'be 1.0, got {cfg["expand_v"]}')
    m.num_gates = num_directions(m.scan)          # ViG: one decay gate per direction, always
    m.local_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=cfg['conv_bias'])
    m.conv_act, m.out_act = _act(cfg['conv_act']), _act(cfg['out_act'])
    _qkv(m, dim, key_dim, value_dim)
    m.gk_proj = nn.Sequential(nn.Linear(dim, cfg['gate_low_rank_dim'], bias=False),
                              nn.Linear(cfg['gate_low_rank_dim'], key_dim * m.num_gates))
    m.g_proj = nn.Linear(dim, value_dim)
    m.g_norm = RMSNorm(m.head_v_dim, cfg['norm_eps'])
    m.l_norm = RMSNorm(m.head_v_dim, cfg['norm_eps'])
    m.o_proj = nn.Linear(value_dim, dim, bias=False)


def mix_vig_gla(m, x):
    """ViG's GLA2D / GatedLinearAttention, from the equations of its forward:
    l = act(DWConv3x3(x)); q, k, v, gates and the output gate all come from l;
    o = o_scale * merge(GLA per direction); s = sigmoid(g_proj(l));
    y = o_proj(out_act(g_norm(o) * s + l_norm(l) * (1 - s)))."""
    B, L, C = x.shape
    x = m.local_conv(x.transpose(1, 2).reshape(B, C, *m._hw)).flatten(2).transpose(1, 2)
    if m.conv_act is not None:
        x = m.conv_act(x)
    q, k, v = _scanned_qkv(m, x)
    q, k, v = _heads(q, m.head_k_dim), _heads(k, m.head_k_dim), _heads(v, m.head_v_dim)
    o = m.merge_(m.spec['op'](q, k, v, _heads(m.scan_gate_(_log_decay(m, x)), m.head_k_dim)))
    scale = m.cfg['o_scale']
    o = o * (1.0 / m.num_gates if scale is None else scale)
    s = torch.sigmoid(_heads(m.g_proj(x), m.head_v_dim))
    o = (m.g_norm(o) * s + m.l_norm(_heads(x, m.head_v_dim)) * (1 - s)).reshape(B, L, -1)
    return m.o_proj(o if m.out_act is None else m.out_act(o))


_CONV = dict(use_short_conv=False, conv_size=4, conv_bias=False)
_NORM = dict(norm_eps=1e-5, elementwise_affine=True)
_GATED_OUT = dict(gate_fn='swish', fuse_norm=True, use_output_gate=True)

# Each row: op, mixer functions, defaults of every option it takes (names as in fla.layers),
# 'causal' (False: no scan), 'gate' (the decay its direction_gates splits), and a note on what
# differs from the fla.layers module with the same options.
FAMILIES = {
    'gla': dict(
        op=ops.gla, build=build_gla_like, mix=mix_gla_like, gate='key', causal=True,
        fla='GatedLinearAttention',
        defaults=dict(expand_k=0.5, expand_v=1.0, gate_low_rank_dim=16, gate_logit_normalizer=16,
                      clamp_min=None, feature_map=None, **_CONV, **_GATED_OUT, **_NORM),
        note='exact (num_kv_heads=None only).'),
    'simple_gla': dict(
        op=ops.simple_gla, build=build_gla_like, mix=mix_gla_like, gate='head', causal=True,
        fla='SimpleGatedLinearAttention',
        defaults=dict(expand_k=1.0, expand_v=1.0, gate_logit_normalizer=16, feature_map=None,
                      gate_fn='swish', fuse_norm=True, **_CONV, **_NORM),
        note='exact (num_kv_heads=None only). FLA defaults to use_short_conv=True; fla_mm to '
             'False (pass use_short_conv=True for the FLA default).'),
    'retnet': dict(
        op=ops.retnet, build=build_gla_like, mix=mix_gla_like, gate=None, causal=True,
        fla='MultiScaleRetention',
        defaults=dict(expand_k=1.0, expand_v=1.0, feature_map=None, rotary=True,
                      **_CONV, **_GATED_OUT, **_NORM),
        note='exact with rotary=True (rotary positions count along each scanned sequence). '
             'FLA defaults to expand_v=2.0; fla_mm to 1.0.'),
    'linear_attn': dict(
        op=ops.linear_attn, build=build_linear_attn, mix=mix_linear_attn, gate=None, causal=True,
        fla='LinearAttention',
        defaults=dict(expand_k=1.0, expand_v=1.0, feature_map='elementwise_product',
                      tie_feature_map_qk=False, output_norm='rmsnorm', norm_q=False, norm_k=False,
                      do_feature_map_norm=False, **_NORM),
        note='exact for feature maps elementwise_product / identity / relu / elu and '
             'do_feature_map_norm=False; hedgehog, t2r and dpfp are not implemented.'),
    'transformer': dict(
        op=ops.softmax_attn, build=build_attention, mix=mix_attention, gate=None, causal=False,
        fla='Attention',
        defaults=dict(qkv_bias=True, o_bias=True, qk_norm=False, rope_theta=None, causal=False),
        note='vision defaults: non-causal, biases (ViT/DeiT layout), no rotary. FLA Attention '
             'is qkv_bias=False, o_bias=False, rope_theta=10000., causal=True: pass those for '
             'the same function (then the scan applies); window_size is not supported.'),
    'bitnet': dict(
        op=ops.softmax_attn, build=build_attention, mix=mix_attention, gate=None, causal=False,
        fla='BitAttention',
        defaults=dict(rope_theta=None, causal=False),
        note='BitLinear q/k/v/o projections (RMSNorm, 8-bit activations, ternary weights, '
             'straight-through) around softmax attention; non-causal and no rotary by default. '
             'BitAttention is always causal with rotary: pass rope_theta=10000., causal=True '
             'for the same function. The activation quantiser follows FusedBitLinear\'s fused '
             'kernel (fp32, ties away from zero).'),
    'delta_net': dict(
        op=ops.delta_rule, build=build_delta_net, mix=mix_delta_net, gate=None, causal=True,
        fla='DeltaNet',
        defaults=dict(expand_k=1.0, expand_v=1.0, use_beta=True, use_gate=False,
                      use_short_conv=True, conv_size=4, conv_bias=False, allow_neg_eigval=False,
                      qk_activation='silu', qk_norm='l2', norm_eps=1e-5),
        note='exact.'),
    'gated_delta_net': dict(
        op=ops.gated_delta_rule, build=build_gated_delta_net, mix=mix_gated_delta_net,
        gate='head', causal=True, fla='GatedDeltaNet',
        defaults=dict(expand_k=1.0, expand_v=1.0, head_dim=None, num_v_heads=None,
                      use_gate=True, use_short_conv=True, conv_size=4, conv_bias=False,
                      allow_neg_eigval=False, norm_eps=1e-5, output_gate_activation='swish'),
        note='exact with head_dim and expand_v given as in GatedDeltaNet (head_dim defaults to '
             'dim*expand_k/num_heads; FLA: 256 and expand_v=2); num_v_heads must equal '
             'num_heads. The gate -exp(A_log)*softplus(a+dt_bias) and sigmoid(beta) run in '
             'PyTorch, not in the kernel.'),
    'hgrn': dict(
        op=ops.hgrn, build=build_hgrn, mix=mix_hgrn, gate=None, causal=True, fla='HGRNAttention',
        defaults=dict(expand_ratio=1, **_CONV, **_NORM),
        note='exact; num_heads is unused (HGRN is element-wise); lower_bound (the HGRN '
             'model\'s per-layer forget-gate floor) is not supported.'),
    'hgrn2': dict(
        op=ops.gla, build=build_hgrn2, mix=mix_hgrn2, gate=None, causal=True,
        fla='HGRN2Attention',
        defaults=dict(expand_ratio=None, **_CONV, **_NORM),
        note='exact with num_heads = dim // expand_ratio (expand_ratio defaults to '
             'dim // num_heads; FLA: 128); lower_bound is not supported.'),
    'rwkv6': dict(
        op=ops.rwkv6, build=build_rwkv6, mix=mix_rwkv6, gate=None, causal=True,
        fla='RWKV6Attention',
        defaults=dict(expand_k=0.5, expand_v=1.0, gate_fn='swish', proj_low_rank_dim=32,
                      gate_low_rank_dim=64, **_NORM),
        note='exact for scan="uni". The token shift is taken in raster order (previous token '
             'in the row, zero at the first) for every scan direction, so the data-dependent '
             'projections are computed once per token. fuse_norm is ignored (same math).'),
    'rwkv7': dict(
        op=ops.rwkv7, build=build_rwkv7, mix=mix_rwkv7, gate=None, causal=True,
        fla='RWKV7Attention',
        defaults=dict(expand_v=1.0, decay_low_rank_dim=None, gate_low_rank_dim=None,
                      a_low_rank_dim=None, norm_eps=1e-5, elementwise_affine=True),
        note='as RWKV7Attention with layer_idx=0 (no v_lora / v_first value residual across '
             'layers) and fuse_norm=False, for scan="uni"; token shift in raster order as '
             'rwkv6; head_dim = dim // num_heads; init is simplified (k_k=0.85, k_a=1, '
             'r_k=-0.04, LoRA as FLA, not the layer-dependent RWKV schedule).'),
    'gsa': dict(
        op=ops.gsa, build=build_slots, mix=mix_slots, gate=None, causal=True,
        fla='GatedSlotAttention',
        defaults=dict(expand_k=1.0, expand_v=1.0, num_slots=None, gate_logit_normalizer=8,
                      feature_map='swish', scale=1.0, **_CONV, **_NORM),
        note='exact for feature_map swish / relu (t2r not implemented), num_kv_heads=None.'),
    'abc': dict(
        op=ops.abc, build=build_slots, mix=mix_slots, gate=None, causal=True,
        fla='ABCAttention',
        defaults=dict(expand_k=0.5, expand_v=1.0, num_slots=None, use_rope=True,
                      use_input_gate=False, use_output_gate=True, use_norm=True, clamp_min=-32.0,
                      clamp_max=32.0, **_CONV, **_NORM),
        note='exact (rotary along each scanned sequence).'),
    'vig_gla': dict(
        op=ops.gla, build=build_vig_gla, mix=mix_vig_gla, gate='key', causal=True, grid=True,
        fla=None,
        defaults=dict(expand_k=0.5, expand_v=1.0, gate_low_rank_dim=16, gate_logit_normalizer=16,
                      clamp_min=None, conv_act=None, conv_bias=False, out_act=None,
                      o_scale=None, norm_eps=1e-6),
        note='ViG / ViG-H\'s mixer (hustvl/ViG GLA2D, GatedLinearAttention with rope_mode '
             '"none"), exact: one decay gate per scan direction (always), the depthwise 3x3 '
             'conv local_conv (conv_bias: ViG use_bias_in_dwconv) feeding every projection '
             '(conv_act="silu": use_act_in_conv), o_scale times the merged directions '
             '(None: their mean, as ViG-H and ViG training; ViG\'s eval path: 0.25), g_norm '
             'and l_norm mixed by sigmoid(g_proj), out_act="swish": use_out_act. Needs the '
             '2-D grid; no fla.layers counterpart.'),
}

SIGNATURE_OPTIONS = ('expand_k', 'expand_v', 'gate_low_rank_dim', 'gate_logit_normalizer')


def check_family(name):
    if name not in FAMILIES:
        raise ValueError(f'Unknown mixer family {name!r}; valid families: '
                         f'{", ".join(sorted(FAMILIES))}')
    return FAMILIES[name]


class TokenMixer(nn.Module):
    """Mixes the tokens of a 2-D grid with one linear-attention family and one scan order.

    Args:
        dim: channels C of the tokens [B, L, C].
        num_heads: attention heads.
        family: a key of :data:`FAMILIES`.
        scan: 'uni', 'bi', 'cross' or 'random' (ignored by non-causal families).
        expand_k, expand_v: key / value width as a multiple of ``dim`` (family default if
            None; ignored by families without them).
        direction_gates: ViG-style direction-wise gating: one set of q/k/v projections, a
            separate decay gate per scan direction (gk_proj / a_proj output D times wider).
            For families with a data-dependent decay (gla, simple_gla, gated_delta_net).
        gate_low_rank_dim, gate_logit_normalizer: as in the ``fla.layers`` module.
        bi_kernel: how a bi-scan (without short conv or rotary) runs on CUDA. 'fused': one
            fused kernel for both directions (simple_gla, RetNet, GLA); 'two_call': [x,
            flip(x)] through FLA's one-direction kernel; 'auto' (default): fla_mm's measured
            choice, today fused for all three (FUSED_BI_FAMILIES). Same function
            either way; the other families ignore it.
        locality: ViG 2-D locality injection: y = o_proj(global) * sigmoid(DWConv3x3(x)),
            with ``local_conv`` a depthwise 3x3 conv (with bias) over the H x W token grid.
        **options: the family's other ``fla.layers`` options (``FAMILIES[f]['defaults']``),
            e.g. use_short_conv, conv_size, fuse_norm, use_gate, head_dim, expand_ratio.
    """

    def __init__(self, dim, num_heads, family='gla', scan='bi', expand_k=None, expand_v=1.0,
                 direction_gates=False, gate_low_rank_dim=None, gate_logit_normalizer=None,
                 locality=False, bi_kernel='auto', **options):
        super().__init__()
        spec = check_family(family)
        num_directions(scan)
        defaults = spec['defaults']
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise ValueError(f'Unknown option(s) {", ".join(unknown)} for mixer family '
                             f'{family!r}; valid options: {", ".join(sorted(defaults))}')
        cfg = dict(defaults)
        given = dict(expand_k=expand_k, expand_v=expand_v, gate_low_rank_dim=gate_low_rank_dim,
                     gate_logit_normalizer=gate_logit_normalizer)
        cfg.update({k: v for k, v in given.items() if v is not None and k in defaults})
        cfg.update(options)
        self.family, self.spec, self.cfg = family, spec, cfg
        self.dim, self.num_heads = dim, num_heads
        causal = cfg.get('causal', spec['causal'])
        self.scan = scan if causal else 'uni'
        if direction_gates and spec['gate'] is None:
            valid = sorted(f for f, s in FAMILIES.items() if s['gate'] is not None)
            raise ValueError(f'direction_gates needs a data-dependent decay; family {family!r} '
                             f'has none (valid: {", ".join(valid)})')
        self.num_gates = num_directions(self.scan) if direction_gates else 1
        if bi_kernel not in BI_KERNEL_CHOICES:
            raise ValueError(f'Unknown bi_kernel {bi_kernel!r}; valid: '
                             f'{", ".join(BI_KERNEL_CHOICES)}')
        self.bi_kernel = bi_kernel
        if locality and spec.get('grid'):
            raise ValueError(f'family {family!r} injects locality itself (its local_conv '
                             f'feeds the projections); locality=True is for the other families')
        spec['build'](self, dim, num_heads, cfg)
        self.locality = locality
        if locality:
            self.local_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def scan_(self, t):
        """[B, L, ...] -> [D*B, L, ...] in this forward's scan order."""
        return scan(t, self._hw, self.scan, self._perm)

    def merge_(self, t):
        return merge(t, self._hw, self.scan, self._perm)

    def scan_gate_(self, g):
        """Scan a gate [B, L, G*n]; with direction_gates, direction d gets slice d."""
        if self.num_gates == 1:
            return self.scan_(g)
        B, L = g.shape[:2]
        g = g.reshape(B, L, self.num_gates, -1)
        return torch.cat([self.scan_(g[:, :, d]).chunk(self.num_gates, 0)[d]
                          for d in range(self.num_gates)], 0)

    def forward(self, x, hw):
        B, L, C = x.shape
        if hw[0] * hw[1] != L:
            raise ValueError(f'hw={tuple(hw)} does not match the {L} tokens of x')
        self._hw = hw
        self._perm = (torch.randperm(L, device=x.device)
                      if self.scan == 'random' and self.training else None)
        y = self.spec['mix'](self, x)
        if self.locality:
            grid = x.transpose(1, 2).reshape(B, C, *hw)
            y = y * torch.sigmoid(self.local_conv(grid).flatten(2).transpose(1, 2))
        return y
