"""Family ops: FLA kernel on CUDA, chunked reference elsewhere. Layout [B, T, H, D].

Each op takes the inputs after the family's projections, feature maps and gate activations
(the mixer does those in PyTorch, identically on both backends) and runs only the
recurrence: FLA's ``chunk_*`` kernel where it has one, else the chunked reference of
:mod:`.reference`. Where FLA 0.6.0 cannot train a case (see :func:`triton_bwd_broken`,
fp32 delta rule) an op takes FLA's ``fused_recurrent_*`` form if that has a backward, or the
reference on the GPU, with a one-time warning. Every FLA call goes through
:func:`.fla_calls.call`: directly in eager, as one opaque custom op under ``torch.compile``
(FLA's own ops are compiler-disabled: a graph break per call).
"""
import functools
import os
import sys
import warnings

import torch
import torch.nn.functional as F

from .fla_calls import RWKV7_LOG_DECAY_MIN  # noqa: F401  (the mixers read it here)
from .fla_calls import call as _fla_call
from .fla_configs import use_shipped_configs
from .rotary import rotated_pairs
from .reference import (abc_slots, chunk_decay_attn_ref, chunk_delta_rule_ref, chunk_dplr_ref,
                        chunk_hgrn_ref, chunk_linear_ref, chunk_slot_attn_ref)


@torch.compiler.assume_constant_result
def fla_available():
    """FLA's kernels need a CUDA device and an importable fla + triton. A fact of the machine:
    ``torch.compile`` takes it as a constant instead of tracing the import."""
    return _fla_importable()


@functools.lru_cache(None)
def _fla_importable():
    if not torch.cuda.is_available():
        return False
    try:
        use_shipped_configs()     # before fla is imported: FLA reads its cache mode then
        import fla.ops  # noqa: F401
    except Exception:  # pragma: no cover - depends on the machine
        return False
    return True


BACKENDS = ('auto', 'reference')


def backend():
    """$FLA_MM_BACKEND: 'auto' (FLA kernels on CUDA) or 'reference' (PyTorch everywhere)."""
    value = os.environ.get('FLA_MM_BACKEND', 'auto')
    if value not in BACKENDS:
        raise ValueError(f'FLA_MM_BACKEND={value!r}; valid values: {", ".join(BACKENDS)}')
    return value


def _use_kernel(x):
    return x.is_cuda and backend() == 'auto' and fla_available()


class KernelError(RuntimeError):
    """An FLA kernel failed (compile, launch or an input it refuses); says how to fall back."""


def _fla_frame(tb):
    """Innermost FLA function in a traceback: the kernel entry that failed."""
    found = None
    while tb is not None:
        code = tb.tb_frame.f_code
        if f'{os.sep}fla{os.sep}ops{os.sep}' in code.co_filename:
            parts = code.co_filename.split(os.sep)
            found = f'{code.co_name} (fla/ops/{"/".join(parts[parts.index("ops") + 1:])})'
        tb = tb.tb_next
    return found


def _explain_errors(family, op):
    """Turn a failure inside FLA's kernels into one error naming the family, the kernel and
    the fallback, instead of a bare Triton traceback."""
    @functools.wraps(op)
    def wrapped(*args, **kwargs):
        if not _use_kernel(args[0]):
            return op(*args, **kwargs)
        try:
            return op(*args, **kwargs)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:
            kernel = _fla_frame(sys.exc_info()[2]) or f'fla.ops for {family}'
            device = torch.cuda.get_device_name(args[0].device) if args[0].is_cuda else 'CPU'
            raise KernelError(_kernel_error_message(family, kernel, device, e, args[0])) from e
    return wrapped


