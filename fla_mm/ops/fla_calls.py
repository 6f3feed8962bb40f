"""FLA's kernel calls, each one registered custom op to ``torch.compile``.

Why: FLA 0.6.0 wraps its user-facing ops (``chunk_gla`` ...) in ``torch.compiler.disable``, so
a compiled block breaks its graph at every FLA call and Inductor cannot fuse the projections,
gates and norms around it. :func:`call` runs the call directly in eager, and under
``torch.compile`` through ``fla_mm::fla_forward``, an opaque op with a fake implementation, so
that Dynamo traces the whole block as one graph; Dynamo never sees FLA's kernels.

The price: ``fla_mm::fla_backward`` recomputes the FLA forward (with autograd, on detached
inputs) and differentiates it, so a compiled training step runs each FLA forward twice.

:data:`REGISTRY` maps a call's name to an :class:`FlaCall`: a function
``fn(tensors, scale, flag) -> output`` and the indices of the inputs whose shape and dtype the
output has (read from FLA 0.6.0's sources). The ops return the output in that dtype with
contiguous strides, as the fake does. :func:`register` adds an entry; tests register pure
PyTorch stand-ins under their own names, since FLA's kernels need CUDA.
"""
from typing import NamedTuple, Optional

import torch
from torch import Tensor

RWKV7_LOG_DECAY_MIN = -0.6065306597126334


class FlaCall(NamedTuple):
    """``fn(tensors, scale, flag)``: the call; its output has the shape of ``tensors[like]``
    and the dtype of ``tensors[dtype_like]``."""
    fn: object
    like: int
    dtype_like: int


REGISTRY = {}


def register(name, fn, like, dtype_like=None):
    """Add (or replace) the entry ``name``: ``fn(tensors, scale, flag)`` returns one tensor of
    the shape of ``tensors[like]`` and the dtype of ``tensors[dtype_like]`` (default: ``like``)."""
    REGISTRY[name] = FlaCall(fn, like, like if dtype_like is None else dtype_like)
    return fn


def call(name, tensors, scale=None, flag=False):
    """The entry ``name`` on ``tensors``: directly in eager, through ``fla_mm::fla_forward``
    while ``torch.compile`` traces."""
    if torch.compiler.is_compiling():
        return fla_forward(name, list(tensors), None if scale is None else float(scale),
                           bool(flag))
    return REGISTRY[name].fn(tuple(tensors), scale, flag)


def _entry(name):
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f'fla_mm: no FLA call {name!r}; registered: '
                       f'{", ".join(sorted(REGISTRY))}') from None


def _out_meta(name, tensors):
    entry = _entry(name)
    return tensors[entry.like].shape, tensors[entry.dtype_like].dtype, tensors[entry.like].device


def _standard_strides(shape):
    return torch.empty(shape, device='meta').stride()


def _declared(t, shape, dtype, taken):
    """``t`` as the fake declares it: ``shape``, ``dtype``, standard contiguous strides, and a
    storage of its own (not among the data pointers in ``taken``, which it joins)."""
    if tuple(t.shape) != tuple(shape):
        raise RuntimeError(f'fla_mm: an FLA call returned shape {tuple(t.shape)}, its registry '
                           f'entry declares {tuple(shape)}')
    t = t.to(dtype)
    if t.stride() != _standard_strides(shape) or t.untyped_storage().data_ptr() in taken:
        t = t.clone(memory_format=torch.contiguous_format)
    taken.add(t.untyped_storage().data_ptr())
    return t


def _storages(tensors):
    return {t.untyped_storage().data_ptr() for t in tensors}


def _run(name, tensors, scale, flag):
    try:
        return _entry(name).fn(tuple(tensors), scale, flag)
    except Exception as e:
        if not isinstance(e, torch.OutOfMemoryError):
            e.add_note(f'fla_mm: raised in the FLA call {name!r} (fla_mm::fla_forward, '
                       f'torch.compile); FLA_MM_BACKEND=reference runs the PyTorch reference.')
        raise


@torch.library.custom_op('fla_mm::fla_forward', mutates_args=())
def fla_forward(name: str, tensors: list[Tensor], scale: Optional[float], flag: bool) -> Tensor:
    """The output of the FLA call ``name`` (see :data:`REGISTRY`), without autograd."""
    shape, dtype, _ = _out_meta(name, tensors)
    with torch.no_grad():
        out = _run(name, tensors, scale, flag)
    return _declared(out, shape, dtype, _storages(tensors))


@fla_forward.register_fake
def _(name, tensors, scale, flag):
    shape, dtype, device = _out_meta(name, tensors)
    return torch.empty(shape, dtype=dtype, device=device)


# the keys torch._C._AutoDispatchBelowAutograd excludes (c10's autograd_dispatch_keyset)
_AUTOGRAD_KEYS = (torch._C.DispatchKeySet(torch._C.DispatchKey.AutogradFunctionality)
                  | torch._C.DispatchKeySet(torch._C.DispatchKey.AutogradOther)
                  | torch._C.DispatchKeySet(torch._C.DispatchKey.AutogradNestedTensor))


def _autograd_on():
    """A custom op's implementation runs below autograd (its keys excluded from dispatch), so
    nothing it computes would record a graph: this guard lifts that exclusion."""
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(),
                                           torch._C._dispatch_tls_local_exclude_set()
                                           - _AUTOGRAD_KEYS)


