"""Export a segmentor or detector to ONNX (or torch.export) and check it against PyTorch.

    python tools/export.py CONFIG CHECKPOINT --shape H W [--format onnx|torch_export]
        [--out FILE] [--cfg-options k=v ...] [--tolerance 1e-4] [--time N]

CHECKPOINT ``none`` keeps the initial weights (``init_weights``), to try the export before
training. Every mixer runs its pure-PyTorch chunked reference (``FLA_MM_BACKEND=reference``):
no Triton kernel reaches the graph. The reference loops over chunks of tokens, a number fixed
by the image size, so the loops unroll and each file takes one input shape, [1, 3, H, W]: the
image as the model's ``data_preprocessor`` hands it to the network (RGB, normalised).

What is exported:
- mmseg (EncoderDecoder): ``encode_decode`` with a fixed ``img_metas``, i.e. backbone,
  decode head and the resize to the input size: logits [1, num_classes, H, W].
- mmdet (two-stage, e.g. Mask R-CNN): backbone + neck (the FPN maps) and the RPN head's raw
  objectness and box-delta maps per level. The RoI heads are not: their input is the NMS of
  the proposals (a data-dependent number of boxes) and RoIAlign is an mmcv C++ op.

ONNX goes through ``torch.onnx.export(dynamo=True)``; if that fails, the TorchScript
exporter is tried, and the tool says which one wrote the file. ONNX has no triangular solve:
the delta-rule and RWKV7 references' solves are rewritten as block inverses (matmuls) first
(:func:`solve_triangular_by_blocks`). The check runs the written
file (ONNX Runtime on CPU; for torch_export the reloaded program) on a random image and on
one generated toy image (:mod:`fla_mm.toy_data`), prints the max absolute and the max
relative difference to the PyTorch model (relative: to the largest |output| of that input),
and exits non-zero above ``--tolerance``.
"""
import argparse
import logging
import os
import os.path as osp
import sys
import tempfile
import time
from unittest import mock

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))   # run from a checkout

FORMATS = ('onnx', 'torch_export')


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('checkpoint', help="checkpoint file, or 'none' for the initial weights")
    p.add_argument('--shape', type=int, nargs=2, required=True, metavar=('H', 'W'),
                   help='the one input size the file takes')
    p.add_argument('--format', choices=FORMATS, default='onnx')
    p.add_argument('--out', help='output file (default: work_dirs/export/<config>.onnx|.pt2)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config entries, e.g. model.backbone.scan=uni')
    p.add_argument('--tolerance', type=float, default=1e-4,
                   help='largest max relative difference that passes (fp32 logits: 1e-4)')
    p.add_argument('--time', type=int, default=0, metavar='N',
                   help='also time N runs of the exported file (after one warm-up)')
    return p.parse_args(argv)


def build_model(cfg, checkpoint):
    """The config's model on CPU in eval mode, SyncBN reverted to BN, weights from
    ``checkpoint`` (``'none'``: the initial weights), built by mmseg's / mmdet's own
    ``init_model``."""
    from mmengine.logging import MMLogger
    from mmengine.model import revert_sync_batchnorm
    scope = cfg.get('default_scope')
    if scope == 'mmseg':
        from mmseg.apis import init_model
    elif scope == 'mmdet':
        from mmdet.apis import init_detector as init_model
    else:
        raise SystemExit(f'export: default_scope {scope!r} is not supported (mmseg, mmdet)')
    none = checkpoint.lower() == 'none'
    if not none and not osp.isfile(checkpoint):
        raise SystemExit(f'Checkpoint not found: {checkpoint}')
    model = init_model(cfg, None if none else checkpoint, device='cpu')
    if none:
        logger = MMLogger.get_current_instance()
        level = logger.level
        logger.setLevel(logging.WARNING)      # init_weights logs every parameter at INFO
        try:
            model.init_weights()
        finally:
            logger.setLevel(level)
    return revert_sync_batchnorm(model).eval()


