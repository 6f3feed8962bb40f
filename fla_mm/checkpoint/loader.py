"""Load a pretrained checkpoint into a backbone: detect, convert, resize, check, load.

:func:`load_pretrained` is the single entry point (backbones' ``init_weights`` calls it with
the ``init_cfg`` entries minus ``type``). Steps:

1. read the file (one :class:`CheckpointError` line for a missing, corrupt or truncated
   file), take the keys under ``prefix``;
2. detect the format (``fla_mm``, ``hf_fla``, ``vig``, ``timm_vit``) or take ``format=``;
3. convert the keys (:mod:`.formats`), dropping classifier heads and poolers;
4. resize the position embedding to the model's grid (non-square grids included), then
   ``model.adapt_state_dict(state)`` where the model has it, before any key check;
5. check every key and shape. The dense-prediction parts a classifier never has (the
   simple feature pyramid ``sfp.*`` and output norms ``norm{i}`` that nothing maps to) may
   be absent as a whole and keep their initialisation; anything else missing, unexpected
   or of another shape is an error when ``strict`` (the default) that lists the keys, names
   the format and says how to override (``strict=False`` loads the matching keys only);
6. for an fla-zoo checkpoint, hold the model against its ``config.json``
   (:func:`.arch.compare_hf_options`): an option that makes another function (a mixer's
   ``norm_eps``, the scan, ...) fails a strict load like a key mismatch, naming both values;
   fla-zoo's bi- / cross-scan, which fla_mm's scans do not reproduce, is a warning.

Every load logs a report through MMEngine's ``print_log``: tensors loaded, dropped (and why),
entries of the file ignored (an EMA copy beside ``model``, optimizer state), resized, output
norms filled from the classifier's final norm, new ones, warnings.
"""
import logging
import re

from mmengine.logging import print_log

from ..layers import resize_pos_embed
from .arch import compare_hf_options
from .formats import VIG_MISMATCH, Target, detect_format, get_converter, hf_grid, square_side
from .io import CheckpointError, read_checkpoint

_DENSE = re.compile(r'^(sfp|norm\d+)\.')


def _pattern(key):
    return re.sub(r'(?<=\.)\d+(?=\.)', '{i}', key)


def compact(keys, limit=25):
    """Keys grouped by their pattern with block / stage indices as {i}: 'a.{i}.b (x12)'."""
    groups = {}
    for k in sorted(keys, key=lambda s: [int(t) if t.isdigit() else t
                                         for t in re.split(r'(\d+)', s)]):
        groups.setdefault(_pattern(k), []).append(k)
    items = [g[0] if len(g) == 1 else f'{p} (x{len(g)})' for p, g in groups.items()]
    more = f' ... ({len(items) - limit} more patterns)' if len(items) > limit else ''
    return ', '.join(items[:limit]) + more


def _compact_reasons(reasons, limit=12):
    """{key: reason} -> 'pattern (xN): reason; ...'."""
    by = {}
    for k, r in reasons.items():
        by.setdefault(r, []).append(k)
    parts = [f'{compact(ks, 6)}: {r}' for r, ks in by.items()]
    more = f' ... ({len(parts) - limit} more)' if len(parts) > limit else ''
    return '; '.join(parts[:limit]) + more


def compact_shapes(shape, limit=12):
    """{key: (checkpoint shape, model shape)} grouped by key pattern and shapes, the stem
    first: 'blocks.{i}.attn.q_proj.weight: checkpoint (48, 48) vs model (32, 32) (x2)'."""
    groups = {}
    for k in sorted(shape, key=lambda s: (s.startswith(('blocks', 'stages', 'norm', 'sfp')),
                                          [int(t) if t.isdigit() else t
                                           for t in re.split(r'(\d+)', s)])):
        a, b = shape[k]
        groups.setdefault((_pattern(k), a, b), []).append(k)
    items = [f'{ks[0] if len(ks) == 1 else p}: checkpoint {a} vs model {b}'
             + (f' (x{len(ks)})' if len(ks) > 1 else '') for (p, a, b), ks in groups.items()]
    more = f' ... ({len(items) - limit} more)' if len(items) > limit else ''
    return ', '.join(items[:limit]) + more


