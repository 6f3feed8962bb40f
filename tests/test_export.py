"""Deployment export on CPU: tools/export.py writes ONNX that ONNX Runtime runs within 1e-4 of
PyTorch (UperNet on both layouts), and every mixer family's backbone goes through
torch.export as a graph of plain aten ops that computes what the eager model does."""
import os

import pytest
import torch

from conftest import DET_TOY, ROOT, SEG_TOY, load_tool, run_tool

from fla_mm.backbones import FLAPyramid
from fla_mm.layers.mixer import FAMILIES
from fla_mm.layers.scan import SCANS

PLAIN_SEG = os.path.join(ROOT, 'configs/upernet_gla_plain_ade20k.py')


@pytest.fixture
def plain_tiny(tmp_path):
    """The real plain-layout config (patch 16, position embedding resized to the input, simple
    feature pyramid) with only the widths shrunk."""
    pytest.importorskip('mmseg')
    config = tmp_path / 'upernet_gla_plain_tiny.py'
    config.write_text(
        f'_base_ = [{PLAIN_SEG!r}]\n'
        'norm_cfg = dict(type="BN", requires_grad=True)\n'
        'model = dict(\n'
        '    backbone=dict(arch=dict(_delete_=True, embed_dims=32, depth=2, num_heads=2)),\n'
        '    decode_head=dict(in_channels=[32, 32, 32, 32], channels=32, norm_cfg=norm_cfg),\n'
        '    auxiliary_head=dict(in_channels=32, channels=16, norm_cfg=norm_cfg))\n')
    return str(config)


def _export(tmp_path, config, shape, *options):
    pytest.importorskip('mmseg')
    out = str(tmp_path / 'model')
    result = run_tool('export', config, 'none', '--shape', *map(str, shape), '--out', out,
                      *options)
    assert result['out'] == out and os.path.getsize(out) > 0
    return result


def _onnx_output_shapes(path):
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    return [tuple(o.shape) for o in session.get_outputs()]


def test_toy_upernet_gla_exports_to_onnx_and_matches_in_onnx_runtime(tmp_path, capsys):
    result = _export(tmp_path, SEG_TOY, (64, 96))
    log = capsys.readouterr().out
    assert result['exporter'] == 'torch.onnx.export(dynamo=True)'
    assert 'random image: max abs diff' in log and 'toy image: max abs diff' in log
    assert result['max_rel_diff'] <= 1e-4
    from mmengine.config import Config
    classes = Config.fromfile(SEG_TOY).model.decode_head.num_classes
    assert _onnx_output_shapes(result['out']) == [(1, classes, 64, 96)]   # logits at input size
    assert os.environ.get('FLA_MM_BACKEND') != 'reference'   # the export's switch did not leak


def test_plain_layout_upernet_exports_to_onnx(tmp_path, plain_tiny):
    result = _export(tmp_path, plain_tiny, (64, 80))
    assert result['exporter'] == 'torch.onnx.export(dynamo=True)'
    assert result['max_rel_diff'] <= 1e-4
    assert _onnx_output_shapes(result['out']) == [(1, 150, 64, 80)]


def test_toy_mask_rcnn_exports_backbone_neck_and_rpn_maps(tmp_path):
    pytest.importorskip('mmdet')
    pytest.importorskip('mmcv.ops')
    result = _export(tmp_path, DET_TOY, (64, 96))
    assert result['max_rel_diff'] <= 1e-4
    shapes = _onnx_output_shapes(result['out'])
    strides = (4, 8, 16, 32, 64)                      # FPN levels (the last one pooled)
    assert shapes[:5] == [(1, 64, -(-64 // s), -(-96 // s)) for s in strides]
    assert len(shapes) == 15 and [s[1] for s in shapes[5:10]] == [3] * 5   # 3 anchors each


def test_torch_export_format_reloads_and_matches(tmp_path, plain_tiny):
    result = _export(tmp_path, plain_tiny, (32, 48), '--format', 'torch_export')
    assert result['exporter'] == 'torch.export.export'
    assert result['max_rel_diff'] <= 1e-4
    program = torch.export.load(result['out'])
    assert program.module()(torch.randn(1, 3, 32, 48)).shape == (1, 150, 32, 48)


def test_check_fails_above_tolerance(tmp_path, plain_tiny):
    with pytest.raises(SystemExit) as e:
        _export(tmp_path, plain_tiny, (32, 32), '--tolerance', '0')
    assert e.value.code == 1


TINY = dict(embed_dims=[32], depths=[1], num_heads=[2])


def _exports_as_aten(backbone, x):
    """torch.export of ``backbone`` at ``x``: only aten ops in the graph (no Triton kernel,
    no custom op), and the program computes the eager outputs on another image too."""
    backbone.eval()
    program = torch.export.export(backbone, (x,))
    ops = {n.target for n in program.graph.nodes if n.op == 'call_function'}
    foreign = sorted(str(t) for t in ops
                     if str(getattr(t, 'namespace', 'aten')) not in ('aten', '_operator'))
    assert not foreign, foreign
    for image in (x, torch.randn_like(x)):
        with torch.no_grad():
            expected, got = backbone(image), program.module()(image)
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_family_backbone_goes_through_torch_export(family):
    torch.manual_seed(0)
    backbone = FLAPyramid(arch=TINY, mixer=family, out_indices=(0,), drop_path_rate=0.0)
    _exports_as_aten(backbone, torch.randn(1, 3, 44, 24))


@pytest.mark.parametrize('scan', [s for s in SCANS if s != 'bi'])
def test_scan_orders_go_through_torch_export(scan):
    """'bi' is every family's default above; 'random' is the identity in eval."""
    backbone = FLAPyramid(arch=TINY, mixer='gla', scan=scan, out_indices=(0,),
                          drop_path_rate=0.0)
    _exports_as_aten(backbone, torch.randn(1, 3, 44, 24))


@pytest.mark.parametrize('n', [32, 16, 5, 1])
def test_block_inverse_solves_as_torch_linalg_does(n):
    """The triangular solve ONNX lacks, as export writes it, for every side and triangle."""
    solve = load_tool('export').solve_triangular_by_blocks
    A = torch.randn(2, 3, n, n, dtype=torch.float64) * 0.3 + 2 * torch.eye(n)
    for left, B in ((True, torch.randn(2, 3, n, 4, dtype=torch.float64)),
                    (False, torch.randn(2, 3, 4, n, dtype=torch.float64))):
        for upper in (False, True):
            for unit in (False, True):
                expected = torch.linalg.solve_triangular(A, B, upper=upper, left=left,
                                                         unitriangular=unit)
                got = solve(A, B, upper=upper, left=left, unitriangular=unit)
                torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('family', ['delta_net', 'rwkv7'])
def test_families_with_triangular_solves_match_in_onnx_runtime(family, tmp_path):
    import onnxruntime as ort
    tool = load_tool('export')
    backbone = FLAPyramid(arch=TINY, mixer=family, out_indices=(0,), drop_path_rate=0.0).eval()
    x = torch.randn(1, 3, 44, 24)
    out = str(tmp_path / f'{family}.onnx')
    with torch.no_grad():
        assert tool.export(backbone, x, out, 'onnx', ['map']) == 'torch.onnx.export(dynamo=True)'
        expected = backbone(x)[0].numpy()
    session = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    got = session.run(None, {'image': x.numpy()})[0]
    assert tool.compare([expected], [got])[1] <= 1e-5
