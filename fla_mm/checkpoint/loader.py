"""Load a pretrained checkpoint into a backbone, strictly and loudly."""
import os

import torch
from mmengine.runner.checkpoint import CheckpointLoader


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded as asked; the message says why and what to do."""


def _read(path):
    if not str(path).startswith(('http://', 'https://')) and not os.path.isfile(path):
        raise CheckpointError(f'Checkpoint file not found: {path}')
    if str(path).endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path)
    try:
        return CheckpointLoader.load_checkpoint(path, map_location='cpu')
    except Exception as e:  # corrupt or truncated file
        raise CheckpointError(f'Cannot read checkpoint {path}: {type(e).__name__}: {e}') from None


def extract_state_dict(ckpt):
    for key in ('state_dict', 'model', 'module'):
        if isinstance(ckpt, dict) and key in ckpt and isinstance(ckpt[key], dict):
            return ckpt[key]
    return ckpt


def load_pretrained(model, checkpoint, prefix=None, strict=True, map_location='cpu'):
    """Load ``checkpoint`` (optionally the keys under ``prefix``) into ``model``.

    With ``strict=True`` any missing or unexpected key is an error that lists them.
    """
    state = extract_state_dict(_read(checkpoint))
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if strict and (missing or unexpected or shape):
        def fmt(keys):
            return ', '.join(keys[:20]) + (f' ... ({len(keys)} in all)' if len(keys) > 20 else '')
        raise CheckpointError(
            f'Checkpoint {checkpoint} does not match {type(model).__name__} '
            f'(format: fla_mm state_dict, prefix={prefix!r}). '
            f'missing keys: [{fmt(missing)}]; unexpected keys: [{fmt(unexpected)}]; '
            f'shape mismatches: [{fmt(shape)}]. '
            f'Pass strict=False in init_cfg to load the matching keys only.')
    state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(state, strict=False)
    return dict(loaded=len(state), missing=missing, unexpected=unexpected)
