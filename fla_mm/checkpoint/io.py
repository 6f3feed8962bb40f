"""Read a checkpoint file (or a Hugging Face model folder) into a flat state dict.

Every failure (missing path, corrupt or truncated file, a pickle that is not a checkpoint)
becomes one :class:`CheckpointError` line that names the file, never a torch traceback.
"""
import json
import os
import os.path as osp
import pickle
import re
from typing import NamedTuple


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded as asked; the message says why and what to do."""


HF_WEIGHTS = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin',
              'pytorch_model.bin.index.json')
STATE_KEYS = ('state_dict', 'model', 'module')
# what torch's weights-only unpickler (and safe_globals' getattr) say when they refuse an object
REFUSALS = ('Unsupported global', 'calls getattr', 'Trying to call reduce',
            'Can only create new object', 'Can only build')


def _is_url(path):
    return str(path).startswith(('http://', 'https://', 'open-mmlab://', 'torchvision://',
                                 'openmmlab://', 's3://'))


def _torch_load(path, map_location='cpu'):
    """``torch.load`` with ``weights_only=True`` always: tensors, plain containers and what
    MMEngine checkpoints hold (:mod:`.safe_globals`, allowlisted by ``import fla_mm``), never
    arbitrary pickled objects."""
    import torch

    from . import safe_globals
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = str(e).split('WeightsUnpickler error:', 1)[-1]
        found = sorted(set(re.findall(r'GLOBAL ([\w.]+)', detail)))
        if not (found or any(s in detail for s in REFUSALS)):
            raise           # not a refused object: a corrupt file, reported by the caller
        what = ', '.join(found) if found else ' '.join(detail.split())[:200]
        raise CheckpointError(
            f'Checkpoint {path} holds pickled Python objects that fla_mm does not load '
            f'({what}): fla_mm reads checkpoints with torch\'s weights-only loading, which '
            f'allows tensors, plain containers and what MMEngine checkpoints hold '
            f'({", ".join(safe_globals.allowed_names())}). If you trust the file, save its '
            f'state dict alone (torch.save(ckpt["state_dict"], PATH)) or allowlist those '
            f'classes with torch.serialization.add_safe_globals') from None


def _load_file(path, map_location='cpu'):
    """One weights file: .safetensors, or anything torch.load reads (.pth, .pt, .bin)."""
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path, device=str(map_location))
    return _torch_load(path, map_location)


def _load_index(index_path, map_location='cpu'):
    """Sharded Hugging Face weights: the index maps each tensor to a shard file."""
    with open(index_path) as f:
        shards = sorted(set(json.load(f)['weight_map'].values()))
    state = {}
    for shard in shards:
        state.update(_load_file(osp.join(osp.dirname(index_path), shard), map_location))
    return state


def _load_weights(path, map_location):
    return (_load_index(path, map_location) if path.endswith('.json')
            else _load_file(path, map_location))


def _hf_config(folder):
    cfg = osp.join(folder, 'config.json')
    if osp.isfile(cfg):
        with open(cfg) as f:
            return json.load(f)
    return None


class Checkpoint(NamedTuple):
    """What :func:`read_checkpoint` found in a file."""
    state: dict         # name -> tensor
    meta: dict          # MMEngine's ``meta`` entry, or the safetensors header's metadata
    hf_config: dict     # the config.json beside the weights, or None
    ignored: dict       # entry of the file that is not ``state`` -> what it holds


def read_checkpoint(path, map_location='cpu'):
    """Read ``path`` into a :class:`Checkpoint` ``(state, meta, hf_config, ignored)``.

    ``path`` is a file (.pth / .pt / .bin / .safetensors, sharded index .json), a Hugging
    Face model folder (model.safetensors or pytorch_model.bin, plus config.json), or a URL
    that MMEngine's CheckpointLoader understands. ``state`` is the flat name -> tensor dict
    (the ``state_dict`` / ``model`` / ``module`` entry when the file holds one), ``meta`` the
    MMEngine ``meta`` dict if any, ``hf_config`` the parsed config.json next to the weights,
    ``ignored`` every other entry of the file (an EMA copy beside ``model``, optimizer state,
    non-tensor values), so the load report can name them. Tensors are mapped to
    ``map_location`` (torch.load's argument; a device name for safetensors).
    """
    path = str(path)
    hf_config, shown = None, path
    try:
        if _is_url(path):
            from mmengine.runner.checkpoint import CheckpointLoader
            ckpt = CheckpointLoader.load_checkpoint(path, map_location=map_location)
        elif osp.isdir(path):
            found = [n for n in HF_WEIGHTS if osp.isfile(osp.join(path, n))]
            if not found:
                raise CheckpointError(
                    f'Checkpoint folder {path} has no weights file; expected one of '
                    f'{", ".join(HF_WEIGHTS)}')
            hf_config = _hf_config(path)
            weights = shown = osp.join(path, found[0])
            ckpt = _load_weights(weights, map_location)
        elif not osp.isfile(path):
            raise CheckpointError(f'Checkpoint file not found: {path}')
        else:
            hf_config = _hf_config(osp.dirname(osp.abspath(path)))
            ckpt = _load_weights(path, map_location)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001  torch, pickle, zip and safetensors errors alike
        msg = ' '.join(str(e).split())[:300]
        raise CheckpointError(f'Cannot read checkpoint {shown} (corrupt, truncated or not a '
                              f'checkpoint): {type(e).__name__}: {msg}') from None
    state, meta, ignored = split_checkpoint(ckpt, path)
    if path.endswith('.safetensors') and not meta:
        meta = read_safetensors_meta(path)
    return Checkpoint(state, meta, hf_config, ignored)


def _what(value):
    """A few words on a file entry that is not loaded: its type, or its tensor count."""
    import torch
    if isinstance(value, dict):
        n = sum(isinstance(v, torch.Tensor) for v in value.values())
        return f'a dict of {n} tensors' if n else f'a dict of {len(value)} entries, no tensors'
    if isinstance(value, torch.Tensor):
        return f'a tensor {tuple(value.shape)}'
    return type(value).__name__


def split_checkpoint(ckpt, path='<checkpoint>'):
    """``(state, meta, ignored)`` of a loaded checkpoint object; an error if it holds no
    tensors. ``ignored``: each top-level entry beside the state dict (not ``meta``) and each
    non-tensor value inside it -> what it holds."""
    import torch
    meta = ckpt.get('meta') if isinstance(ckpt, dict) and isinstance(ckpt.get('meta'), dict) \
        else {}
    state, ignored = ckpt, {}
    for key in STATE_KEYS:
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            state = ckpt[key]
            ignored = {str(k): f'{_what(v)}, beside {key!r}' for k, v in ckpt.items()
                       if k not in (key, 'meta')}
            break
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f'Checkpoint {path} holds no state dict (got '
                              f'{type(state).__name__}); expected a dict of tensors, or one '
                              f'under "state_dict", "model" or "module"')
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f'Checkpoint {path} holds no tensors; top-level keys: '
                              f'{sorted(map(str, state))[:10]}')
    ignored.update({str(k): f'{_what(v)}, not a tensor' for k, v in state.items()
                    if not isinstance(v, torch.Tensor)})
    # DataParallel / DistributedDataParallel wrappers prefix every key with "module."
    if all(k.startswith('module.') for k in tensors):
        tensors = {k[len('module.'):]: v for k, v in tensors.items()}
    return tensors, meta, ignored


def save_checkpoint(state, path, meta=None):
    """Write ``state`` as safetensors (path ends with .safetensors, meta as JSON strings in
    the header) or as an MMEngine checkpoint ``{'state_dict', 'meta'}``."""
    import torch
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if path.endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file(state, path, metadata={k: json.dumps(v) for k, v in (meta or {}).items()})
    else:
        torch.save({'state_dict': state, 'meta': meta or {}}, path)


def read_safetensors_meta(path):
    """The metadata written by :func:`save_checkpoint` into a .safetensors header (each
    entry JSON-encoded; entries that are not JSON are skipped)."""
    if not str(path).endswith('.safetensors') or not osp.isfile(path):
        return {}
    try:
        from safetensors import safe_open
        with safe_open(path, framework='pt') as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001  metadata is optional; the weights were read already
        return {}
    out = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            pass
    return out
