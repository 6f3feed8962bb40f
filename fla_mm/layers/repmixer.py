"""FastViT-style RepMixer blocks: conv token mixing for the early, high-resolution stages.

At train time the token mixer is ``x + s * (DW_kxk_BN(x) + DW_1x1_BN(x) + BN(x) - BN'(x))``
(several branches, per-channel scale ``s``); :meth:`RepMixer.reparameterize` folds all of it,
the identity included, into ONE depthwise kxk conv with bias, exact in eval mode. The FFN's
depthwise conv + BN folds the same way. Blocks take and return tokens [B, L, C] with the grid
``hw`` like :class:`fla_mm.layers.Block`, so a pyramid stage can hold either.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from .blocks import DropPath


def _fold_bn(weight, bn):
    """(conv weight, BN) -> (weight, bias) of one conv computing BN(conv(x)) in eval mode."""
    std = (bn.running_var + bn.eps).sqrt()
    t = bn.weight / std
    return weight * t.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * t


def _identity_kernel(channels, k, like):
    w = like.new_zeros(channels, 1, k, k)
    w[:, 0, k // 2, k // 2] = 1.0
    return w


class ConvBN(nn.Sequential):
    """Depthwise conv without bias followed by BatchNorm."""

    def __init__(self, dim, kernel_size):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim,
                              bias=False)
        self.bn = nn.BatchNorm2d(dim)

    def fold(self):
        return _fold_bn(self.conv.weight, self.bn)


class RepMixer(nn.Module):
    """Reparameterisable depthwise token mixer on [B, C, H, W] maps.

    Args:
        dim: channels.
        kernel_size: depthwise kernel of the main branch (odd).
        layer_scale: initial per-channel scale of the mixing residual.
    """

    def __init__(self, dim, kernel_size=3, layer_scale=1e-5):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f'RepMixer kernel_size must be odd, got {kernel_size}')
        self.dim, self.kernel_size = dim, kernel_size
        self.conv = ConvBN(dim, kernel_size)
        self.scale = ConvBN(dim, 1)
        self.skip = nn.BatchNorm2d(dim)
        self.norm = nn.BatchNorm2d(dim)
        self.layer_scale = nn.Parameter(torch.full((dim,), float(layer_scale)))
        self.reparam_conv = None

    def forward(self, x):
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        mixed = self.conv(x) + self.scale(x) + self.skip(x) - self.norm(x)
        return x + self.layer_scale.reshape(1, -1, 1, 1) * mixed

    @torch.no_grad()
    def reparameterize(self):
        """Replace the branches by one depthwise conv (uses BN running statistics)."""
        if self.reparam_conv is not None:
            return
        k, C = self.kernel_size, self.dim
        w_conv, b_conv = self.conv.fold()
        w_scale, b_scale = self.scale.fold()
        w_scale = F.pad(w_scale, [k // 2] * 4)
        eye = _identity_kernel(C, k, w_conv)
        w_skip, b_skip = _fold_bn(eye, self.skip)
        w_norm, b_norm = _fold_bn(eye, self.norm)
        s = self.layer_scale.reshape(-1, 1, 1, 1)
        weight = eye + s * (w_conv + w_scale + w_skip - w_norm)
        bias = self.layer_scale * (b_conv + b_scale + b_skip - b_norm)
        conv = nn.Conv2d(C, C, k, padding=k // 2, groups=C, bias=True).to(weight)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        for name in ('conv', 'scale', 'skip', 'norm', 'layer_scale'):
            delattr(self, name)
        self.reparam_conv = conv


class ConvFFN(nn.Module):
    """Depthwise 7x7 conv + BN, then a 1x1-conv MLP; the conv + BN folds into one conv."""

    def __init__(self, dim, hidden, kernel_size=7):
        super().__init__()
        self.conv = ConvBN(dim, kernel_size)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(self.conv(x))))

    @torch.no_grad()
    def reparameterize(self):
        if not isinstance(self.conv, ConvBN):
            return
        weight, bias = self.conv.fold()
        c = self.conv.conv
        conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, padding=c.padding,
                         groups=c.groups, bias=True).to(weight)
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        self.conv = conv


class RepMixerBlock(nn.Module):
    """FastViT RepMixer block with the token interface of :class:`fla_mm.layers.Block`.

    Args:
        dim: channels.
        mlp_ratio: ConvFFN hidden width as a multiple of ``dim``.
        kernel_size: RepMixer kernel.
        drop_path: stochastic depth of the FFN branch.
        layer_scale: initial per-channel scale of both residuals.
        with_cp: activation checkpointing.
    """

    def __init__(self, dim, mlp_ratio=3.0, kernel_size=3, drop_path=0.0, layer_scale=1e-5,
                 with_cp=False):
        super().__init__()
        self.token_mixer = RepMixer(dim, kernel_size, layer_scale)
        self.channel_mixer = ConvFFN(dim, int(dim * mlp_ratio))
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale)))
        self.drop_path = DropPath(drop_path)
        self.with_cp = with_cp

    def _forward(self, x, hw):
        B, L, C = x.shape
        x = self.token_mixer(x.transpose(1, 2).reshape(B, C, *hw))
        y = self.channel_mixer(x) * self.gamma.reshape(1, -1, 1, 1)
        x = x + self.drop_path(y)
        return x.flatten(2).transpose(1, 2)

    def forward(self, x, hw):
        if self.with_cp and torch.is_grad_enabled():
            return cp.checkpoint(self._forward, x, tuple(hw), use_reentrant=False)
        return self._forward(x, hw)

    def reparameterize(self):
        self.token_mixer.reparameterize()
        self.channel_mixer.reparameterize()


def reparameterize_model(model):
    """Fold every reparameterisable module of ``model`` in place (call in eval mode)."""
    for m in list(model.modules()):
        if isinstance(m, (RepMixer, ConvFFN)):
            m.reparameterize()
    return model