class SegmentorLogits(nn.Module):
    """EncoderDecoder.encode_decode at one size: image -> logits at the input size."""

    def __init__(self, model, hw):
        super().__init__()
        self.model = model
        self.metas = [dict(img_shape=hw, ori_shape=hw, pad_shape=hw)]

    def forward(self, x):
        return self.model.encode_decode(x, self.metas)

    def output_names(self, n):
        return ['logits']


class DetectorMaps(nn.Module):
    """Backbone + neck maps, then the RPN head's objectness and box deltas per level."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        feats = self.model.extract_feat(x)
        if not self.model.with_rpn:
            return tuple(feats)
        scores, deltas = self.model.rpn_head(feats)
        return (*feats, *scores, *deltas)

    def output_names(self, n):
        if not self.model.with_rpn:
            return [f'neck_{i}' for i in range(n)]
        return [f'{what}_{i}' for what in ('neck', 'rpn_cls', 'rpn_reg') for i in range(n // 3)]


def network(model, hw):
    """The tensor forward to export, in eval mode."""
    if hasattr(model, 'encode_decode'):
        return SegmentorLogits(model, hw).eval()
    if hasattr(model, 'extract_feat'):
        return DetectorMaps(model).eval()
    raise SystemExit(f'export: {type(model).__name__} has neither encode_decode (mmseg) nor '
                     f'extract_feat (mmdet)')


def solve_triangular_by_blocks(A, B, *, upper, left=True, unitriangular=False):
    """``torch.linalg.solve_triangular`` in matmuls: ONNX has no triangular solve (the
    delta-rule and RWKV7 references use one per chunk).

    The inverse of the lower triangle comes from the inverses of its diagonal blocks,
    doubling their size log2(n) times: inv_2b = inv_b - inv_b @ off_2b @ inv_b, where
    off_2b is the part of A inside the diagonal 2b-blocks and outside the b-blocks.
    """
    if not left:                        # X A = B  <=>  A^T X^T = B^T
        return solve_triangular_by_blocks(A.mT, B.mT, upper=not upper,
                                          unitriangular=unitriangular).mT
    if upper:                           # reversing rows and columns makes it lower
        return solve_triangular_by_blocks(A.flip(-2, -1), B.flip(-2), upper=False,
                                          unitriangular=unitriangular).flip(-2)
    n = A.shape[-1]
    idx = torch.arange(n, device=A.device)
    lower = A.tril(-1)
    inv = torch.eye(n, dtype=A.dtype, device=A.device)
    if not unitriangular:
        inv = inv / A.diagonal(dim1=-2, dim2=-1).unsqueeze(-1)
    b = 1
    while b < n:
        inside = (idx[:, None] // (2 * b) == idx[None, :] // (2 * b))
        outside = (idx[:, None] // b != idx[None, :] // b)
        inv = inv - inv @ (lower * (inside & outside).to(A.dtype)) @ inv
        b *= 2
    return inv @ B


def onnx_decompositions():
    """Ops that ONNX has no operator for, written in ops that it has."""
    return {torch.ops.aten.linalg_solve_triangular.default: solve_triangular_by_blocks}


def export(module, x, out, fmt, names):
    """Write ``module`` traced at ``x`` to ``out``; returns the exporter's name."""
    if fmt == 'torch_export':
        torch.export.save(torch.export.export(module, (x,)), out)
        return 'torch.export.export'
    try:
        program = torch.export.export(module, (x,)).run_decompositions(onnx_decompositions())
        torch.onnx.export(program, (x,), out, dynamo=True, input_names=['image'],
                          output_names=names, external_data=False)
        return 'torch.onnx.export(dynamo=True)'
    except Exception as e:  # noqa: BLE001 - any exporter failure: say it, try the other
        first = (str(e).strip().splitlines() or [''])[0][:300]
        print(f'export: the dynamo-based ONNX exporter failed ({type(e).__name__}: {first}); '
              f'trying the TorchScript exporter', flush=True)
    torch.onnx.export(module, (x,), out, dynamo=False, input_names=['image'],
                      output_names=names, opset_version=17)
    return 'torch.onnx.export(dynamo=False) (TorchScript)'