def _kernel_error_message(family, kernel, device, e, q):
    """One line: family, kernel, the error's first line, a known cause if any, the fallback."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ''
    causes = ' '.join(str(x) for x in (e, e.__cause__, e.__context__) if x is not None)
    hint = ''
    if 'K >= 16' in causes:     # Triton's tl.dot needs every dimension of a dot >= 16
        hint = (f' | Triton needs head dims (and abc/gsa slot counts) of at least 16; this '
                f"call's q is {tuple(q.shape)} [B, T, H, head dim]: raise the width, "
                f'lower num_heads or raise expand_k.')
    return (f'fla_mm: the FLA kernel for mixer family {family!r} failed on {device}: '
            f'{kernel}: {type(e).__name__}: {first}{hint}'
            f' | To go on, run the PyTorch reference on the GPU with FLA_MM_BACKEND=reference '
            f'(same math, slower), or pick another family or dtype.')


def _version_tuple(version):
    parts = []
    for p in version.split('+')[0].split('.')[:3]:
        digits = ''.join(c for c in p if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))


def triton_bwd_broken_for(triton_version, capability):
    """FLA 0.6.0 refuses the backward of chunk_simple_gla (with g) and chunk_gated_delta_rule
    on Hopper (sm_90) with 3.4 <= Triton < 3.7.1."""
    return capability[0] == 9 and (3, 4, 0) <= _version_tuple(triton_version) < (3, 7, 1)


@torch.compiler.assume_constant_result
def triton_bwd_broken(device_index=0):
    """:func:`triton_bwd_broken_for` this machine's Triton and GPU (a constant to
    ``torch.compile``)."""
    return _triton_bwd_broken(device_index)


@functools.lru_cache(None)
def _triton_bwd_broken(device_index):
    try:
        import triton
        return triton_bwd_broken_for(triton.__version__,
                                     torch.cuda.get_device_capability(device_index))
    except Exception:  # pragma: no cover - depends on the machine
        return False


@functools.lru_cache(None)
def _warn_once(message):
    warnings.warn(message)


@torch.compiler.assume_constant_result
def _warn(message):
    """:func:`_warn_once`, which ``torch.compile`` runs while tracing instead of tracing
    ``warnings.warn`` (a graph break)."""
    _warn_once(message)


def _needs_grad(*tensors):
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _chunk_bwd_refused(*tensors):
    """FLA would refuse this op's chunk backward here (see :func:`triton_bwd_broken`)."""
    return _needs_grad(*tensors) and triton_bwd_broken(tensors[0].device.index or 0)


def _needs_recurrent(name, *tensors):
    if not _chunk_bwd_refused(*tensors):
        return False
    _warn(f'fla_mm: FLA refuses the backward of chunk_{name} on Hopper with this Triton '
          f'(>= 3.4, < 3.7.1); using fused_recurrent_{name} instead (slower, same math).')
    return True


def gla(q, k, v, g, scale=None):
    """Gated linear attention, per-key-channel log decay ``g`` [B, T, H, K]."""
    if _use_kernel(q):
        return _fla_call('chunk_gla', (q, k, v, g), scale)
    return chunk_decay_attn_ref(q, k, v, g, scale)


def simple_gla(q, k, v, g, scale=None):
    """Scalar-decay linear attention (Mamba2/SSD form), log decay ``g`` [B, T, H]."""
    if _use_kernel(q):
        if _needs_recurrent('simple_gla', q, k, v, g):
            return _fla_call('fused_recurrent_simple_gla', (q, k, v, g), scale)
        return _fla_call('chunk_simple_gla', (q, k, v, g), scale)
    return chunk_decay_attn_ref(q, k, v, g, scale)


def retnet_decay(num_heads, device=None):
    """RetNet's fixed per-head log decay log(1 - 2^(-5 - h))."""
    h = torch.arange(num_heads, dtype=torch.float32, device=device)
    return torch.log1p(-torch.pow(2.0, -5.0 - h))


def retnet(q, k, v, scale=None):
    """Retention: simple_gla with a fixed per-head decay."""
    B, T, H, _ = q.shape
    if _use_kernel(q):
        return _fla_call('chunk_retention', (q, k, v), scale)
    g = retnet_decay(H, q.device).expand(B, T, H)
    return chunk_decay_attn_ref(q, k, v, g, scale)


BI_KERNELS = ('fused', 'two_call')
# families whose bi-scan the fused kernel computes (through bi_decay_attn)
BI_FUSED_FAMILIES = ('gla', 'retnet', 'simple_gla')