def checkpoint_grid(checkpoint, prefix=None):
    """The token grid ``(h, w)`` a checkpoint's position embedding was trained at, or None
    where it cannot be told (no position embedding, or a file that cannot be read: loading
    it says why); see :func:`grid_of`."""
    try:
        ckpt = read_checkpoint(checkpoint)
    except CheckpointError:
        return None
    return grid_of(ckpt.state, ckpt.meta, ckpt.hf_config, prefix)


def grid_of(state, meta=None, hf_config=None, prefix=None):
    """The position-embedding token grid of a read checkpoint: fla_mm's meta ``pos_hw``,
    else config.json's image_size / patch_size, else the token count of the position
    embedding when it is a square (after a class or distillation slot); None if none."""
    grid = ((meta or {}).get('fla_mm') or {}).get('pos_hw') or hf_grid(hf_config)
    if grid:
        return tuple(int(g) for g in grid)
    names = [k for k in state if k.startswith(prefix or '')
             and re.search(r'(^|\.)(pos_embed|embeddings\.position_embeddings)$', k)]
    if not names:
        return None
    pe = state[min(names, key=len)]
    for slots in (0, 1, 2):
        side = pe.dim() == 3 and pe.shape[1] > slots and square_side(pe.shape[1] - slots)
        if side:
            return (side, side)
    return None


def _resize_known_grid(model, state, src_hw, conv):
    """Resize a pos_embed whose source grid is known (non-square included)."""
    pe = state.get('pos_embed')
    own = getattr(model, 'pos_embed', None)
    if pe is None or own is None or src_hw is None or pe.shape == own.shape:
        return
    src_hw = tuple(int(s) for s in src_hw)
    if pe.dim() != 3 or pe.shape[1] != src_hw[0] * src_hw[1] or pe.shape[-1] != own.shape[-1]:
        return
    state['pos_embed'] = resize_pos_embed(pe, src_hw, model.pos_hw, model.interpolate_mode)
    conv.resized.append(f'pos_embed: {src_hw[0]}x{src_hw[1]} -> {model.pos_hw[0]}x'
                        f'{model.pos_hw[1]} ({model.interpolate_mode})')


def _adapt(model, state, conv, source):
    """``model.adapt_state_dict`` (square grids, a leading cls slot) before the key check."""
    if not hasattr(model, 'adapt_state_dict'):
        return
    pe, own = state.get('pos_embed'), getattr(model, 'pos_embed', None)
    if pe is None or own is None or pe.shape == own.shape or pe.shape[-1] != own.shape[-1]:
        return          # nothing to resize, or a width mismatch the key check reports
    before = tuple(pe.shape)
    try:
        model.adapt_state_dict(state)
    except ValueError as e:
        raise CheckpointError(f'Checkpoint {source} ({conv.format} format): {e}. Give the '
                              f'model the pretrain_img_size the checkpoint was trained at, or '
                              f'convert it with tools/convert_checkpoint.py, which records '
                              f'the grid') from None
    after = tuple(state['pos_embed'].shape)
    if after != before:
        conv.resized.append(f'pos_embed: {before[1]} tokens -> {model.pos_hw[0]}x'
                            f'{model.pos_hw[1]} ({model.interpolate_mode})')


