"""What both layouts share: the OpenMMLab backbone contract.

Argument checks whose errors name the bad value and the valid choices, freezing and
``norm_eval`` that survive ``.train()``, ``init_weights`` with ``Pretrained`` through
:func:`fla_mm.checkpoint.load_pretrained`, ``reparameterize()``, and the layer ids that the
layer-wise lr-decay optimizer constructor reads.
"""
import copy
import inspect
import math

import torch.nn as nn
from mmengine.model import BaseModule

from ..layers import FAMILIES


def resolve_arch(arch, archs):
    """A named size (key of ``archs``) or a dict with the same keys."""
    keys = list(next(iter(archs.values())))
    if isinstance(arch, str):
        if arch not in archs:
            raise ValueError(f'Unknown arch {arch!r}; valid sizes: {", ".join(archs)} '
                             f'(or a dict with keys {", ".join(keys)})')
        return copy.deepcopy(archs[arch])
    if not isinstance(arch, dict):
        raise TypeError(f'arch must be one of {", ".join(archs)} or a dict, got {arch!r}')
    missing = sorted(set(keys) - set(arch))
    unknown = sorted(set(arch) - set(keys))
    if missing or unknown:
        raise ValueError(f'arch dict {arch} lacks keys {missing} / has unknown keys {unknown}; '
                         f'expected keys: {", ".join(keys)}')
    return copy.deepcopy(dict(arch))


def per_item(value, n, what, kinds=(str, dict, type(None))):
    """One value for all ``n`` items, or a list/tuple of exactly ``n``."""
    if isinstance(value, kinds):
        return [copy.deepcopy(value) for _ in range(n)]
    value = list(value)
    if len(value) != n:
        raise ValueError(f'{what} list needs {n} entries, got {len(value)}: {value}')
    return value


def check_mixers(mixers, extra=()):
    valid = sorted(FAMILIES) + list(extra)
    for m in mixers:
        if m not in valid:
            raise ValueError(f'Unknown mixer {m!r}; valid mixers: {", ".join(valid)}')


def check_indices(indices, n, what):
    """Normalise (negative allowed) indices into [0, n); an error lists the valid range."""
    if isinstance(indices, int):
        indices = (indices,)
    out = []
    for i in indices:
        if not isinstance(i, int) or not -n <= i < n:
            raise ValueError(f'{what} {tuple(indices)} has {i!r}; valid: integers in '
                             f'[{-n}, {n - 1}]')
        out.append(i % n)
    if len(set(out)) != len(out):
        raise ValueError(f'{what} {tuple(indices)} repeats an index')
    return tuple(out)


def to_2tuple(x, what):
    if isinstance(x, int):
        return (x, x)
    if isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(v, int) for v in x):
        return tuple(x)
    raise ValueError(f'{what} must be an int or a pair (H, W), got {x!r}')


class FLABackboneBase(BaseModule):
    """Base of the two layouts.

    A subclass sets ``in_channels``, ``patch_size``, ``frozen_stages``, ``norm_eval`` and
    implements :meth:`_frozen_parts` (modules and parameters that ``frozen_stages`` fixes),
    :meth:`layer_id` and ``num_layers``.
    """

    def __init__(self, init_cfg=None, unknown=None):
        super().__init__(init_cfg=init_cfg)
        if unknown:
            valid = [n for n in inspect.signature(type(self).__init__).parameters
                     if n not in ('self', 'unknown')]
            raise TypeError(f'{type(self).__name__} got unknown argument(s) '
                            f'{", ".join(sorted(unknown))}; valid arguments: {", ".join(valid)}')

    def check_input(self, x):
        if x.dim() != 4:
            raise ValueError(f'{type(self).__name__} input must be 4-D [B, C, H, W], got shape '
                             f'{tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'{type(self).__name__} expects {self.in_channels} input channels '
                             f'(in_channels), got {x.shape[1]} (input shape {tuple(x.shape)})')
        H, W = x.shape[2:]
        if H < self.patch_size or W < self.patch_size:
            raise ValueError(f'{type(self).__name__} input {H}x{W} is smaller than the patch '
                             f'size {self.patch_size}; images must be at least '
                             f'{self.patch_size}x{self.patch_size}')

    @staticmethod
    def out_hw(hw, stride):
        return tuple(math.ceil(s / stride) for s in hw)

    def _frozen_parts(self):
        raise NotImplementedError

    def _freeze_stages(self):
        for part in self._frozen_parts():
            if isinstance(part, nn.Parameter):
                part.requires_grad = False
                continue
            part.eval()
            for p in part.parameters():
                p.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def _default_init(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                if m.weight is not None:
                    nn.init.ones_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def init_weights(self):
        """Random init, or ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)``.

        Pretrained goes through :func:`fla_mm.checkpoint.load_pretrained`, strict unless
        ``strict=False`` is in ``init_cfg``.
        """
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            from ..checkpoint import load_pretrained
            kwargs = {k: v for k, v in cfg.items() if k != 'type'}
            if 'checkpoint' not in kwargs:
                raise ValueError(f'init_cfg {cfg} of type Pretrained needs a checkpoint path')
            load_pretrained(self, **kwargs)
            self._is_init = True
            self._freeze_stages()
            return
        self._default_init()
        super().init_weights()

    def reparameterize(self):
        """Fold train-time branches (RepMixer stages) for inference; no-op without them."""
        from ..layers import reparameterize_model
        reparameterize_model(self)
        return self

    @property
    def num_layers(self):
        raise NotImplementedError

    def layer_id(self, name):
        """Layer id of parameter ``name`` (relative to the backbone) for lr decay:
        0 = stem, 1..num_layers = blocks in order, num_layers + 1 = everything after."""
        raise NotImplementedError
