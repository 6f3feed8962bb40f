"""The fused bi-scan as registered custom ops, and its entry :func:`fused_bi_decay_attn`.

``fla_mm::fused_bi_fwd`` and ``fla_mm::fused_bi_bwd`` (``torch.library.custom_op``) run the
passes of ``launch.py``; each has a fake implementation (``launch.fake_forward`` /
``fake_backward``: the same allocations, so the same shapes, dtypes and strides, no kernel)
and the forward's autograd calls the backward op. So ``torch.compile`` traces a block through
the op without a graph break, Inductor fuses the PyTorch around it, and it never sees (nor
recompiles in its workers) the Triton kernels inside: they are launched as in eager, the same
launches with the same arguments, hence the same numbers. The kernel variant
(:class:`FusedBiConfig`) crosses the op boundary as ``segments`` (int or None) and an int
list (``FusedBiConfig.to_op_args``). Neither op mutates or returns a view of an input.
"""
from typing import Optional

import torch
from torch import Tensor

from ..rotary import rotary_table, rotated_pairs
from . import launch
from .config import FusedBiConfig


@torch.library.custom_op('fla_mm::fused_bi_fwd', mutates_args=())
def fused_bi_fwd(q: Tensor, k: Tensor, v: Tensor, g: Tensor, scale: float,
                 segments: Optional[int], counts: list[int],
                 rot: Optional[Tensor] = None) -> Tensor:
    """o [B, T, H, V]; g [2, B, T, H(, K)] direction first, q and k [B, T, H, K] or per
    direction [2, B, T, H, K]; ``rot``: a rotary table (cos, sin by position) that the
    kernels apply to q, k at each direction's positions (see ``launch.run_forward``)."""
    return launch.run_forward(q, k, v, g, scale, FusedBiConfig.from_op_args(segments, counts),
                              rot)


@fused_bi_fwd.register_fake
def _(q, k, v, g, scale, segments, counts, rot=None):
    launch.check_rotary(rot, q, g)
    return launch.fake_forward(q, k, v, g)


@torch.library.custom_op('fla_mm::fused_bi_bwd', mutates_args=())
def fused_bi_bwd(q: Tensor, k: Tensor, v: Tensor, g: Tensor, do: Tensor, scale: float,
                 segments: Optional[int], counts: list[int], need_dg: bool,
                 rot: Optional[Tensor] = None) -> list[Tensor]:
    """[dq, dk, dv] (+ [dg] with ``need_dg``) of :func:`fused_bi_fwd` for the output gradient
    ``do`` (see ``launch.run_backward``)."""
    return launch.run_backward(q, k, v, g, do, scale,
                               FusedBiConfig.from_op_args(segments, counts), need_dg, rot)


@fused_bi_bwd.register_fake
def _(q, k, v, g, do, scale, segments, counts, need_dg, rot=None):
    return launch.fake_backward(q, k, v, g, FusedBiConfig.from_op_args(segments, counts),
                                need_dg, rot)


def _setup_context(ctx, inputs, output):
    q, k, v, g, ctx.scale, ctx.segments, ctx.counts, rot = inputs
    ctx.save_for_backward(q, k, v, g, rot)


def _backward(ctx, do):
    q, k, v, g, rot = ctx.saved_tensors
    need_dg = ctx.needs_input_grad[3]
    grads = fused_bi_bwd(q, k, v, g, do, ctx.scale, ctx.segments, ctx.counts, need_dg, rot)
    return (*grads[:3], grads[3] if need_dg else None, None, None, None, None)


fused_bi_fwd.register_autograd(_backward, setup_context=_setup_context)


def fused_bi_decay_attn(q, k, v, gf, gb=None, scale=None, stacked=False, config=None,
                        qb=None, kb=None, rotary_base=None):
    """Both scans of decayed linear attention in one kernel pair (see :mod:`fla_mm.ops.fused_bi`).

    ``gf`` / ``gb``: log decays of the forward / backward scan, [B, T, H] (simple_gla, RetNet)
    or [B, T, H, K] (GLA); ``gb=None``: the same tensor. A stride-0 expanded tensor is read
    without being materialised. ``stacked=True``: ``gf`` is [B, T, 2, H(, K)], both directions
    (forward first, ``gb`` None), read through a view: no stacked copy, and its gradient comes
    back in the same layout. ``config``: the kernel variant, a :class:`FusedBiConfig`, a dict
    of its fields or None (the default); every variant computes the same function.
    ``qb`` / ``kb``: the backward scan's own queries / keys [B, T, H, K] in the original token
    order (RetNet's rotary positions count along each scanned sequence, so they differ from
    the forward scan's); None: q / k. Given, both directions' q and k go to the op as one
    [2, B, T, H, K] pair, which only the chunked form reads (it runs at every shape).
    ``rotary_base``: rotary embeddings at the positions along each scanned sequence
    (``ops.rotary``), instead of ``qb`` / ``kb``: with a scalar decay and a head dim of 16,
    32, 64 or 128 the chunked kernels rotate the one q, k themselves (and dq, dk back);
    otherwise the rotated pair is made here.
    """
    config = FusedBiConfig.coerce(config)
    rot = None
    if rotary_base is not None:
        per_channel = gf.dim() == (5 if stacked else 4)
        if launch.rotary_supported(q, per_channel) and qb is None and kb is None:
            rot = rotary_table(q.shape[1], q.shape[-1], rotary_base, q.device)
        else:           # (an error with qb / kb given too)
            q, k, qb, kb = rotated_pairs(q, k, qb, kb, rotary_base)
    if qb is not None or kb is not None:
        q = torch.stack([q, q if qb is None else qb])
        k = torch.stack([k, k if kb is None else kb])
    segments, counts = config.to_op_args()
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if stacked:
        g = gf.movedim(2, 0)
    elif gb is None or gb is gf:
        g = gf.unsqueeze(0).expand(2, *gf.shape)
    else:
        g = torch.stack([gf, gb])
    # contiguous here, outside the op: autograd saves these for the backward, and under
    # torch.compile the copies (if any) fuse with the ops that made q, k, v
    return fused_bi_fwd(q.contiguous(), k.contiguous(), v.contiguous(), g, float(scale),
                        segments, counts, rot)
