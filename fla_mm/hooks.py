"""Training hooks registered into MMEngine's root HOOKS (mmseg and mmdet find them through
their parent registry), and the training-input-size check that fla_mm's tools and
:class:`InputSizeCheckHook` share. Imports torch and mmengine only."""
import math

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper


def _fmt(value):
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        return f'tensor of shape {tuple(value.shape)}'
    return f'{float(value)}'


def _loss_values(names, losses):
    """'loss=nan, loss_aux=inf': the named losses with their values, for warnings and errors."""
    return ', '.join(f'{k}={_fmt(losses[k])}' for k in names)


class FiniteCheckHook(Hook):
    """Count iterations whose losses or gradients are NaN/Inf, cheaply, and say so in the log.

    Mixed precision makes non-finite values a normal event (an fp16 GradScaler overflows and
    skips the step now and then) and a fatal one (a NaN loss that reaches the weights poisons
    every later iteration and checkpoint) look alike in a loss curve. This hook tells them
    apart without slowing training: after each backward of the optim wrapper, one
    multi-tensor op takes every gradient's largest magnitude and adds the number of
    non-finite ones to a device counter (a few kernels per step whatever the parameter count,
    no host sync), and ``after_train_iter`` reads that counter, the losses and the loss scale
    in a single sync.

    Running totals go to the message hub as ``train/nonfinite_grad_iters``,
    ``train/nonfinite_objective_iters`` and ``train/scaler_skip_iters`` so LoggerHook prints
    them. (The names avoid "loss": LogProcessor averages keys matching ``loss`` over its
    window, which would turn a running total into a smeared mean.) The first ``max_warnings``
    bad iterations are also logged as warnings naming the iteration, and ``after_train`` logs
    a one-line summary. Counts are per rank; LoggerHook shows rank 0.

    Args:
        raise_on_nonfinite_loss (bool): Raise ``RuntimeError`` naming the iteration and the
            loss when a loss is NaN/Inf. The hook runs at NORMAL priority, before
            CheckpointHook, so no checkpoint of that iteration is written. Defaults to False.
        max_warnings (int): How many bad iterations get their own warning. Defaults to 5.

    Config: ``custom_hooks = [dict(type='FiniteCheckHook')]``.
    """

    priority = 'NORMAL'  # after_train_iter must run before LoggerHook (BELOW_NORMAL) logs

    def __init__(self, raise_on_nonfinite_loss=False, max_warnings=5):
        self.raise_on_nonfinite_loss = raise_on_nonfinite_loss
        self.max_warnings = max_warnings
        self._handles = []
        self._counter = None
        self._registered = False
        self._reset_totals()

    def _reset_totals(self):
        self.num_iters = 0
        self.nonfinite_loss_iters = 0
        self.nonfinite_grad_iters = 0
        self.scaler_skip_iters = 0
        self._warned = 0
        self._last_scales = []

    # -- setup / teardown -------------------------------------------------------------
    @staticmethod
    def _wrappers(runner):
        """The runner's optim wrapper(s): one, or the members of an OptimWrapperDict."""
        wrapper = getattr(runner, 'optim_wrapper', None)
        return list(wrapper.values()) if hasattr(wrapper, 'values') else [wrapper]

    @classmethod
    def _scalers(cls, runner):
        """GradScalers of the optim wrapper(s): AmpOptimWrapper keeps one as ``loss_scaler``."""
        return [w.loss_scaler for w in cls._wrappers(runner)
                if getattr(w, 'loss_scaler', None) is not None]

    def _register(self, runner):
        """Check the gradients of the unwrapped model (DDP keeps it in .module) after every
        ``backward`` of the optim wrapper(s): its update_params calls backward, then step
        and zero_grad, so this is the one point where each step's gradients exist."""
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        params = [p for p in model.parameters() if p.requires_grad]
        self._counter = (torch.zeros((), dtype=torch.int64, device=params[0].device)
                         if params else None)
        counter = self._counter

        def count_nonfinite():
            grads = [p.grad for p in params if p.grad is not None]
            if grads:     # inf-norm: NaN and Inf survive it, large finite values cannot overflow
                peaks = torch._foreach_norm(grads, float('inf'))
                bad = ~torch.isfinite(torch.stack([t.float() for t in peaks]))
                counter.add_(bad.sum().to(counter.device))   # stays on the device

        for wrapper in self._wrappers(runner):
            if wrapper is None or counter is None:
                continue
            backward = wrapper.backward

            def checked_backward(loss, *args, _backward=backward, **kwargs):
                _backward(loss, *args, **kwargs)
                count_nonfinite()

            wrapper.backward = checked_backward          # an instance attribute: removable
            self._handles.append(wrapper)
        self._last_scales = [s.get_scale() for s in self._scalers(runner)]
        self._registered = True

    def _remove(self):
        for wrapper in self._handles:
            del wrapper.backward                         # the class's method again
        self._handles = []
        self._registered = False

    def before_train(self, runner):
        # after load_or_resume, so a resumed loss scale is the starting point
        self._reset_totals()
        self._register(runner)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if not self._registered:  # e.g. the hook was added after before_train ran
            self._register(runner)

    # -- per iteration ----------------------------------------------------------------
    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        iteration = runner.iter + 1  # 1-based, as LoggerHook prints it
        losses = {k: v for k, v in (outputs or {}).items() if 'loss' in k}
        scalers = self._scalers(runner)

        # gather everything that lives on the device into one tensor: one host sync
        tensors, names = [], []
        if self._counter is not None:
            tensors.append(self._counter)
        for k, v in losses.items():
            if isinstance(v, torch.Tensor):
                tensors.append(torch.isfinite(v.detach()).all())
                names.append(k)
        scale_tensors = [getattr(s, '_scale', None) for s in scalers]
        tensors += [t for t in scale_tensors if t is not None]
        values = []
        if tensors:
            device = tensors[0].device
            values = torch.stack([t.detach().to(device=device, dtype=torch.float32)
                                  for t in tensors]).tolist()
        if self._counter is not None:
            self._counter.zero_()
            num_bad_params = int(values.pop(0))
        else:
            num_bad_params = 0
        bad_losses = [k for k, ok in zip(names, values[:len(names)]) if not ok]
        values = values[len(names):]
        bad_losses += [k for k, v in losses.items()
                       if not isinstance(v, torch.Tensor) and not math.isfinite(float(v))]
        # get_scale() is only reached before the scaler's first update (no _scale yet)
        scales = [values.pop(0) if t is not None else s.get_scale()
                  for s, t in zip(scalers, scale_tensors)]

        self.num_iters += 1
        scaler_skipped = any(new < old for new, old in zip(scales, self._last_scales))
        self.nonfinite_loss_iters += bool(bad_losses)
        self.nonfinite_grad_iters += num_bad_params > 0
        self.scaler_skip_iters += scaler_skipped
        hub = runner.message_hub
        hub.update_scalar('train/nonfinite_objective_iters', self.nonfinite_loss_iters,
                          resumed=False)
        hub.update_scalar('train/nonfinite_grad_iters', self.nonfinite_grad_iters,
                          resumed=False)
        if scalers:
            hub.update_scalar('train/scaler_skip_iters', self.scaler_skip_iters, resumed=False)

        if bad_losses or num_bad_params:
            self._warn(runner, iteration, bad_losses, losses, num_bad_params, scalers,
                       self._last_scales, scales)
        self._last_scales = scales

        if bad_losses and self.raise_on_nonfinite_loss:
            self._remove()
            raise RuntimeError(f'FiniteCheckHook: non-finite loss at iteration {iteration}: '
                               f'{_loss_values(bad_losses, losses)} '
                               '(raise_on_nonfinite_loss=True)')

    def _warn(self, runner, iteration, bad_losses, losses, num_bad_params, scalers,
              old_scales, new_scales):
        if self._warned >= self.max_warnings:
            return
        self._warned += 1
        parts = []
        if bad_losses:
            parts.append('non-finite loss ' + _loss_values(bad_losses, losses))
        if num_bad_params:
            parts.append(f'{num_bad_params} parameter(s) with non-finite gradients')
        msg = f'FiniteCheckHook: iteration {iteration}: ' + '; '.join(parts)
        if scalers and num_bad_params:
            change = ', '.join(f'{o:g} -> {n:g}' for o, n in zip(old_scales, new_scales))
            msg += (f'. A loss scaler is active (scale {change}): with fp16 an overflowing '
                    'scaled gradient now and then is expected; the GradScaler skips that '
                    'step and lowers the scale')
        if self._warned == self.max_warnings:
            msg += (f'. (Warned {self.max_warnings} times; later ones are only counted in '
                    'train/nonfinite_*_iters.)')
        runner.logger.warning(msg)

    # -- end --------------------------------------------------------------------------
    def summary(self):
        return (f'FiniteCheckHook: {self.num_iters} iterations, loss non-finite in '
                f'{self.nonfinite_loss_iters}, gradients non-finite in '
                f'{self.nonfinite_grad_iters} (fp16 loss-scaler skips: '
                f'{self.scaler_skip_iters})')

    def after_train(self, runner):
        self._remove()
        runner.logger.info(self.summary())


