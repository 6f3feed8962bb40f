"""The two layouts, and :func:`build_backbone`, which builds one from a config dict."""
from .plain import FLAPlain
from .pyramid import FLAPyramid

BACKBONES = {'FLAPlain': FLAPlain, 'FLAPyramid': FLAPyramid}


def build_backbone(cfg):
    """An fla_mm backbone from a dict with ``type`` ('FLAPlain', the default, or
    'FLAPyramid'; an 'mmseg.' / 'mmdet.' scope is allowed) and its arguments, as a config's
    ``model.backbone`` or ``tools/convert_checkpoint.py``'s ``--arch`` gives it. ``init_cfg``
    is left out (the caller loads weights itself); JSON lists become the tuples the index
    arguments take."""
    cfg = dict(cfg)
    kind = str(cfg.pop('type', 'FLAPlain')).split('.')[-1]
    if kind not in BACKBONES:
        raise ValueError(f'backbone type {kind!r}; valid: {", ".join(BACKBONES)}')
    cfg.pop('init_cfg', None)
    for k in ('out_indices', 'out_scales'):
        if isinstance(cfg.get(k), list):
            cfg[k] = tuple(cfg[k])
    return BACKBONES[kind](**cfg)


__all__ = ['BACKBONES', 'FLAPlain', 'FLAPyramid', 'build_backbone']
