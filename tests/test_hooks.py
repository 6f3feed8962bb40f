"""FiniteCheckHook through a real MMEngine Runner on CPU: clean runs count nothing and log
the summary; an injected NaN gradient / NaN loss is counted; raise_on_nonfinite_loss stops
the run naming the iteration; a loss scaler's skipped steps are counted."""
import glob
import os
import uuid

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.registry import HOOKS
from mmengine.runner import Runner

import fla_mm  # noqa: F401  (registers)
from fla_mm.hooks import FiniteCheckHook


class ToyModel(BaseModel):
    """A linear regressor; each sample says what goes wrong in its iteration:
    'grad' gives `probe` a NaN gradient with a finite loss (d sqrt(x)/dx at 0 times 0),
    'loss' adds a NaN loss term that does not reach any gradient. (In fp32 the NaN gradient
    makes SGD write NaN into `probe`, so a later 'grad' sample gives a NaN loss too.)"""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.probe = nn.Parameter(torch.ones(1))

    def forward(self, inputs, kind, mode='loss'):
        x, kind = torch.stack(inputs), ' '.join(kind)  # batch of 1: kind is [str]
        y = self.linear(x)
        self.compute_dtype = y.dtype  # bfloat16 under autocast
        loss = y.float().pow(2).mean()
        aux = torch.zeros(())
        if 'grad' in kind:
            loss = loss + torch.sqrt(self.probe * 0).sum()
        if 'loss' in kind:
            aux = torch.tensor(float('nan'))
        return dict(loss_main=loss, loss_aux=aux)


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, kinds):
        self.kinds = kinds

    def __len__(self):
        return len(self.kinds)

    def __getitem__(self, i):
        return dict(inputs=torch.full((4,), 0.1 * (i + 1)), kind=self.kinds[i])


def run(tmp_path, kinds, hook=None, optim_wrapper=None):
    """Train one pass over `kinds` (iteration i+1 sees kinds[i]); return runner, hook, log."""
    hook = hook or dict(type='FiniteCheckHook')
    runner = Runner(
        model=ToyModel(), work_dir=str(tmp_path), experiment_name=uuid.uuid4().hex,
        train_dataloader=dict(dataset=ToyDataset(kinds), batch_size=1, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='pseudo_collate')),
        train_cfg=dict(by_epoch=False, max_iters=len(kinds), val_interval=10 ** 6),
        optim_wrapper=optim_wrapper or dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(checkpoint=None, logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=[hook], log_processor=dict(by_epoch=False), default_scope='mmengine')
    hooks = [h for h in runner.hooks if isinstance(h, FiniteCheckHook)]
    assert len(hooks) == 1
    try:
        runner.train()
    finally:
        log_files = glob.glob(os.path.join(runner.log_dir, '*.log'))
        log = open(log_files[0]).read() if log_files else ''
    return runner, hooks[0], log


def handles_removed(runner):
    """After training the optim wrapper's backward is its class's method again."""
    return 'backward' not in vars(runner.optim_wrapper)


def test_clean_fp32_run_counts_nothing_and_logs_summary(tmp_path):
    runner, hook, log = run(tmp_path, ['ok'] * 4)
    assert (hook.num_iters, hook.nonfinite_loss_iters, hook.nonfinite_grad_iters,
            hook.scaler_skip_iters) == (4, 0, 0, 0)
    assert ('FiniteCheckHook: 4 iterations, loss non-finite in 0, gradients non-finite in 0 '
            '(fp16 loss-scaler skips: 0)') in log
    assert 'nonfinite_grad_iters: 0' in log and 'nonfinite_objective_iters: 0' in log
    assert 'WARNING - FiniteCheckHook' not in log
    hub = runner.message_hub.get_scalar('train/nonfinite_grad_iters')
    assert hub.current() == 0
    assert handles_removed(runner)


def test_nonfinite_grad_and_loss_are_counted(tmp_path):
    runner, hook, log = run(tmp_path, ['ok', 'grad', 'ok', 'loss', 'ok', 'grad+loss'])
    assert (hook.num_iters, hook.nonfinite_loss_iters, hook.nonfinite_grad_iters,
            hook.scaler_skip_iters) == (6, 2, 2, 0)
    assert 'iteration 2: 1 parameter(s) with non-finite gradients' in log
    assert 'iteration 4: non-finite loss loss=nan, loss_aux=nan' in log
    assert 'iteration 6: non-finite loss' in log
    assert 'loss scaler is active' not in log
    assert ('FiniteCheckHook: 6 iterations, loss non-finite in 2, gradients non-finite in 2 '
            '(fp16 loss-scaler skips: 0)') in log
    hub = runner.message_hub
    assert hub.get_scalar('train/nonfinite_grad_iters').current() == 2
    assert hub.get_scalar('train/nonfinite_objective_iters').current() == 2
    assert handles_removed(runner)


