"""Small layers the mixers and blocks share, named and shaped as in ``fla.modules``.

``fla.modules`` is to ``fla.layers`` what this file is to :mod:`fla_mm.layers.mixer`: norms,
short convolutions, BitLinear, LoRA and token shift, each with the parameter names of its FLA
counterpart, so that checkpoints map without renames (rotary embedding is an op,
:func:`fla_mm.ops.rotary`, as the fused bi-scan applies it too). Pure PyTorch: these run the
same on CPU and CUDA.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.rotary import rotary  # noqa: F401  (its home is fla_mm.ops now; kept importable here)

ACTS = dict(swish=F.silu, silu=F.silu, sigmoid=torch.sigmoid, relu=F.relu, gelu=F.gelu,
            identity=lambda x: x, elu=lambda x: F.elu(x) + 1.0)


def activation_fn(name, what='activation'):
    """The function named ``name`` in :data:`ACTS` (None for None); ``what`` names the option
    in the error."""
    if name is None:
        return None
    if name not in ACTS:
        raise ValueError(f'Unknown {what} {name!r}; valid: {", ".join(ACTS)}')
    return ACTS[name]


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension (fla.modules.RMSNorm), optionally gated
    (fla.modules.FusedRMSNormGated: norm(x) * act(g))."""

    def __init__(self, dim, eps=1e-5, elementwise_affine=True, activation='swish'):
        super().__init__()
        self.eps = eps
        self.activation = activation_fn(activation)
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
        self.act = activation_fn(activation)

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
    """fla.modules.feature_map.HadamardFeatureMap: layer1(x) * layer2(x)."""

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


def token_shift(x):
    """RWKV's delta x_{t-1} - x_t in raster order (x_{-1} = 0), the same for every scan."""
    return F.pad(x, (0, 0, 1, -1)) - x