@torch.library.custom_op('fla_mm::fla_backward', mutates_args=())
def fla_backward(name: str, tensors: list[Tensor], scale: Optional[float], flag: bool,
                 grad_out: Tensor) -> list[Tensor]:
    """The gradient of each input of :func:`fla_forward` for the output gradient ``grad_out``
    (zeros where an input gets none): the FLA forward recomputed with autograd."""
    shape, dtype, _ = _out_meta(name, tensors)
    with _autograd_on(), torch.enable_grad():
        leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in tensors]
        out = _run(name, leaves, scale, flag).to(dtype)
        wrt = [t for t in leaves if t.requires_grad]
        found = iter(torch.autograd.grad(out, wrt, grad_out, allow_unused=True)
                     if out.requires_grad else [None] * len(wrt))
    taken = _storages([*tensors, grad_out])
    grads = []
    for t in leaves:
        g = next(found) if t.requires_grad else None
        g = torch.zeros(t.shape, dtype=t.dtype, device=t.device) if g is None else g
        grads.append(_declared(g, t.shape, t.dtype, taken))
    return grads


@fla_backward.register_fake
def _(name, tensors, scale, flag, grad_out):
    return [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in tensors]


def _setup_context(ctx, inputs, output):
    ctx.name, tensors, ctx.scale, ctx.flag = inputs
    ctx.save_for_backward(*tensors)


def _backward(ctx, grad_out):
    needs = ctx.needs_input_grad[1]
    grads = fla_backward(ctx.name, list(ctx.saved_tensors), ctx.scale, ctx.flag, grad_out)
    return None, [g if n else None for g, n in zip(grads, needs)], None, None


fla_forward.register_autograd(_backward, setup_context=_setup_context)


# The FLA calls of fla_mm.ops.families, with its arguments; outputs per FLA 0.6.0's sources:
# [B, T, H, V] like v, in v's dtype (chunk_gla, rwkv6, gsa, abc) or q's (the calls through
# chunk_simple_gla / fused_recurrent, the delta rules, rwkv7's chunk_dplr: ``o.to(q.dtype)``).

def _chunk_gla(t, scale, flag):
    from fla.ops.gla import chunk_gla
    return chunk_gla(*t, scale=scale)[0]


def _chunk_simple_gla(t, scale, flag):
    from fla.ops.simple_gla import chunk_simple_gla
    return chunk_simple_gla(*t, scale=scale)[0]


def _fused_recurrent_simple_gla(t, scale, flag):
    from fla.ops.simple_gla import fused_recurrent_simple_gla
    return fused_recurrent_simple_gla(*t, scale=scale)[0]


def _chunk_retention(t, scale, flag):
    from fla.ops.retention import chunk_retention
    return chunk_retention(*t, scale=scale)[0]


def _chunk_linear_attn(t, scale, flag):
    from fla.ops.linear_attn import chunk_linear_attn
    return chunk_linear_attn(*t, scale=scale, normalize=False)[0]


def _chunk_delta_rule(t, scale, flag):
    """``flag``: FLA's use_qk_l2norm_in_kernel."""
    from fla.ops.delta_rule import chunk_delta_rule
    return chunk_delta_rule(*t, scale=scale, use_qk_l2norm_in_kernel=flag)[0]


def _chunk_gated_delta_rule(t, scale, flag):
    """``flag``: FLA's use_qk_l2norm_in_kernel."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    q, k, v, g, beta = t
    return chunk_gated_delta_rule(q, k, v, g=g, beta=beta, scale=scale,
                                  use_qk_l2norm_in_kernel=flag)[0]


def _chunk_hgrn(t, scale, flag):
    from fla.ops.hgrn import chunk_hgrn
    return chunk_hgrn(*t)[0]


def _chunk_rwkv6(t, scale, flag):
    from fla.ops.rwkv6 import chunk_rwkv6
    return chunk_rwkv6(*t, scale=scale)[0]


def _chunk_rwkv7(t, scale, flag):
    """With RWKV7Attention's hints: ``w`` in [RWKV7_LOG_DECAY_MIN, 0), chunks of 64."""
    from fla.ops.rwkv7 import chunk_rwkv7
    r, w, k, v, a, b = t
    return chunk_rwkv7(r=r, w=w, k=k, v=v, a=a, b=b, scale=scale, safe_gate=True,
                       lower_bound=RWKV7_LOG_DECAY_MIN, chunk_size=64)[0]


def _chunk_gsa(t, scale, flag):
    from fla.ops.gsa import chunk_gsa
    return chunk_gsa(*t, scale=scale)[0]


def _chunk_abc(t, scale, flag):
    from fla.ops.abc import chunk_abc
    return chunk_abc(*t)[0]


# name: (fn, like, dtype_like), inputs in the order the function takes them
for _name, _fn, _like, _dtype_like in (
        ('chunk_gla', _chunk_gla, 2, 2),                                    # q, k, v, g
        ('chunk_simple_gla', _chunk_simple_gla, 2, 0),                      # q, k, v, g
        ('fused_recurrent_simple_gla', _fused_recurrent_simple_gla, 2, 0),  # q, k, v, g
        ('chunk_retention', _chunk_retention, 2, 0),                        # q, k, v
        ('chunk_linear_attn', _chunk_linear_attn, 2, 0),                    # q, k, v
        ('chunk_delta_rule', _chunk_delta_rule, 2, 0),                      # q, k, v, beta
        ('chunk_gated_delta_rule', _chunk_gated_delta_rule, 2, 0),          # q, k, v, g, beta
        ('chunk_hgrn', _chunk_hgrn, 0, 0),                                  # x, g
        ('chunk_rwkv6', _chunk_rwkv6, 2, 2),                                # r, k, v, w, u
        ('chunk_rwkv7', _chunk_rwkv7, 3, 0),                                # r, w, k, v, a, b
        ('chunk_gsa', _chunk_gsa, 2, 2),                                    # q, k, v, s, g
        ('chunk_abc', _chunk_abc, 2, 2)):                                   # q, k, v, s
    register(_name, _fn, _like, _dtype_like)
del _name, _fn, _like, _dtype_like
