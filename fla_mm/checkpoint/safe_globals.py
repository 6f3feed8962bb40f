"""Let torch's weights-only loading read MMEngine checkpoints, and nothing more.

Since torch 2.6, ``torch.load`` unpickles only tensors and a short list of plain types unless
the caller passes ``weights_only=False``. MMEngine's ``load_checkpoint`` (and so mmseg's and
mmdet's ``tools/test.py``, ``--resume``, ``init_model`` and the inferencers) keeps torch's
default, and a checkpoint that MMEngine's ``CheckpointHook`` writes holds more than
tensors: the message hub's ``HistoryBuffer`` objects (numpy arrays of logged values, and
their statistics methods, pickled as ``getattr(HistoryBuffer, 'min')``) and numpy scalars
in the runtime info. :func:`register` adds exactly those to torch's allowlist
(``torch.serialization.add_safe_globals``); ``import fla_mm``, which every fla_mm config
does through ``custom_imports``, calls it. The list was read off real checkpoints of
fla_mm's mmseg and mmdet configs (``torch.serialization.get_unsafe_globals_in_checkpoint``).

``builtins.getattr`` itself is not allowed: a pickle that may call ``getattr`` on what it
has can reach any callable. The name is mapped to :func:`history_buffer_method`, which
returns HistoryBuffer's statistics methods and refuses everything else.
"""
import pickle

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

# HistoryBuffer's own statistics, which it pickles by attribute (see HistoryBuffer.__getstate__)
HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


def history_buffer_method(obj, name):
    """``getattr`` as MMEngine checkpoints use it: ``HistoryBuffer.<statistic>`` only."""
    if obj is HistoryBuffer and name in HISTORY_BUFFER_METHODS:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'checkpoint calls getattr({obj!r}, {name!r}); the weights-only loading that fla_mm '
        f'allows calls getattr only for HistoryBuffer.{"/".join(HISTORY_BUFFER_METHODS)}')


def safe_globals():
    """The allowlist entries: objects, or ``(object, 'module.name')`` where a checkpoint
    names the object otherwise (numpy 1.x pickles ``numpy.core.multiarray``, numpy 2.x
    ``numpy._core.multiarray``)."""
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    entries = [HistoryBuffer, np.ndarray, np.dtype,
               (history_buffer_method, 'builtins.getattr')]
    for name in ('_reconstruct', 'scalar'):
        fn = getattr(multiarray, name)
        entries += [(fn, f'numpy.core.multiarray.{name}'),
                    (fn, f'numpy._core.multiarray.{name}')]
    # a pickled dtype is rebuilt as an instance of its class (Float64DType, ...), which
    # torch checks against the allowlist too
    entries += [getattr(np.dtypes, n) for n in getattr(np.dtypes, '__all__', ())
                if isinstance(getattr(np.dtypes, n, None), type)]
    return entries


def register():
    """Add :func:`safe_globals` to torch's weights-only allowlist (idempotent)."""
    torch.serialization.add_safe_globals(safe_globals())


def allowed_names():
    """Names of the globals a checkpoint may hold under :func:`register`, for messages."""
    names = []
    for e in safe_globals():
        name = e[1] if isinstance(e, tuple) else f'{e.__module__}.{e.__qualname__}'
        if not name.startswith('numpy.dtypes.'):
            names.append(name)
    return sorted(set(names)) + ['numpy.dtypes.*']
