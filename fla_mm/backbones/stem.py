"""Stems: image -> tokens [B, L, C] at stride ``patch_size``, and the grid (H', W').

``STEMS`` names them; both layouts take ``stem=``:

- ``patch``: one patch_size x patch_size conv (ViT / DeiT, fla-zoo, ViG v1).
- ``conv_bn``: conv(k=p/2+1, s=p/2) -> BatchNorm -> GELU -> conv(3, s=2) -> LayerNorm
  (fla_mm's pyramid stem).
- ``vig_h``: the same with a LayerNorm after the first conv (ViG-H's v2 patch embedding).
- ``vig``: the same with LayerNorm and SiLU (ViG's V2PatchEmbed).

The conv stems keep the parameter names ``proj.{0,1,3}`` and ``norm``; their LayerNorms use
eps 1e-5, as ViG's LayerNorm2d.
"""
import torch.nn as nn

from ..layers import LayerNorm2d


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (timm's ``patch_embed.proj``)."""

    def __init__(self, in_channels, dim, patch_size):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, patch_size)

    def forward(self, x):
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])


class ConvStem(nn.Module):
    """Two strided convs to stride ``patch_size`` (ceil of sizes that are not multiples of
    it), the first followed by ``norm`` ('bn' or 'ln') and ``act``, then a LayerNorm."""

    def __init__(self, in_channels, dim, patch_size=4, norm='bn', act='gelu'):
        super().__init__()
        if patch_size % 4:
            raise ValueError(f'conv stems need a patch_size divisible by 4, got {patch_size}')
        s = patch_size // 2
        first = nn.BatchNorm2d(dim // 2) if norm == 'bn' else LayerNorm2d(dim // 2, eps=1e-5)
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, dim // 2, s + 1, s, 1), first,
            nn.GELU() if act == 'gelu' else nn.SiLU(), nn.Conv2d(dim // 2, dim, 3, 2, 1))
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def forward(self, x):
        x = self.proj(x)
        hw = tuple(x.shape[2:])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


STEMS = {
    'patch': PatchEmbed,
    'conv_bn': lambda c, d, p: ConvStem(c, d, p, 'bn', 'gelu'),
    'vig_h': lambda c, d, p: ConvStem(c, d, p, 'ln', 'gelu'),
    'vig': lambda c, d, p: ConvStem(c, d, p, 'ln', 'silu'),
}


def build_stem(name, in_channels, dim, patch_size):
    if name not in STEMS:
        raise ValueError(f'Unknown stem {name!r}; valid: {", ".join(STEMS)}')
    return STEMS[name](in_channels, dim, patch_size)
