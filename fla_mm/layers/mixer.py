"""Token mixers: scan -> FLA op -> merge, one table entry per family.

A family is a row of :data:`FAMILIES` (its op, the decay gate it needs, its defaults), not a
class. Parameter names follow ``fla.layers`` (q_proj, k_proj, v_proj, gk_proj, g_proj,
o_proj, g_norm) so FLA-based checkpoints map with few renames.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from .scan import merge, num_directions, scan

# gate: 'key' = per-key-channel log decay (low-rank gk_proj), 'head' = one scalar per head,
# None = no data-dependent decay. causal: False for softmax attention, which needs no scan.
FAMILIES = {
    'gla': dict(op=ops.gla, gate='key', expand_k=0.5, output_gate=True, causal=True),
    'simple_gla': dict(op=ops.simple_gla, gate='head', expand_k=1.0, output_gate=True, causal=True),
    'retnet': dict(op=ops.retnet, gate=None, expand_k=1.0, output_gate=True, causal=True),
    'linear_attn': dict(op=ops.linear_attn, gate=None, expand_k=1.0, output_gate=False,
                        causal=True),
    'transformer': dict(op=ops.softmax_attn, gate=None, expand_k=1.0, output_gate=False,
                        causal=False),
}


def check_family(name):
    if name not in FAMILIES:
        raise ValueError(f'Unknown mixer family {name!r}; valid families: '
                         f'{", ".join(sorted(FAMILIES))}')
    return FAMILIES[name]


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension (what fla.modules.RMSNorm computes)."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(dtype)


class TokenMixer(nn.Module):
    """Mixes the tokens of a 2-D grid with one linear-attention family and one scan order.

    Args:
        dim: channels C of the tokens [B, L, C].
        num_heads: attention heads.
        family: a key of :data:`FAMILIES`.
        scan: 'uni', 'bi', 'cross' or 'random' (ignored by non-causal families).
        expand_k, expand_v: key / value width as a multiple of ``dim`` (family default if None).
        direction_gates: ViG-style gating: one projection set, a separate decay gate per
            scan direction.
        gate_low_rank_dim, gate_logit_normalizer: as in ``fla.layers.GatedLinearAttention``.
    """

    def __init__(self, dim, num_heads, family='gla', scan='bi', expand_k=None, expand_v=1.0,
                 direction_gates=False, gate_low_rank_dim=16, gate_logit_normalizer=16):
        super().__init__()
        spec = check_family(family)
        num_directions(scan)
        self.family, self.spec = family, spec
        self.scan = scan if spec['causal'] else 'uni'
        self.num_heads = num_heads
        expand_k = spec['expand_k'] if expand_k is None else expand_k
        key_dim, value_dim = int(dim * expand_k), int(dim * expand_v)
        if key_dim % num_heads or value_dim % num_heads:
            raise ValueError(f'dim*expand_k={key_dim} and dim*expand_v={value_dim} must be '
                             f'divisible by num_heads={num_heads}')
        self.key_dim, self.value_dim = key_dim, value_dim
        self.gate_logit_normalizer = gate_logit_normalizer
        self.num_gates = num_directions(self.scan) if direction_gates else 1
        self.q_proj = nn.Linear(dim, key_dim, bias=not spec['causal'])
        self.k_proj = nn.Linear(dim, key_dim, bias=not spec['causal'])
        self.v_proj = nn.Linear(dim, value_dim, bias=not spec['causal'])
        if spec['gate'] == 'key':
            self.gk_proj = nn.Sequential(nn.Linear(dim, gate_low_rank_dim, bias=False),
                                         nn.Linear(gate_low_rank_dim, key_dim * self.num_gates))
        elif spec['gate'] == 'head':
            self.gk_proj = nn.Linear(dim, num_heads * self.num_gates)
        if spec['output_gate']:
            self.g_proj = nn.Linear(dim, value_dim, bias=False)
            self.g_norm = RMSNorm(value_dim // num_heads)
        self.o_proj = nn.Linear(value_dim, dim, bias=not spec['causal'])

    def _gate(self, x):
        """Log decay [D*B, L, H(, K)], one gate per direction when direction_gates."""
        B, L, _ = x.shape
        gk = F.logsigmoid(self.gk_proj(x).float()) / self.gate_logit_normalizer
        per_dir = gk.shape[-1] // self.num_gates
        gk = gk.reshape(B, L, self.num_gates, per_dir)
        if self.num_gates > 1:      # direction d's gate travels with scan direction d
            dirs = [scan(gk[:, :, d], self._hw, self.scan, self._perm).chunk(self.num_gates, 0)[d]
                    for d in range(self.num_gates)]
            gk = torch.cat(dirs, 0)
        else:
            gk = scan(gk[:, :, 0], self._hw, self.scan, self._perm)
        if self.spec['gate'] == 'key':
            return gk.reshape(gk.shape[0], L, self.num_heads, -1)
        return gk

    def forward(self, x, hw):
        B, L, _ = x.shape
        H = self.num_heads
        self._hw = hw
        self._perm = (torch.randperm(L, device=x.device)
                      if self.scan == 'random' and self.training else None)
        q, k, v = (scan(p(x).reshape(B, L, H, -1), hw, self.scan, self._perm)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        args = (q, k, v)
        if self.spec['gate'] is not None:
            args = args + (self._gate(x),)     # decay stays fp32 under autocast
        o = merge(self.spec['op'](*args), hw, self.scan, self._perm)
        if self.spec['output_gate']:
            o = self.g_norm(o) * F.silu(self.g_proj(x).reshape(B, L, H, -1))
        return self.o_proj(o.reshape(B, L, -1))
