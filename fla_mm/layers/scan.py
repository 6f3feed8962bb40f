"""Scan orders: turn a 2-D token grid into 1-D sequences and back.

Each order is a pair of pure functions. ``scan(x, hw)`` maps [B, L, ...] to [D*B, L, ...]
(D directions stacked on the batch so that ONE kernel call handles them all), and
``merge(y, hw)`` maps [D*B, L, ...] back to [B, L, ...] by summing the directions, each
put back in raster order. :class:`ScanContext` binds one forward's order, grid and random
permutation, and is what a mixer's ``mix`` receives.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

SCANS = ('uni', 'bi', 'cross', 'random')


def _check(name):
    if name not in SCANS:
        raise ValueError(f'Unknown scan {name!r}; valid scans: {", ".join(SCANS)}')


def _transpose_grid(x, hw):
    """Raster (row-major) order <-> column-major order of an H x W grid."""
    h, w = hw
    B, L = x.shape[:2]
    return x.reshape(B, h, w, *x.shape[2:]).transpose(1, 2).reshape(B, L, *x.shape[2:])


def num_directions(name):
    _check(name)
    return dict(uni=1, bi=2, cross=4, random=1)[name]


def scan(x, hw, name, perm=None):
    """[B, L, ...] -> [D*B, L, ...]. ``perm`` is the token permutation of ``random``."""
    _check(name)
    if name == 'uni':
        return x
    if name == 'bi':
        return torch.cat([x, x.flip(1)], 0)
    if name == 'cross':
        xt = _transpose_grid(x, hw)
        return torch.cat([x, x.flip(1), xt, xt.flip(1)], 0)
    return x if perm is None else x[:, perm]


def scan_direction(x, hw, name, d, perm=None):
    """Direction ``d`` alone of :func:`scan`: [B, L, ...] -> [B, L, ...]."""
    if name == 'random':
        return x if perm is None else x[:, perm]
    if d >= 2:                                    # cross: the column-major directions
        x = _transpose_grid(x, hw)
    return x.flip(1) if d % 2 else x


def merge(y, hw, name, perm=None):
    """Inverse of :func:`scan` summed over directions: [D*B, L, ...] -> [B, L, ...]."""
    _check(name)
    if name == 'uni':
        return y
    if name == 'bi':
        a, b = y.chunk(2, 0)
        return a + b.flip(1)
    if name == 'cross':
        a, b, c, d = y.chunk(4, 0)
        h, w = hw
        return a + b.flip(1) + _transpose_grid(c, (w, h)) + _transpose_grid(d.flip(1), (w, h))
    if perm is None:
        return y
    return y[:, torch.argsort(perm)]


@dataclass(frozen=True, eq=False)
class ScanContext:
    """One forward's scan: the order ``name``, the token grid ``hw`` and, for 'random' in
    training, the permutation ``perm``. Handed to a mixer's ``mix`` as an argument, so no
    per-call state is left on the module."""
    name: str
    hw: Tuple[int, int]
    perm: Optional[torch.Tensor] = None

    @property
    def directions(self):
        return num_directions(self.name)

    def scan(self, t):
        """[B, L, ...] -> [D*B, L, ...]."""
        return scan(t, self.hw, self.name, self.perm)

    def merge(self, t):
        """[D*B, L, ...] -> [B, L, ...], the directions summed in raster order."""
        return merge(t, self.hw, self.name, self.perm)

    def scan_gates(self, g, num_gates):
        """Scan a gate [B, L, num_gates * n]. With one gate, as :meth:`scan`; with a gate per
        direction (ViG's direction-wise gating), direction d is scanned from slice d alone."""
        if num_gates == 1:
            return self.scan(g)
        B, L = g.shape[:2]
        g = g.reshape(B, L, num_gates, -1)
        return torch.cat([scan_direction(g[:, :, d], self.hw, self.name, d, self.perm)
                          for d in range(num_gates)], 0)
