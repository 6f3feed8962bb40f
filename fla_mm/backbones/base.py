"""What both layouts share: the OpenMMLab backbone contract.

Argument checks whose errors name the bad value and the valid choices, freezing and
``norm_eval`` that survive ``.train()``, ``init_weights`` with ``Pretrained`` through
:func:`fla_mm.checkpoint.load_pretrained`, ``reparameterize()``, the layer ids that the
layer-wise lr-decay optimizer constructor reads, ``cuda_graph`` training steps and the
``compile`` option.
"""
import copy
import inspect
import math
import warnings

import torch
import torch.nn as nn
from mmengine.model import BaseModule

from ..checkpoint import checkpoint_grid, load_pretrained
from ..layers import FAMILIES, TokenMixer, reparameterize_model


def resolve_arch(arch, archs):
    """A named size (key of ``archs``) or a dict with the same keys."""
    keys = list(next(iter(archs.values())))
    if isinstance(arch, str):
        if arch not in archs:
            raise ValueError(f'Unknown arch {arch!r}; valid sizes: {", ".join(archs)} '
                             f'(or a dict with keys {", ".join(keys)})')
        return copy.deepcopy(archs[arch])
    if not isinstance(arch, dict):
        raise TypeError(f'arch must be one of {", ".join(archs)} or a dict, got {arch!r}')
    missing = sorted(set(keys) - set(arch))
    unknown = sorted(set(arch) - set(keys))
    if missing or unknown:
        raise ValueError(f'arch dict {arch} lacks keys {missing} / has unknown keys {unknown}; '
                         f'expected keys: {", ".join(keys)}')
    return copy.deepcopy(dict(arch))


def per_item(value, n, what, kinds=(str, dict, type(None))):
    """One value for all ``n`` items, or a list/tuple of exactly ``n``."""
    if isinstance(value, kinds):
        return [copy.deepcopy(value) for _ in range(n)]
    value = list(value)
    if len(value) != n:
        raise ValueError(f'{what} list needs {n} entries, got {len(value)}: {value}')
    return value


def check_mixers(mixers, extra=()):
    valid = sorted(FAMILIES) + list(extra)
    for m in mixers:
        if m not in valid:
            raise ValueError(f'Unknown mixer {m!r}; valid mixers: {", ".join(valid)}')


def check_indices(indices, n, what):
    """Normalise (negative allowed) indices into [0, n); an error lists the valid range."""
    if isinstance(indices, int):
        indices = (indices,)
    out = []
    for i in indices:
        if not isinstance(i, int) or not -n <= i < n:
            raise ValueError(f'{what} {tuple(indices)} has {i!r}; valid: integers in '
                             f'[{-n}, {n - 1}]')
        out.append(i % n)
    if len(set(out)) != len(out):
        raise ValueError(f'{what} {tuple(indices)} repeats an index')
    return tuple(out)


def to_2tuple(x, what):
    if isinstance(x, int):
        return (x, x)
    if isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(v, int) for v in x):
        return tuple(x)
    raise ValueError(f'{what} must be an int or a pair (H, W), got {x!r}')


def pretrained_grid(init_cfg):
    """The position-embedding token grid of ``init_cfg``'s Pretrained checkpoint, or None."""
    if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained' \
            and init_cfg.get('checkpoint'):
        return checkpoint_grid(init_cfg['checkpoint'], init_cfg.get('prefix'))
    return None


MAX_CUDA_GRAPHS = 4    # input shapes captured per backbone; others run eagerly
COMPILE_ARGS = ('backend', 'mode', 'fullgraph', 'dynamic', 'options')   # of torch.compile
GRAPHING_COMPILE_MODES = ('reduce-overhead', 'max-autotune')   # Inductor's own CUDA graphs