def bi_decay_attn(q, k, v, gf, gb=None, scale=None, kernel='fused', stacked=False, config=None,
                  qb=None, kb=None, rotary_base=None):
    """Both scans of decayed linear attention (simple_gla / RetNet / GLA), merged.

    o = fwd_scan(x) + flip(fwd_scan(flip(x))) with log decays ``gf`` / ``gb`` (fp32; [B, T, H]
    scalar per head, or [B, T, H, K] per key channel as GLA; ``gb=None``: the same gates both
    ways; ``stacked=True``: ``gf`` holds both, [B, T, 2, H(, K)], forward first, and the fused
    kernel reads them in place), in the original token order. ``qb`` / ``kb``: the backward
    scan's own queries / keys, in the original token order (rotary embeddings at the reversed
    sequence's positions); None: q / k. ``rotary_base``: rotate q, k (:func:`.rotary.rotary`)
    at the positions along each scanned sequence, which the fused kernels do on their tiles
    where they can (RetNet's case), instead of qb, kb. On CUDA ``kernel='fused'`` runs
    :mod:`.fused_bi` (one kernel for both directions, forward and backward) in the variant
    ``config`` names (a ``fused_bi.FusedBiConfig``, a dict of its fields, or None for the
    default); 'two_call' and the CPU run the one-direction op on [x, flip(x)] batched, as the
    other scans do, and check ``config`` without using it. Same function either way.
    """
    if kernel not in BI_KERNELS:
        raise ValueError(f'Unknown bi-scan kernel {kernel!r}; valid: {", ".join(BI_KERNELS)}')
    if config is not None:        # a bad key fails on every path, not only on the GPU
        from .fused_bi import FusedBiConfig
        config = FusedBiConfig.coerce(config)
    if kernel == 'fused' and _use_kernel(q):
        from .fused_bi import fused_bi_decay_attn
        return fused_bi_decay_attn(q, k, v, gf, gb, scale=scale, stacked=stacked,
                                   config=config, qb=qb, kb=kb, rotary_base=rotary_base)
    if rotary_base is not None:
        q, k, qb, kb = rotated_pairs(q, k, qb, kb, rotary_base)
    if stacked:
        gf, gb = gf[:, :, 0], gf[:, :, 1]
    gb = gf if gb is None else gb
    cat = (lambda a, b=None: torch.cat([a, (a if b is None else b).flip(1)], 0))
    op = gla if gf.dim() == 4 else simple_gla
    o = op(cat(q, qb), cat(k, kb), cat(v), cat(gf, gb), scale=scale)
    o_f, o_b = o.chunk(2, 0)
    return o_f + o_b.flip(1)


def linear_attn(q, k, v, scale=None):
    """Linear attention without decay or normaliser."""
    if _use_kernel(q):
        return _fla_call('chunk_linear_attn', (q, k, v), scale)
    return chunk_decay_attn_ref(q, k, v, None, scale)


