"""The base every token mixer subclasses: options, the scan, the merge and the ViG locality.

A family is a subclass registered by name (:func:`register_mixer`) that says what it is in
class attributes (``family``, ``op``, ``defaults``, ``gate``, ``causal``, ``grid``, ``fla``,
``note``) and implements two methods:

- ``build(dim, num_heads, cfg)`` creates the parameters, named and shaped as the family's
  ``fla.layers`` module;
- ``mix(x, ctx)`` maps tokens [B, L, C] to [B, L, C]: per-token projections in raster order,
  ``ctx.scan`` to [D*B, L, ...], one call of ``self.op`` for all directions, ``ctx.merge``
  back, then the output path. ``ctx`` is the forward's :class:`~fla_mm.layers.scan.ScanContext`.

``TokenMixer(dim, num_heads, family=...)`` builds the registered class of that family, so a
config names a family, never a class.
"""
import warnings
from collections.abc import Mapping
from types import MappingProxyType

import torch
import torch.nn as nn

from ... import ops
from ..modules import ShortConv, activation_fn
from ..scan import ScanContext, num_directions

MIXERS = {}


def register_mixer(cls):
    """Class decorator: make ``cls`` the mixer of the family ``cls.family``."""
    if cls.family in MIXERS:
        raise ValueError(f'mixer family {cls.family!r} is registered already '
                         f'({MIXERS[cls.family].__qualname__})')
    MIXERS[cls.family] = cls
    return cls


def check_family(name):
    """The mixer class of family ``name``; an error lists the valid families."""
    if name not in MIXERS:
        raise ValueError(f'Unknown mixer family {name!r}; valid families: '
                         f'{", ".join(sorted(MIXERS))}')
    return MIXERS[name]


class FamilyTable(Mapping):
    """Read-only view of the registered families: name -> their description (op, defaults,
    gate, causal, grid, fla, note). Changing what a family does means changing its class."""

    def __getitem__(self, name):
        cls = MIXERS[name]
        return MappingProxyType(dict(
            op=cls.op, defaults=MappingProxyType(cls.defaults), gate=cls.gate,
            causal=cls.causal, grid=cls.grid, fla=cls.fla, note=cls.note, mixer=cls))

    def __iter__(self):
        return iter(MIXERS)

    def __len__(self):
        return len(MIXERS)


FAMILIES = FamilyTable()


