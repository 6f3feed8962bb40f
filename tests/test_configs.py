"""Every config in configs/ parses and builds its model (forward on CPU for the toy ones)."""
import glob
import os

import pytest
import torch

from conftest import ROOT

CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                 if '_base_' not in p)


@pytest.mark.parametrize('path', CONFIGS, ids=[os.path.relpath(p, ROOT) for p in CONFIGS])
def test_config_builds_model(path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(path)
    scope = cfg.get('default_scope')
    pytest.importorskip(scope)
    init_default_scope(scope)
    import importlib
    importlib.import_module(f'{scope}.models')
    registry = importlib.import_module(f'{scope}.registry').MODELS
    assert cfg.custom_imports['imports'] == ['fla_mm']
    import fla_mm  # noqa: F401
    model = registry.build(cfg.model)
    backbone = model.backbone
    assert type(backbone).__module__.startswith('fla_mm.')
    from mmengine.optim import build_optim_wrapper
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert len(optim_wrapper.optimizer.param_groups) >= 1
    if '/toy/' in path:
        model.eval()
        with torch.no_grad():
            feats = backbone(torch.randn(1, 3, 64, 96))
        assert [f.shape[-2:] for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