def runner(out, fmt):
    """A function image [1, 3, H, W] (numpy float32) -> list of numpy outputs, running the
    written file: ONNX Runtime on CPU, or the reloaded exported program."""
    if fmt == 'onnx':
        import onnxruntime as ort
        session = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})
    program = torch.export.load(out).module()

    def run(x):
        with torch.no_grad():
            return [t.numpy() for t in _flat(program(torch.from_numpy(x)))]
    return run


def _flat(outputs):
    return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)


def toy_image(model, scope, hw):
    """One generated toy image of the config's task (ADE20K or COCO scene) at ``hw``, through
    the model's own data_preprocessor (BGR -> RGB, mean / std)."""
    import cv2

    from fla_mm.toy_data import make_ade20k, make_coco
    with tempfile.TemporaryDirectory() as root:
        make = make_ade20k if scope == 'mmseg' else make_coco
        make(root, num_train=1, num_val=0, size=hw, seed=0)
        path = next(osp.join(d, f) for d, _, files in os.walk(root) for f in files
                    if f.endswith('.jpg'))
        img = cv2.imread(path)
    data = dict(inputs=[torch.from_numpy(img).permute(2, 0, 1).contiguous()], data_samples=None)
    with torch.no_grad():
        return model.data_preprocessor(data, False)['inputs'].float()


def compare(reference, outputs):
    """Max |a - b| over all outputs, and that over the largest |reference| (the relative
    difference, to the scale of the outputs rather than per element)."""
    diff = max(float(np.abs(r - o).max()) for r, o in zip(reference, outputs))
    scale = max(float(np.abs(r).max()) for r in reference)
    return diff, diff / max(scale, 1e-12)


def main(argv=None):
    args = parse_args(argv)
    # the reference path for this export only: a caller's process (a test, a notebook) keeps
    # its own backend afterwards
    with mock.patch.dict(os.environ, FLA_MM_BACKEND='reference'):
        return _export_and_check(args)


def _export_and_check(args):
    torch.manual_seed(0)                  # 'none': the same initial weights every run
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    hw = tuple(args.shape)
    model = build_model(cfg, args.checkpoint)
    module = network(model, hw)
    ext = dict(onnx='.onnx', torch_export='.pt2')[args.format]
    out = args.out or osp.join('work_dirs', 'export',
                               osp.splitext(osp.basename(args.config))[0] + ext)
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)

    x = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        names = module.output_names(len(_flat(module(x))))
        start = time.perf_counter()
        how = export(module, x, out, args.format, names)
    print(f'exported {type(model).__name__} ({", ".join(names)}) at {hw[0]}x{hw[1]} with {how} '
          f'in {time.perf_counter() - start:.1f} s: {out} ({osp.getsize(out) / 2**20:.1f} MiB)',
          flush=True)

    run = runner(out, args.format)
    worst = 0.0
    for what, image in (('random image', x), ('toy image', toy_image(model, cfg.default_scope, hw))):
        with torch.no_grad():
            reference = [t.numpy() for t in _flat(module(image))]
        diff, rel = compare(reference, run(image.numpy()))
        worst = max(worst, rel)
        print(f'{what}: max abs diff {diff:.3g}, max rel diff {rel:.3g} '
              f'(largest |output| {max(float(np.abs(r).max()) for r in reference):.3g})')
    if args.time:
        image = x.numpy()
        run(image)
        times = []
        for _ in range(args.time):
            t = time.perf_counter()
            run(image)
            times.append(time.perf_counter() - t)
        print(f'{args.format} file on CPU ({os.cpu_count()} cores): median '
              f'{1e3 * float(np.median(times)):.1f} ms over {args.time} runs at {hw[0]}x{hw[1]}')
    ok = worst <= args.tolerance
    print(f'check {"passed" if ok else "FAILED"}: max rel diff {worst:.3g} '
          f'{"<=" if ok else ">"} tolerance {args.tolerance:g}')
    if not ok:
        sys.exit(1)
    return dict(out=out, exporter=how, max_rel_diff=worst)


if __name__ == '__main__':
    main()
