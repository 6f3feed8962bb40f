"""Parameter count and FLOPs of every named size of both layouts.

    python tools/model_stats.py        # pyramid + plain, tiny/small/base, at 224 and 512
    python tools/model_stats.py --layouts pyramid --sizes tiny --res 512 --mixer gla --scan bi

FLOPs follow mmengine.analysis (fvcore convention: one multiply-accumulate = 1 FLOP). The jit
tracer counts convs, linears, matmuls and norms but cannot see inside the token mixers' ops
(FLA Triton kernels on GPU, a chunked reference on CPU), so each mixer op is replaced by a
pass-through while tracing and its cost is added analytically:
  linear-attention families (causal, FLA chunk form, chunk C=64), per direction and head:
      T * (C * (K + V) + 2 * K * V)      (intra-chunk q.k and a.v, inter-chunk q.S and S update)
      (the GLA form is used for every causal family; delta-rule / RWKV7 extras are not added;
      HGRN, element-wise, counts 2 per channel and token)
  softmax attention ('transformer'), per head:  T * T * (K + V)
Elementwise work (activations, gates, decays, scan flips) is not counted.
"""
import argparse
import contextlib
import json
import logging
import os.path as osp
import sys
from unittest import mock

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))   # run from a checkout

CHUNK = 64


def _mixer_macs(causal, q, out):
    """Analytic MACs of one op call from its first input [B, T, H, K] and output [B, T, H, V]."""
    if q.dim() == 3:                                   # element-wise recurrence (HGRN)
        return 2 * q.numel()
    B, T, H, K = q.shape
    V = out.shape[-1]
    if not causal:
        return B * H * T * T * (K + V)
    return B * H * T * (CHUNK * (K + V) + 2 * K * V)


def _depend(out, inputs):
    """``out`` made to depend on every input tensor (adding zero): otherwise the tracer drops,
    and does not count, the projections that feed only the replaced op."""
    return out + 0 * sum(t.sum() for t in inputs if torch.is_tensor(t)).to(out.dtype)


@contextlib.contextmanager
def analytic_mixer_ops():
    """Swap every family's op, and the fused bi-scan op, for a stand-in that records its
    analytic MACs.

    The stand-in learns the output shape by running the real op on the first 64 tokens
    (once per family and shape, outside the traced pass) and returns zeros of that shape.
    """
    from fla_mm import ops
    from fla_mm.layers.mixer import MIXERS
    record = dict(macs=0, calls=0)
    shapes = {}

    def stand_in(name, real, causal_default):
        def op(*args, **kwargs):
            q = args[0]
            T = q.shape[1]
            # plain ints: under the tracer sizes are traced values, which would miss the
            # key learnt in the untraced pass and run (and count) the real op again
            key = (name, tuple(tuple(map(int, a.shape)) for a in args if torch.is_tensor(a)),
                   tuple(sorted((k, str(v)) for k, v in kwargs.items())))
            if key not in shapes:
                short = [a[:, :min(T, 64)] if torch.is_tensor(a) and a.dim() >= 2
                         and a.shape[1] == T else a for a in args]
                out = real(*short, **kwargs)
                out = out[0] if isinstance(out, (tuple, list)) else out
                shapes[key] = (out.shape[0], T) + tuple(out.shape[2:])
            out = _depend(q.new_zeros(shapes[key]), args)
            record['macs'] += _mixer_macs(kwargs.get('causal', causal_default), q, out)
            record['calls'] += 1
            return out
        return op

    def bi_stand_in(q, k, v, *args, **kwargs):
        """ops.bi_decay_attn (fused bi-scans): two causal scans, one per direction."""
        out = _depend(v.new_zeros(*q.shape[:3], v.shape[-1]), (q, k, v, *args))
        record['macs'] += 2 * _mixer_macs(True, q, out)
        record['calls'] += 1
        return out

    with contextlib.ExitStack() as stack:
        for name, cls in MIXERS.items():
            stand = staticmethod(stand_in(name, cls.op, cls.causal))
            stack.enter_context(mock.patch.object(cls, 'op', stand))
        stack.enter_context(mock.patch.object(ops, 'bi_decay_attn', bi_stand_in))
        yield record


def build(layout, size, mixer, scan):
    from fla_mm.backbones import FLAPlain, FLAPyramid
    cls = dict(pyramid=FLAPyramid, plain=FLAPlain)[layout]
    return cls(arch=size, mixer=mixer, scan=scan, drop_path_rate=0.0).eval()


def measure(layout, size, res, mixer='gla', scan='bi'):
    from mmengine.analysis import get_model_complexity_info
    model = build(layout, size, mixer, scan)
    x = torch.randn(1, 3, res, res)
    with analytic_mixer_ops() as record, torch.no_grad():
        record['macs'] = record['calls'] = 0
        model(x)                           # one untraced pass to count the mixer ops once
        mixer_macs, calls = record['macs'], record['calls']
        info = get_model_complexity_info(model, inputs=(x,), show_table=False, show_arch=False)
    params = sum(p.numel() for p in model.parameters())
    num_mixers = sum(1 for m in model.modules() if hasattr(m, 'family'))
    return dict(layout=layout, size=size, res=res, mixer=mixer, scan=scan, params=params,
                traced_flops=int(info['flops']), mixer_op_flops=int(mixer_macs),
                flops=int(info['flops']) + int(mixer_macs),
                mixer_ops_counted=calls >= num_mixers)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--layouts', nargs='+', default=['pyramid', 'plain'],
                        choices=['pyramid', 'plain'])
    parser.add_argument('--sizes', nargs='+', default=['tiny', 'small', 'base'])
    parser.add_argument('--res', nargs='+', type=int, default=[224, 512])
    parser.add_argument('--mixer', default='gla')
    parser.add_argument('--scan', default='bi')
    parser.add_argument('--json', help='also write the rows to this file')
    args = parser.parse_args(argv)
    logging.getLogger('mmengine').setLevel(logging.ERROR)   # tracer's unsupported-op notes
    from mmengine.logging import MMLogger
    MMLogger.get_current_instance().setLevel(logging.ERROR)

    print(__doc__.split('\n\n', 2)[2].strip())
    print()
    header = (f'{"layout":8} {"size":6} {"res":>5} {"params(M)":>10} {"traced GFLOPs":>14} '
              f'{"mixer-op GFLOPs":>16} {"total GFLOPs":>13}')
    print(f'mixer={args.mixer} scan={args.scan}')
    print(header)
    print('-' * len(header))
    rows = []
    for layout in args.layouts:
        for size in args.sizes:
            for res in args.res:
                r = measure(layout, size, res, args.mixer, args.scan)
                rows.append(r)
                note = '' if r['mixer_ops_counted'] else '  (mixer ops NOT all counted)'
                print(f'{layout:8} {size:6} {res:>5} {r["params"] / 1e6:>10.2f} '
                      f'{r["traced_flops"] / 1e9:>14.2f} {r["mixer_op_flops"] / 1e9:>16.2f} '
                      f'{r["flops"] / 1e9:>13.2f}{note}', flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == '__main__':
    sys.exit(0 if main() else 1)