def convert_for_model(model, state, meta=None, hf_config=None, prefix=None, format=None,
                      source='<state dict>', ignored=None):
    """Convert a foreign (or own) state dict for ``model``, resize and check it.

    Returns ``(loadable, report)``: the tensors that match the model in name and shape, and
    a dict with the format, what was dropped / ignored / unmapped / missing / resized /
    filled, the options of an fla-zoo ``config.json`` the model differs in
    (``option_errors``: another function; ``option_warnings``) and a summary. ``ignored``:
    the file's entries beside the state dict (``read_checkpoint``'s), named in the report.
    A model given no pretrain_img_size (``grid_from_checkpoint``) first takes the
    checkpoint's position-embedding grid. Raises nothing on mismatches (the caller decides
    about strictness) except for a file whose format cannot be told or that belongs to the
    other layout.
    """
    meta = meta or {}
    ignored = dict(ignored or {})
    notes = []
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        inside = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if inside:
            ignored.update({k: f'outside prefix {prefix!r}' for k in state
                            if not k.startswith(prefix)})
            state = inside
        else:
            notes.append(f'prefix {prefix!r} matches no key; all keys used')
    if format is None:
        fmt, evidence = detect_format(state, meta)
        how = f'detected from {evidence}'
    else:
        fmt, how = format, 'given as format='
    grid = grid_of(state, meta, hf_config) if getattr(model, 'grid_from_checkpoint', False) \
        else None
    if grid and grid != model.pos_hw:
        model.take_pos_grid(grid)   # before the converters, so nothing resizes it
    conv = get_converter(fmt)(state, Target(model), hf_config)
    conv.notes[:0] = notes
    option_errors, option_warnings = _compare_options(model, fmt, state, hf_config, conv)
    new_state = dict(conv.state)
    src_hw = (meta.get('fla_mm') or {}).get('pos_hw') if fmt == 'fla_mm' else \
        getattr(conv, 'src_hw', None)
    _resize_known_grid(model, new_state, src_hw, conv)
    _adapt(model, new_state, conv, source)
    if grid:
        conv.notes.append(f'pos_embed kept at the checkpoint\'s grid {model.pos_hw[0]}x'
                          f'{model.pos_hw[1]} (the model was given no pretrain_img_size)')

    own = model.state_dict()
    missing = sorted(set(own) - set(new_state))
    present = {m.group(1) for m in map(_DENSE.match, new_state) if m}
    new = [k for k in missing if _DENSE.match(k) and _DENSE.match(k).group(1) not in present]
    missing = [k for k in missing if k not in new]
    unexpected = sorted(set(new_state) - set(own))
    shape = sorted(k for k in set(own) & set(new_state) if own[k].shape != new_state[k].shape)
    loadable = {k: v for k, v in new_state.items() if k in own and own[k].shape == v.shape}
    report = dict(
        format=fmt, detected=how, source=str(source), model=type(model).__name__,
        loaded=len(loadable), loaded_keys=sorted(loadable), total=len(own),
        missing=missing, unexpected=unexpected, unmapped=dict(conv.unmapped),
        shape={k: (tuple(new_state[k].shape), tuple(own[k].shape)) for k in shape},
        dropped=dict(conv.dropped), ignored=ignored, new=new, resized=list(conv.resized),
        filled=dict(conv.filled), option_errors=option_errors,
        option_warnings=option_warnings, notes=list(conv.notes))
    report['ok'] = not (missing or unexpected or shape or conv.unmapped or option_errors)
    report['summary'] = summarize(report)
    return loadable, report


def _compare_options(model, fmt, state, hf_config, conv):
    """An fla-zoo checkpoint's config.json against ``model`` (:func:`.arch.compare_hf_options`);
    a config.json fla_mm cannot read is a warning that the function went unchecked, not an
    error (its tensors may still match)."""
    if fmt != 'hf_fla' or not hf_config:
        return [], []
    try:
        return compare_hf_options(model, conv.state, hf_config)
    except (CheckpointError, KeyError, AttributeError) as e:
        return [], [f'config.json not compared with the model, so its function is unchecked: '
                    f'{e}']


def _new_norms(keys):
    return sorted({k.split('.')[0] for k in keys if re.match(r'^norm\d+\.', k)})


def summarize(r):
    """A few lines: loaded / dropped / ignored / resized / filled / new / problems."""
    lines = [f'Loaded {r["loaded"]}/{r["total"]} tensors of {r["model"]} from {r["source"]} '
             f'({r["format"]} format, {r["detected"]})']
    if r['dropped']:
        lines.append(f'  dropped {len(r["dropped"])}: {_compact_reasons(r["dropped"])}')
    if r['ignored']:
        lines.append(f'  ignored {len(r["ignored"])} entries of the file: '
                     f'{_compact_reasons(r["ignored"], limit=len(r["ignored"]))}')
    if r['resized']:
        lines.append(f'  resized: {"; ".join(r["resized"])}')
    if r['filled']:
        lines.append('  output norms filled from the classifier\'s final norm: '
                     + ', '.join(f'{k} <- {v}' for k, v in sorted(r['filled'].items())))
    norms = _new_norms(r['new'])
    if norms:
        lines.append(f'  new output norms (not in the checkpoint, at their initialisation): '
                     f'{", ".join(norms)}')
    if r['new']:
        lines.append(f'  new (not in the checkpoint, kept at their initialisation): '
                     f'{compact(r["new"])}')
    for what, keys in (('missing', r['missing']), ('unexpected', r['unexpected'])):
        if keys:
            lines.append(f'  {what} keys: {compact(keys)}')
    if r['unmapped']:
        lines.append(f'  source tensors with no counterpart: {_compact_reasons(r["unmapped"])}')
    if r['shape']:
        lines.append(f'  shape mismatches: {compact_shapes(r["shape"])}')
    lines += [f'  another function than the checkpoint\'s: {e}' for e in r['option_errors']]
    lines += [f'  warning: {w}' for w in r['option_warnings']]
    lines += [f'  note: {n}' for n in r['notes']]
    return '\n'.join(lines)