def softmax_attn(q, k, v, scale=None, causal=False):
    """Softmax attention through SDPA (FlashAttention / cuDNN on GPU): the baseline family."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       scale=scale, is_causal=causal)
    return o.transpose(1, 2)


def l2norm(x, eps=1e-6):
    """x / sqrt(sum x^2 + eps): what FLA's ``use_qk_l2norm_in_kernel`` applies."""
    return (x.float() * torch.rsqrt(x.float().pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)


def delta_rule(q, k, v, beta, scale=None, qk_l2norm=True):
    """DeltaNet: S_t = (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T, ``beta`` [B, T, H]."""
    if _use_kernel(q) and q.dtype != torch.float32:
        return _fla_call('chunk_delta_rule', (q, k, v, beta), scale, qk_l2norm)
    if _use_kernel(q):
        _warn('fla_mm: FLA 0.6.0\'s chunk_delta_rule refuses float32 inputs; delta_net runs '
              'the PyTorch chunked reference on the GPU in float32 (use bf16/fp16 autocast '
              'for the Triton kernel).')
    if qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    return chunk_delta_rule_ref(q, k, v, beta, None, scale)


def gated_delta_rule(q, k, v, g, beta, scale=None, qk_l2norm=True):
    """Gated DeltaNet: the delta rule with a scalar log decay ``g`` [B, T, H] (fp32)."""
    if _use_kernel(q):
        if not _chunk_bwd_refused(q, k, v, g, beta):
            return _fla_call('chunk_gated_delta_rule', (q, k, v, g, beta), scale, qk_l2norm)
        # FLA 0.6.0's fused_recurrent_gated_delta_rule has no backward, so it cannot stand in
        _warn('fla_mm: FLA refuses the backward of chunk_gated_delta_rule on Hopper with '
              'Triton >= 3.4, < 3.7.1 and its fused_recurrent form has no backward; '
              'gated_delta_net trains through the PyTorch chunked reference on the GPU '
              '(slower, same math). Install Triton >= 3.7.1 for the kernel.')
    if qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    return chunk_delta_rule_ref(q, k, v, beta, g, scale)


def hgrn(x, g):
    """HGRN: element-wise h_t = exp(g_t) h_{t-1} + x_t over [B, T, D]."""
    if _use_kernel(x):
        return _fla_call('chunk_hgrn', (x, g))
    return chunk_hgrn_ref(x, g)


def rwkv6(r, k, v, w, u, scale=1.0):
    """RWKV6: GLA over s < t with the current token through the bonus ``u`` [H, K]."""
    if _use_kernel(r):
        return _fla_call('chunk_rwkv6', (r, k, v, w, u), scale)
    return chunk_linear_ref(r, k, v, gk=w, scale=scale, bonus=u)


def rwkv7(r, w, k, v, a, b, scale=1.0):
    """RWKV7: S_t = diag(exp w_t) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T, o_t = S_t^T r_t.

    ``w`` must lie in [RWKV7_LOG_DECAY_MIN, 0), as RWKV7Attention makes it; the kernel gets
    the same ``safe_gate`` / ``lower_bound`` / ``chunk_size`` hints as that layer passes.
    """
    if _use_kernel(r):
        return _fla_call('chunk_rwkv7', (r, w, k, v, a, b), scale)
    return chunk_dplr_ref(r, k, v, a, b, w, scale)


def gsa(q, k, v, s, g, scale=1.0):
    """Gated slot attention: two GLA passes through M slots (``s``, ``g`` [B, T, H, M])."""
    if _use_kernel(q):
        return _fla_call('chunk_gsa', (q, k, v, s, g), scale)
    return chunk_slot_attn_ref(q, k, v, s, g, scale)


def abc(q, k, v, s):
    """ABC: slot attention whose slot writes and decays are a running softmax of ``s``."""
    if _use_kernel(q):
        return _fla_call('chunk_abc', (q, k, v, s))
    s_w, g = abc_slots(s)
    return chunk_slot_attn_ref(q, k, v, s_w, g)


(abc, bi_decay_attn, delta_rule, gated_delta_rule, gla, gsa, hgrn, linear_attn, retnet, rwkv6,
 rwkv7, simple_gla) = (_explain_errors(name, fn) for name, fn in (
        ('abc', abc), ('simple_gla/retnet/gla (fused bi-scan)', bi_decay_attn),
        ('delta_net', delta_rule), ('gated_delta_net', gated_delta_rule),
        ('gla', gla), ('gsa', gsa), ('hgrn', hgrn), ('linear_attn', linear_attn),
        ('retnet', retnet), ('rwkv6', rwkv6), ('rwkv7', rwkv7), ('simple_gla', simple_gla)))

OPS = dict(abc=abc, bitnet=softmax_attn, delta_net=delta_rule, gated_delta_net=gated_delta_rule,
           gla=gla, gsa=gsa, hgrn=hgrn, hgrn2=gla, linear_attn=linear_attn, retnet=retnet,
           rwkv6=rwkv6, rwkv7=rwkv7, simple_gla=simple_gla, transformer=softmax_attn)