class _EagerForward(nn.Module):
    """The backbone's eager forward (never the graphed one) as a module of its own."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return self.backbone._forward(x)


class _AliasedForward:
    """The backbone's eager forward as a function of (x, *parameters), for
    ``torch.cuda.make_graphed_callables``, captured with aliases of the parameters (same
    storage, other autograd leaves). The capture's backward then never reaches the real
    parameters' AccumulateGrad nodes: DDP keeps references to those, made on another stream,
    and capturing through them fails ("operation would make the legacy stream depend on a
    capturing blocking stream"). The replay is called with the real parameters, whose
    gradients then accumulate eagerly, where DDP's hooks see them. The backbone keeps this in
    a plain dict, so its own module tree (state_dict, parameters) is unchanged."""

    def __init__(self, backbone):
        self.module = _EagerForward(backbone)
        self.names = ['backbone.' + n for n, _ in backbone.named_parameters()]

    def aliases(self):
        """Leaves sharing each parameter's storage: in-place optimizer steps reach the graph."""
        return [p.detach().requires_grad_(p.requires_grad) for p in self.module.parameters()]

    def __call__(self, x, *params):
        return torch.func.functional_call(self.module, dict(zip(self.names, params)), (x,),
                                          tie_weights=False)


class FLABackboneBase(BaseModule):
    """Base of the two layouts.

    A subclass sets ``in_channels``, ``patch_size``, ``frozen_stages``, ``norm_eval``,
    implements :meth:`_forward`, :meth:`_frozen_parts` (modules and parameters that
    ``frozen_stages`` fixes), :meth:`layer_id` and ``num_layers``, and calls
    :meth:`_setup_cuda_graph` once its blocks exist.
    """

    def __init__(self, init_cfg=None, unknown=None):
        super().__init__(init_cfg=init_cfg)
        if unknown:
            valid = [n for n in inspect.signature(type(self).__init__).parameters
                     if n not in ('self', 'unknown')]
            raise TypeError(f'{type(self).__name__} got unknown argument(s) '
                            f'{", ".join(sorted(unknown))}; valid arguments: {", ".join(valid)}')
        self.cuda_graph, self._graphs = False, {}
        self.compile, self._compiled = None, {}

    def __deepcopy__(self, memo):
        """A copy (an EMA model, ...) starts without CUDA graphs and compiled functions: the
        original's replay and trace the original's parameters."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for name, value in self.__dict__.items():
            new.__dict__[name] = {} if name in ('_graphs', '_compiled') else copy.deepcopy(
                value, memo)
        return new

    def _setup_compile(self, compile):
        """``compile``: False, True or a dict of ``torch.compile`` arguments (``backend``,
        ``mode``, ``fullgraph``, ``dynamic``, ``options``): the backbone's forward (and, with
        ``cuda_graph=True``, the function each CUDA graph captures) runs through
        ``torch.compile`` with them, compiled at its first call, so Inductor fuses the glue
        between the mixers' kernels (the fused bi-scan is a custom op it sees through). This
        compiles the backbone alone, where MMEngine's ``compile=`` compiles the whole
        ``train_step`` (losses, head and optimizer step with it). With ``cuda_graph=True``
        only the function each graph captures is compiled: evaluation, CPU and the shapes
        past MAX_CUDA_GRAPHS run eagerly, so images of many sizes (whole-image inference) never
        recompile, and a config that sets both trains its GPU steps compiled and stays eager
        on CPU. The mode must then not be one that captures CUDA graphs itself
        ('reduce-overhead', 'max-autotune'). Call after :meth:`_setup_cuda_graph`."""
        if compile is False or compile is None:
            return
        options = {} if compile is True else compile
        if not isinstance(options, dict):
            raise TypeError(f'compile must be a bool or a dict of torch.compile arguments, '
                            f'got {type(compile).__name__}')
        unknown = sorted(set(options) - set(COMPILE_ARGS))
        if unknown:
            raise ValueError(f'compile: unknown torch.compile argument(s) {", ".join(unknown)}; '
                             f'valid: {", ".join(COMPILE_ARGS)}')
        if self.cuda_graph and options.get('mode') in GRAPHING_COMPILE_MODES:
            raise ValueError(f"compile mode {options['mode']!r} captures CUDA graphs itself; "
                             f"with cuda_graph=True use mode 'default' or "
                             f"'max-autotune-no-cudagraphs'")
        self.compile = dict(options)

    def _through_compile(self, key, fn):
        """``fn``, or its ``torch.compile`` wrapper (one per key, made at first use) where
        ``compile`` is set."""
        if self.compile is None:
            return fn
        if key not in self._compiled:
            self._compiled[key] = torch.compile(fn, **self.compile)
        return self._compiled[key]

    def _setup_cuda_graph(self, cuda_graph, with_cp):
        """``cuda_graph=True``: in training on CUDA, forward and backward of the backbone
        replay a CUDA graph captured at the first step of each input shape (up to
        MAX_CUDA_GRAPHS), so the many small kernels of the mixers are launched without
        per-kernel host cost. Capture needs a fixed shape and no host work inside the step,
        hence no activation checkpointing and no 'random' scan (a new permutation per step).
        Under autocast (AMP) the graph is captured with autocast's weight cache off, so the
        casts of the updated weights are part of each replay. Evaluation, CPU and further
        shapes run eagerly. The capture's three warm-up steps update BatchNorm statistics
        (in the conv stem) three extra times.
        """
        if cuda_graph and with_cp:
            raise ValueError('cuda_graph=True cannot be combined with with_cp=True: activation '
                             'checkpointing recomputes the forward inside the backward')
        if cuda_graph:
            random = [n for n, m in self.named_modules()
                      if isinstance(m, TokenMixer) and m.scan == 'random']
            if random:
                raise ValueError(f"cuda_graph=True needs a fixed scan order; {random[0]} uses "
                                 f"scan='random' (valid with graphs: 'uni', 'bi', 'cross')")
        self.cuda_graph = bool(cuda_graph)

    def forward(self, x):
        self.check_input(x)
        if (self.cuda_graph and x.is_cuda and self.training and torch.is_grad_enabled()
                and not torch.cuda.is_current_stream_capturing()):
            graphed = self._graphed(x)
            if graphed is not None:
                return graphed(x, *self.parameters())
        if self.cuda_graph:      # compile= serves the graphs; the rest runs eagerly (below)
            return self._forward(x)
        return self._through_compile('forward', self._forward)(x)

    def _graphed(self, x):
        amp = torch.is_autocast_enabled('cuda')
        amp_dtype = torch.get_autocast_dtype('cuda') if amp else None
        key = (tuple(x.shape), x.dtype, x.device, amp_dtype, x.requires_grad)
        if key not in self._graphs:
            if len(self._graphs) >= MAX_CUDA_GRAPHS:
                warnings.warn(f'fla_mm: cuda_graph=True captured {MAX_CUDA_GRAPHS} input shapes '
                              f'already; {tuple(x.shape)} runs eagerly (fix the training '
                              f'input size to use graphs)')
                return None
            fn = _AliasedForward(self)
            sample = (x.detach().clone().requires_grad_(x.requires_grad), *fn.aliases())
            with torch.autocast('cuda', dtype=amp_dtype, enabled=amp, cache_enabled=False):
                self._graphs[key] = torch.cuda.make_graphed_callables(
                    self._through_compile(('graph',) + key, fn), sample,
                    allow_unused_input=True)
        return self._graphs[key]

    def _forward(self, x):
        raise NotImplementedError

    def check_input(self, x):
        if x.dim() != 4:
            raise ValueError(f'{type(self).__name__} input must be 4-D [B, C, H, W], got shape '
                             f'{tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'{type(self).__name__} expects {self.in_channels} input channels '
                             f'(in_channels), got {x.shape[1]} (input shape {tuple(x.shape)})')
        H, W = x.shape[2:]
        if H < self.patch_size or W < self.patch_size:
            raise ValueError(f'{type(self).__name__} input {H}x{W} is smaller than the patch '
                             f'size {self.patch_size}; images must be at least '
                             f'{self.patch_size}x{self.patch_size}')

    @staticmethod
    def out_hw(hw, stride):
        return tuple(math.ceil(s / stride) for s in hw)

    def _frozen_parts(self):
        raise NotImplementedError

    def _freeze_stages(self):
        for part in self._frozen_parts():
            if isinstance(part, nn.Parameter):
                part.requires_grad = False
                continue
            part.eval()
            for p in part.parameters():
                p.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def _default_init(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                if m.weight is not None:
                    nn.init.ones_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def init_weights(self):
        """Random init, or ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix=...)``.

        Pretrained goes through :func:`fla_mm.checkpoint.load_pretrained`, strict unless
        ``strict=False`` is in ``init_cfg``.
        """
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            kwargs = {k: v for k, v in cfg.items() if k != 'type'}
            if 'checkpoint' not in kwargs:
                raise ValueError(f'init_cfg {cfg} of type Pretrained needs a checkpoint path')
            load_pretrained(self, **kwargs)
            self._is_init = True
            self._freeze_stages()
            return
        self._default_init()
        super().init_weights()

    def reparameterize(self):
        """Fold train-time branches (RepMixer stages) for inference; no-op without them."""
        reparameterize_model(self)
        return self

    @property
    def num_layers(self):
        raise NotImplementedError

    def layer_id(self, name):
        """Layer id of parameter ``name`` (relative to the backbone) for lr decay:
        0 = stem, 1..num_layers = blocks in order, num_layers + 1 = everything after."""
        raise NotImplementedError