def test_raise_on_nonfinite_loss_names_the_iteration(tmp_path):
    with pytest.raises(RuntimeError, match=r'non-finite loss at iteration 3: loss=nan, '
                                           r'loss_aux=nan'):
        run(tmp_path, ['ok', 'grad', 'loss', 'ok'],
            hook=dict(type='FiniteCheckHook', raise_on_nonfinite_loss=True))
    # a non-finite gradient alone (iteration 2) is counted, never raised


def test_builds_by_name_under_mmseg_and_mmdet_scopes():
    from mmengine.registry import DefaultScope
    for scope in ('mmseg', 'mmdet'):
        registry = pytest.importorskip(f'{scope}.registry')
        with DefaultScope.overwrite_default_scope(scope):
            hook = registry.HOOKS.build(dict(type='FiniteCheckHook',
                                             raise_on_nonfinite_loss=True))
        assert isinstance(hook, FiniteCheckHook) and hook.raise_on_nonfinite_loss
    assert HOOKS.get('FiniteCheckHook') is FiniteCheckHook


@pytest.fixture
def cpu_amp(monkeypatch):
    """mmengine's AmpOptimWrapper asserts a CUDA/NPU/MLU/MUSA device in __init__ and builds a
    torch.cuda.amp.GradScaler, so it cannot be built on CPU as shipped. Lift only that check
    and hand it torch's CPU GradScaler; autocast (mmengine.runner.amp) itself supports CPU
    bf16, so training runs under a real torch.autocast('cpu', bfloat16) with a real scaler."""
    import mmengine.optim.optimizer.amp_optimizer_wrapper as amp
    if torch.cuda.is_available():
        pytest.skip('checks the CPU path')
    monkeypatch.setattr(amp, 'is_cuda_available', lambda: True)
    monkeypatch.setattr(amp, 'GradScaler', lambda **kw: torch.amp.GradScaler('cpu', **kw))


def test_bf16_autocast_with_loss_scaler_counts_skipped_steps(tmp_path, cpu_amp):
    wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16', loss_scale=dict(init_scale=1024.),
                   optimizer=dict(type='SGD', lr=0.01))
    runner, hook, log = run(tmp_path, ['ok', 'grad', 'ok', 'ok'], optim_wrapper=wrapper)
    assert runner.optim_wrapper.loss_scaler.get_scale() == 512.0
    assert (hook.num_iters, hook.nonfinite_loss_iters, hook.nonfinite_grad_iters,
            hook.scaler_skip_iters) == (4, 0, 1, 1)
    assert 'iteration 2: 1 parameter(s) with non-finite gradients' in log
    assert 'A loss scaler is active (scale 1024 -> 512)' in log
    assert 'scaler_skip_iters: 1' in log
    assert ('FiniteCheckHook: 4 iterations, loss non-finite in 0, gradients non-finite in 1 '
            '(fp16 loss-scaler skips: 1)') in log
    # the scaler skipped the bad step, so the weights stayed finite
    assert all(torch.isfinite(p).all() for p in runner.model.parameters())


def test_bf16_clean_run(tmp_path, cpu_amp):
    wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16', optimizer=dict(type='SGD', lr=0.01))
    runner, hook, log = run(tmp_path, ['ok'] * 3, optim_wrapper=wrapper)
    assert (hook.nonfinite_loss_iters, hook.nonfinite_grad_iters, hook.scaler_skip_iters) \
        == (0, 0, 0)
    assert 'fp16 loss-scaler skips: 0' in log and 'WARNING - FiniteCheckHook' not in log
    assert runner.model.compute_dtype == torch.bfloat16


def test_gradient_check_costs_a_few_ops_whatever_the_parameter_count():
    """The per-step check is one multi-tensor op over all gradients, not a few ops per
    parameter: count the aten ops one backward dispatches with and without it. (The earlier
    per-parameter hooks added 1400 ops here, 7 per tensor; UperNet-GLA-T trains 258 tensors,
    and its GPU step is host-bound.)"""
    from types import SimpleNamespace

    from mmengine.optim import OptimWrapper
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(100)])       # 200 tensors
    wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    runner = SimpleNamespace(model=model, optim_wrapper=wrapper)
    x = torch.randn(2, 4)

    def ops_of_one_backward():
        loss = model(x).square().sum()
        Count.n = 0
        with Count():
            wrapper.backward(loss)
        model.zero_grad(set_to_none=True)
        return Count.n

    plain = ops_of_one_backward()
    hook = FiniteCheckHook()
    hook._register(runner)
    checked = ops_of_one_backward()
    assert 0 < checked - plain <= 10, (plain, checked)
    assert int(hook._counter) == 0
    hook._remove()
    assert ops_of_one_backward() == plain
