"""Inference on one image with OpenMMLab's own inferencers, on an fla_mm config + checkpoint.

    python demo/inference.py IMAGE CONFIG CHECKPOINT [--out FILE] [--device cpu]

A segmentation config (default_scope 'mmseg') runs through mmseg's ``MMSegInferencer``, a
detection config ('mmdet') through mmdet's ``DetInferencer``. Prints what was predicted and
writes the overlay of the prediction on the image to ``--out``.
"""
import argparse
import os.path as osp
from collections import Counter

import numpy as np
from mmengine.config import Config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='an fla_mm config (segmentation or detection)')
    parser.add_argument('checkpoint', help='a checkpoint of that config (tools/train.py)')
    parser.add_argument('--out', help='overlay file to write (default: '
                        '<image name>_pred.png in the current directory)')
    parser.add_argument('--device', default=None,
                        help='e.g. cpu or cuda:0 (default: cuda:0 if available, else cpu)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: boxes kept and drawn above this score')
    return parser.parse_args(argv)


def segment(args):
    """Per-pixel classes; returns the overlay (RGB) and a summary of the classes' areas."""
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer(model=args.config, weights=args.checkpoint,
                                 device=args.device)
    result = inferencer(args.image, return_vis=True)
    classes = inferencer.model.dataset_meta['classes']
    labels = np.asarray(result['predictions']).ravel()
    share = Counter(labels.tolist())
    top = ', '.join(f'{classes[c]} {100 * n / labels.size:.1f}%'
                    for c, n in share.most_common(5))
    return result['visualization'], f'classes by area: {top}'   # one image: not a list


def detect(args):
    """Boxes / masks above --score-thr; returns the overlay (RGB) and a summary."""
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model=args.config, weights=args.checkpoint,
                               device=args.device)
    result = inferencer(args.image, return_vis=True, no_save_vis=True,
                        pred_score_thr=args.score_thr)
    classes = inferencer.model.dataset_meta['classes']
    pred = result['predictions'][0]
    kept = [(classes[label], score) for label, score in zip(pred['labels'], pred['scores'])
            if score >= args.score_thr]
    listed = ', '.join(f'{name} {score:.2f}' for name, score in kept[:5]) or 'none'
    return (result['visualization'][0],
            f'{len(kept)} detections with score >= {args.score_thr}: {listed}')


def main(argv=None):
    args = parse_args(argv)
    if args.device is None:
        import torch
        args.device = 'cuda:0' if torch.cuda.is_available() else 'cpu'
    scope = Config.fromfile(args.config).get('default_scope')
    runs = dict(mmseg=segment, mmdet=detect)
    if scope not in runs:
        raise SystemExit(f'{args.config}: default_scope {scope!r}; valid: mmseg, mmdet')
    overlay, summary = runs[scope](args)
    out = args.out or f'{osp.splitext(osp.basename(args.image))[0]}_pred.png'
    import mmcv
    mmcv.imwrite(overlay[..., ::-1], out)      # the inferencers draw RGB; imwrite takes BGR
    print(f'{args.image}: {summary}')
    print(f'overlay: {osp.abspath(out)}')
    return out, summary


if __name__ == '__main__':
    main()