def heads(t, d):
    """[..., L, H*d] -> [..., L, H, d]."""
    return t.reshape(*t.shape[:2], -1, d)


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
        bi_kernel: how a bi-scan (without short conv) of the families in
            ``ops.BI_FUSED_FAMILIES`` runs on CUDA. 'fused' (default): one fused kernel for
            both directions; 'two_call': [x, flip(x)] through FLA's one-direction kernel.
            Same function either way; the other families ignore it. 'auto', the old
            default, is read as 'fused'.
        bi_config: the fused kernel's variant, a ``fla_mm.ops.fused_bi.FusedBiConfig`` or a
            dict of its fields (None: the kernel's DEFAULT_CONFIG). Speed only, same function.
        locality: ViG 2-D locality injection: y = o_proj(global) * sigmoid(DWConv3x3(x)),
            with ``local_conv`` a depthwise 3x3 conv (with bias) over the H x W token grid.
        **options: the family's other ``fla.layers`` options (``FAMILIES[f]['defaults']``),
            e.g. use_short_conv, conv_size, fuse_norm, use_gate, head_dim, expand_ratio.
    """

    family = None
    op = None          # the family's op in fla_mm.ops (a staticmethod)
    defaults = {}      # every option the family takes, with its default (fla.layers names)
    gate = None        # the data-dependent decay direction_gates splits: 'key', 'head', None
    causal = True      # False: attention over the whole grid, no scan
    grid = False       # True: needs the 2-D grid itself (no cls token)
    fla = None         # the fla.layers class with the same parameters
    note = ''          # what differs from that class

    def __new__(cls, *args, **kwargs):
        if cls is TokenMixer:
            cls = check_family(kwargs.get('family', args[2] if len(args) > 2 else 'gla'))
        return super().__new__(cls)

    def __init__(self, dim, num_heads, family=None, scan='bi', expand_k=None, expand_v=1.0,
                 direction_gates=False, gate_low_rank_dim=None, gate_logit_normalizer=None,
                 locality=False, bi_kernel='fused', bi_config=None, **options):
        super().__init__()
        if family not in (None, self.family):
            raise ValueError(f'{type(self).__name__} is the mixer of family '
                             f'{self.family!r}, not {family!r}')
        num_directions(scan)
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ValueError(f'Unknown option(s) {", ".join(unknown)} for mixer family '
                             f'{self.family!r}; valid options: {", ".join(sorted(self.defaults))}')
        cfg = dict(self.defaults)
        given = dict(expand_k=expand_k, expand_v=expand_v, gate_low_rank_dim=gate_low_rank_dim,
                     gate_logit_normalizer=gate_logit_normalizer)
        cfg.update({k: v for k, v in given.items() if v is not None and k in self.defaults})
        cfg.update(options)
        self.cfg, self.dim, self.num_heads = cfg, dim, num_heads
        self.scan = scan if cfg.get('causal', self.causal) else 'uni'
        if direction_gates and self.gate is None:
            valid = sorted(f for f, c in MIXERS.items() if c.gate is not None)
            raise ValueError(f'direction_gates needs a data-dependent decay; family '
                             f'{self.family!r} has none (valid: {", ".join(valid)})')
        self.num_gates = num_directions(self.scan) if direction_gates else 1
        if bi_kernel == 'auto':
            warnings.warn("bi_kernel='auto' is read as 'fused' (its only meaning); write "
                          "'fused' or leave it out", FutureWarning, stacklevel=2)
            bi_kernel = 'fused'
        if bi_kernel not in ops.BI_KERNELS:
            raise ValueError(f'Unknown bi_kernel {bi_kernel!r}; valid: '
                             f'{", ".join(ops.BI_KERNELS)}')
        self.bi_kernel = bi_kernel
        if bi_config is not None:     # checked now, not at the first forward on a GPU
            from ...ops.fused_bi import FusedBiConfig    # (imports triton: only when asked)
            bi_config = FusedBiConfig.coerce(bi_config)
        self.bi_config = bi_config
        if locality and self.grid:
            raise ValueError(f'family {self.family!r} injects locality itself (its local_conv '
                             f'feeds the projections); locality=True is for the other families')
        self.build(dim, num_heads, cfg)
        self.locality = locality
        if locality:
            self.local_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def build(self, dim, num_heads, cfg):
        raise NotImplementedError

    def mix(self, x, ctx):
        raise NotImplementedError

    def forward(self, x, hw):
        B, L, C = x.shape
        if hw[0] * hw[1] != L:
            raise ValueError(f'hw={tuple(hw)} does not match the {L} tokens of x')
        perm = (torch.randperm(L, device=x.device)
                if self.scan == 'random' and self.training else None)
        y = self.mix(x, ScanContext(self.scan, tuple(hw), perm))
        if self.locality:
            grid = x.transpose(1, 2).reshape(B, C, *hw)
            y = y * torch.sigmoid(self.local_conv(grid).flatten(2).transpose(1, 2))
        return y

    # ---- parts several families share ---------------------------------------------------

    def head_dims(self, cfg, dim, num_heads):
        """Key / value widths dim * expand_k / expand_v, split over the heads."""
        key_dim, value_dim = round(dim * cfg['expand_k']), round(dim * cfg['expand_v'])
        if key_dim % num_heads or value_dim % num_heads:
            raise ValueError(f'dim*expand_k={key_dim} and dim*expand_v={value_dim} must be '
                             f'divisible by num_heads={num_heads}')
        self.key_dim, self.value_dim = key_dim, value_dim
        self.head_k_dim, self.head_v_dim = key_dim // num_heads, value_dim // num_heads
        return key_dim, value_dim

    def qkv_proj(self, dim, key_dim, value_dim, bias=False, linear=nn.Linear):
        self.q_proj = linear(dim, key_dim, bias=bias)
        self.k_proj = linear(dim, key_dim, bias=bias)
        self.v_proj = linear(dim, value_dim, bias=bias)

    def scanned_qkv(self, x, ctx):
        return (ctx.scan(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))

    def short_convs(self, cfg, dims, act='silu', names=('q', 'k', 'v')):
        """fla.layers' ``use_short_conv``: a causal ShortConv per stream (``<name>_conv1d``)."""
        self.use_short_conv = cfg.get('use_short_conv', False)
        if self.use_short_conv:
            acts = act if isinstance(act, (tuple, list)) else [act] * len(names)
            for n, d, a in zip(names, dims, acts):
                setattr(self, f'{n}_conv1d', ShortConv(d, cfg['conv_size'], cfg['conv_bias'], a))

    def short_conv(self, name, t, act=None):
        """Short conv of the scanned stream ``t`` [D*B, L, C], or the bare activation."""
        if self.use_short_conv:
            return getattr(self, f'{name}_conv1d')(t)
        return t if act is None else activation_fn(act)(t)