def strict_error(r, prefix=None):
    """The one-line :class:`CheckpointError` of a strict load that does not match: the keys
    that do not, or (where every key matches) the options that make another function."""
    if r['option_errors'] and not (r['missing'] or r['unexpected'] or r['shape']
                                   or r['unmapped']):
        return CheckpointError(
            f'Checkpoint {r["source"]} ({r["format"]} format) computes another function than '
            f'{r["model"]} although every tensor matches: {"; ".join(r["option_errors"])}. '
            f'Build the backbone with the checkpoint\'s values (tools/convert_checkpoint.py '
            f'infers them), or pass strict=False in init_cfg to load it anyway.')

    def fmt(keys):
        return compact(keys) if keys else ''
    shape = compact_shapes(r['shape'])
    hint = ''
    pe = r['shape'].get('patch_embed.proj.weight')
    if pe:
        hint = (f' The checkpoint is {pe[0][0]} channels wide, the model {pe[1][0]}: build the '
                f'arch the checkpoint was trained with.')
    if r['format'] == 'vig' and r['unmapped']:
        hint += f' {VIG_MISMATCH}'
    unmapped = f'; source tensors with no counterpart: [{_compact_reasons(r["unmapped"])}]' \
        if r['unmapped'] else ''
    return CheckpointError(
        f'Checkpoint {r["source"]} ({r["format"]} format, {r["detected"]}, prefix={prefix!r}) '
        f'does not match {r["model"]}: missing keys: [{fmt(r["missing"])}]; unexpected keys: '
        f'[{fmt(r["unexpected"])}]{unmapped}; shape mismatches: [{shape}].{hint} Pass '
        f'strict=False in init_cfg to load the matching keys only (or format=... if '
        f'{r["format"]!r} is the wrong format).')


def load_pretrained(model, checkpoint, prefix=None, strict=True, format=None,
                    map_location='cpu', logger='current'):
    """Load ``checkpoint`` (optionally the keys under ``prefix``) into ``model``.

    Args:
        model: an fla_mm backbone (or any module with fla_mm parameter names).
        checkpoint: a file (.pth / .pt / .bin / .safetensors), a Hugging Face model folder,
            or a URL.
        prefix: take only the keys under this prefix (e.g. 'backbone.'); for fla_mm
            checkpoints of a whole segmentor the 'backbone.' prefix is found without it.
        strict: any missing, unexpected, unconvertible or mis-shaped key is a
            :class:`CheckpointError` listing them; False loads the matching keys only.
        format: None (detect), 'fla_mm', 'hf_fla', 'vig' or 'timm_vit'.
        map_location: where the tensors are read to (torch.load's argument, as MMEngine's
            Pretrained init takes it).
        logger: MMEngine logger (or name) for the report, through ``print_log``.

    Returns:
        The report dict (format, loaded, dropped, ignored, resized, filled, new, missing,
        unexpected, option_errors, option_warnings, ...); its summary is logged at WARNING
        when something does not match or a warning was raised, else at INFO.
    """
    ckpt = read_checkpoint(checkpoint, map_location)
    loadable, report = convert_for_model(model, ckpt.state, ckpt.meta, ckpt.hf_config, prefix,
                                         format, source=checkpoint, ignored=ckpt.ignored)
    if strict and not report['ok']:
        raise strict_error(report, prefix)
    model.load_state_dict(loadable, strict=False)
    loud = not report['ok'] or report['option_warnings']
    print_log(report['summary'], logger=logger, level=logging.WARNING if loud else logging.INFO)
    return report
