"""Deployment export on CPU: tools/export.py writes ONNX that ONNX Runtime runs within 1e-4 of
PyTorch (UperNet on both layouts), and every mixer family's backbone goes through
torch.export as a graph of plain aten ops that computes what the eager model does."""
import os

import pytest
import torch

from conftest import ROOT, SEG_TOY, run_tool

from fla_mm.backbones import FLAPyramid
from fla_mm.layers.mixer import FAMILIES
from fla_mm.layers.scan import SCANS

PLAIN_SEG = os.path.join(ROOT, 'configs/upernet_gla_plain_ade20k.py')


def _export(tmp_path, config, *options, shape=(64, 64)):
    pytest.importorskip('mmseg')
    out = str(tmp_path / 'model.onnx')
    result = run_tool('export', config, 'none', '--shape', *map(str, shape), '--out', out,
                      *(('--cfg-options', *options) if options else ()))
    assert os.path.getsize(out) > 0 and result['out'] == out
    return result


def test_toy_upernet_gla_exports_to_onnx_and_matches_in_onnx_runtime(tmp_path, capsys):
    result = _export(tmp_path, SEG_TOY, shape=(64, 96))
    log = capsys.readouterr().out
    assert result['exporter'] == 'torch.onnx.export(dynamo=True)'
    assert 'random image: max abs diff' in log and 'toy image: max abs diff' in log
    assert result['max_rel_diff'] <= 1e-4
    import onnxruntime as ort
    session = ort.InferenceSession(result['out'], providers=['CPUExecutionProvider'])
    assert [tuple(o.shape) for o in session.get_outputs()] == [(1, 150, 64, 96)]


def test_plain_layout_upernet_exports_to_onnx(tmp_path):
    """The real plain-layout config at tiny width: patch 16, position embedding resized to
    the export size, simple feature pyramid."""
    config = tmp_path / 'upernet_gla_plain_tiny.py'
    config.write_text(
        f'_base_ = [{PLAIN_SEG!r}]\n'
        'norm_cfg = dict(type="BN", requires_grad=True)\n'
        'model = dict(\n'
        '    backbone=dict(arch=dict(_delete_=True, embed_dims=32, depth=2, num_heads=2)),\n'
        '    decode_head=dict(in_channels=[32, 32, 32, 32], channels=32, norm_cfg=norm_cfg),\n'
        '    auxiliary_head=dict(in_channels=32, channels=16, norm_cfg=norm_cfg))\n')
    result = _export(tmp_path, str(config), shape=(64, 80))
    assert result['max_rel_diff'] <= 1e-4


def test_check_fails_above_tolerance(tmp_path):
    pytest.importorskip('mmseg')
    with pytest.raises(SystemExit) as e:
        run_tool('export', SEG_TOY, 'none', '--shape', '32', '32', '--tolerance', '0',
                 '--out', str(tmp_path / 'm.onnx'))
    assert e.value.code == 1


TINY = dict(embed_dims=[16, 32], depths=[1, 1], num_heads=[1, 2])


def _exports_as_aten(backbone, x):
    """torch.export of ``backbone`` at ``x``: only aten ops in the graph (no Triton kernel,
    no custom op), and the program computes the eager outputs on another image too."""
    backbone.eval()
    program = torch.export.export(backbone, (x,))
    ops = {n.target for n in program.graph.nodes if n.op == 'call_function'}
    foreign = sorted(str(t) for t in ops
                     if not str(getattr(t, 'namespace', 'aten')) in ('aten', '_operator'))
    assert not foreign, foreign
    for image in (x, torch.randn_like(x)):
        with torch.no_grad():
            expected, got = backbone(image), program.module()(image)
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_family_backbone_goes_through_torch_export(family):
    torch.manual_seed(0)
    backbone = FLAPyramid(arch=TINY, mixer=family, out_indices=(0, 1), drop_path_rate=0.0)
    _exports_as_aten(backbone, torch.randn(1, 3, 40, 28))


@pytest.mark.parametrize('scan', [s for s in SCANS if s != 'bi'])
def test_scan_orders_go_through_torch_export(scan):
    """'bi' is every family's default above; 'random' is the identity in eval."""
    backbone = FLAPyramid(arch=TINY, mixer='gla', scan=scan, out_indices=(0, 1),
                          drop_path_rate=0.0)
    _exports_as_aten(backbone, torch.randn(1, 3, 40, 28))