def check_input_size(cfg):
    """A training crop (mmseg) or pad divisor (mmdet) that the fla_mm backbone does not
    divide is one clear error, naming the value, the backbone's multiple and the nearest
    sizes that fit, instead of silently padded tokens in every scan of every training step.

    Only the training side is checked: at inference any input size is fine (the backbones
    pad to the patch grid and crop back), so test and inference sizes are left alone.
    """
    from . import backbones
    backbone = cfg.get('model', {}).get('backbone', {})
    cls = getattr(backbones, str(backbone.get('type', '')).split('.')[-1], None)
    if not hasattr(cls, 'input_multiple'):
        return
    m = cls.input_multiple(backbone)
    checks = []
    for t in cfg.get('train_dataloader', {}).get('dataset', {}).get('pipeline', []) or []:
        if t.get('type') == 'RandomCrop':
            checks.append(('train pipeline RandomCrop crop_size', t.get('crop_size')))
    pre = cfg.get('model', {}).get('data_preprocessor', {}) or {}
    if pre.get('size') is not None:
        checks.append(('model.data_preprocessor.size', pre['size']))
    if pre.get('pad_size_divisor') is not None:
        checks.append(('model.data_preprocessor.pad_size_divisor', pre['pad_size_divisor']))
    for where, value in checks:
        sizes = [value] if isinstance(value, int) else list(value or [])
        bad = [v for v in sizes if int(v) % m]
        if bad:
            near = sorted({max(m, int(v) // m * m) for v in bad} | {-(-int(v) // m) * m for v in bad})
            raise ValueError(f'{where} = {tuple(sizes) if len(sizes) > 1 else sizes[0]} does not fit '
                             f'{backbone["type"]}: sizes must be multiples of {m} '
                             f'(nearest: {", ".join(map(str, near))})')


class InputSizeCheckHook(Hook):
    """:func:`check_input_size` on the runner's config before the first training iteration,
    so that OpenMMLab's own ``tools/train.py`` (which never calls fla_mm's tools) stops with
    the same error as fla_mm's. The configs list it in ``default_hooks`` (a dict that child
    configs merge into, so it stays); testing and inference never reach ``before_train``.

    Config: ``default_hooks = dict(input_size_check=dict(type='InputSizeCheckHook'))``.
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner):
        check_input_size(runner.cfg)
