"""Blocks and small layers: x = x + drop_path(Mixer(norm(x), hw)); x = x + drop_path(FFN(norm(x)))."""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from .mixer import TokenMixer


class DropPath(nn.Module):
    """Stochastic depth per sample."""

    def __init__(self, p=0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty(x.shape[0], *([1] * (x.dim() - 1))).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


FFNS = dict(mlp=Mlp, swiglu=SwiGLU)


class Block(nn.Module):
    """Pre-norm residual block: token mixer then FFN, with drop path and optional layer scale."""

    def __init__(self, dim, num_heads, mixer=None, mlp_ratio=4.0, ffn='mlp', drop_path=0.0,
                 layer_scale=None, with_cp=False, norm_eps=1e-6):
        super().__init__()
        if ffn not in FFNS:
            raise ValueError(f'Unknown ffn {ffn!r}; valid: {", ".join(FFNS)}')
        self.ln_1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = TokenMixer(dim, num_heads, **(mixer or {}))
        self.ln_2 = nn.LayerNorm(dim, eps=norm_eps)
        self.channel_mixer = FFNS[ffn](dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)
        self.with_cp = with_cp
        if layer_scale:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def _forward(self, x, hw):
        y = self.attn(self.ln_1(x), hw)
        x = x + self.drop_path(y if self.gamma_1 is None else self.gamma_1 * y)
        y = self.channel_mixer(self.ln_2(x))
        return x + self.drop_path(y if self.gamma_2 is None else self.gamma_2 * y)

    def forward(self, x, hw):
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, hw, use_reentrant=False)
        return self._forward(x, hw)
