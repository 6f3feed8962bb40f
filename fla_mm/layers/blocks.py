"""Blocks and small layers: x = x + drop_path(Mixer(norm(x), hw)); x = x + drop_path(FFN(norm(x))).

Two block styles share one class (:data:`BLOCK_STYLES`): ``vig`` (LayerNorm + GELU MLP, the
ViG / DeiT block) and ``illama`` (RMSNorm + SwiGLU with a causal raster scan, the iLLaMA
block). Parameter names (ln_1, attn, ln_2, channel_mixer) are the same in both.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from .mixer import TokenMixer
from .modules import RMSNorm


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

    def extra_repr(self):
        return f'p={self.p}'


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


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a [B, C, H, W] map."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


FFNS = dict(mlp=Mlp, swiglu=SwiGLU)


def ffn_hidden(dim, mlp_ratio, multiple_of=1):
    """FFN width: int(dim * mlp_ratio) rounded up to a multiple of ``multiple_of``.

    With mlp_ratio=8/3 this is the width rule of ViG-H's gMlp (multiple_of=32) and of ViG's
    GLAMLP and fla.modules.GatedMLP (256). The 1e-6 absorbs float error, so a ratio read off
    a checkpoint (hidden / dim) gives ``hidden`` back.
    """
    hidden = int(dim * mlp_ratio + 1e-6)
    return -(-hidden // multiple_of) * multiple_of


NORMS = dict(ln=nn.LayerNorm, rms=RMSNorm)

# Defaults a backbone fills in from its ``block`` argument; explicit arguments win.
# illama: SwiGLU at 8/3 width has the parameter count of a 4x GELU MLP.
BLOCK_STYLES = {
    'vig': dict(norm='ln', ffn='mlp', mlp_ratio=4.0, scan='bi'),
    'illama': dict(norm='rms', ffn='swiglu', mlp_ratio=8 / 3, scan='uni'),
}


def block_style(name, **overrides):
    """Style defaults with the non-None ``overrides`` applied."""
    if name not in BLOCK_STYLES:
        raise ValueError(f'Unknown block style {name!r}; valid: {", ".join(BLOCK_STYLES)}')
    style = dict(BLOCK_STYLES[name])
    style.update({k: v for k, v in overrides.items() if v is not None})
    return style


class Block(nn.Module):
    """Pre-norm residual block: token mixer then FFN, with drop path and optional layer scale.

    Args:
        dim, num_heads: token channels and mixer heads.
        mixer: TokenMixer options (family, scan, ...).
        mlp_ratio, ffn: FFN hidden width as a multiple of ``dim``; 'mlp' or 'swiglu'.
        mlp_multiple_of: round the FFN width up to a multiple of this (:func:`ffn_hidden`).
        norm: 'ln' (LayerNorm) or 'rms' (RMSNorm).
        drop_path: stochastic-depth probability of both residual branches.
        layer_scale: initial value of per-channel residual scales (gamma_1, gamma_2), or None.
        with_cp: recompute the block in the backward pass (activation checkpointing).
    """

    def __init__(self, dim, num_heads, mixer=None, mlp_ratio=4.0, ffn='mlp', drop_path=0.0,
                 layer_scale=None, with_cp=False, norm='ln', norm_eps=1e-6, mlp_multiple_of=1):
        super().__init__()
        if ffn not in FFNS:
            raise ValueError(f'Unknown ffn {ffn!r}; valid: {", ".join(FFNS)}')
        if norm not in NORMS:
            raise ValueError(f'Unknown norm {norm!r}; valid: {", ".join(NORMS)}')
        self.ln_1 = NORMS[norm](dim, eps=norm_eps)
        self.attn = TokenMixer(dim, num_heads, **(mixer or {}))
        self.ln_2 = NORMS[norm](dim, eps=norm_eps)
        self.channel_mixer = FFNS[ffn](dim, ffn_hidden(dim, mlp_ratio, mlp_multiple_of))
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
        # Non-reentrant checkpointing restores the RNG state on recompute, so drop path and
        # the random scan draw the same masks / permutations twice.
        if self.with_cp and torch.is_grad_enabled():
            return cp.checkpoint(self._forward, x, tuple(hw), use_reentrant=False)
        return self._forward(x, hw)


def resize_pos_embed(pos_embed, src_hw, dst_hw, mode='bicubic'):
    """Resize a cls-token-free absolute position embedding [1, h*w, C] to another grid.

    Any target grid works, non-square included; the same grid returns the input unchanged.
    """
    src_hw, dst_hw = tuple(src_hw), tuple(dst_hw)
    if src_hw == dst_hw:
        return pos_embed
    B, L, C = pos_embed.shape
    if L != src_hw[0] * src_hw[1]:
        raise ValueError(f'pos_embed has {L} tokens, which is not the grid {src_hw}')
    grid = pos_embed.reshape(B, *src_hw, C).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=dst_hw, mode=mode, align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(B, -1, C).to(pos_embed.dtype)
