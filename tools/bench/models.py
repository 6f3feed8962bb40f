"""fla_mm's models as every level of the benchmark sees them: the backbone classes fla_mm
exports, the token-mixing stages of one (grids and first mixers, read off the model), and the
fused bi-scan config handed to the mixers of the families it computes."""
import torch
import torch.nn as nn

import fla_mm
from fla_mm import ops


def fla_backbones():
    """Backbone classes fla_mm exports (FLAPyramid, FLAPlain, ...)."""
    names = getattr(fla_mm, '__all__', dir(fla_mm))
    found = {}
    for n in names:
        obj = getattr(fla_mm, n, None)
        if (isinstance(obj, type) and issubclass(obj, nn.Module)
                and obj.__module__.startswith('fla_mm.backbones')):
            found[n] = obj
    return found


def backbone_stages(cls, arch, family, res, mixer_cfg=None):
    """The token-mixing stages of backbone ``cls`` (size ``arch``, mixers of ``family``) on a
    ``res`` x ``res`` image, each a dict: stage, stride, hw (token grid), L, mixer (its first
    block's TokenMixer: dim, num_heads, head_k_dim, head_v_dim, cfg).

    Read off the model the class builds from its own arch table, on the meta device (no
    memory, no init): FLAPyramid's stage i runs at stride ``patch_size * 2**i`` (the stem,
    then a stride-2 downsampling into each later stage), FLAPlain's blocks all at its
    ``patch_size``; grids round up as the layouts do (``out_hw``). Conv stages (RepMixer)
    have no mixer and are left out.
    """
    with torch.device('meta'):
        model = cls(arch=arch, mixer=family, scan='bi', mixer_cfg=mixer_cfg, drop_path_rate=0.0)
    if hasattr(model, 'stages'):
        blocks = [(i, model.patch_size * 2 ** i, st.blocks[0]) for i, st in enumerate(model.stages)]
    else:
        blocks = [(0, model.patch_size, model.blocks[0])]
    stages = []
    for i, stride, block in blocks:
        mixer = getattr(block, 'attn', None)
        if mixer is not None:
            hw = model.out_hw((res, res), stride)
            stages.append(dict(stage=i, stride=stride, hw=hw, L=hw[0] * hw[1], mixer=mixer))
    return stages


def with_bi_config(mixer_cfg, config):
    """Mixer options (None, a dict, or one dict per stage or block, as backbones take them)
    with ``bi_config`` set to ``config`` (a FusedBiConfig) in each; unchanged for None."""
    if config is None:
        return mixer_cfg
    if isinstance(mixer_cfg, (list, tuple)):
        return [dict(c or {}, bi_config=config.to_dict()) for c in mixer_cfg]
    return dict(mixer_cfg or {}, bi_config=config.to_dict())


def bi_config_for(family, config):
    """``config`` for a family whose bi-scan the fused kernel computes, else None."""
    families = [family] if isinstance(family, str) else list(family)
    return config if any(f in ops.BI_FUSED_FAMILIES for f in families) else None
