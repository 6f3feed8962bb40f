"""NonBlockingSyncBN: SyncBN's math over the ranks of a process group, without host waits."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from conftest import free_port

from fla_mm.layers import sync_bn
from fla_mm.layers.sync_bn import NonBlockingSyncBN

C = 5


def _inputs(offset=1.0):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, C, 7, 3, generator=gen) * 3 + offset
    w_out = torch.randn(6, C, 7, 3, generator=gen)
    return x, w_out


def _affine(bn):
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, C))
        bn.bias.copy_(torch.linspace(-1, 1, C))
    return bn


def _rank(rank, world, port, out_dir, offset):
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=world)
    x, w_out = _inputs(offset)
    bn = _affine(NonBlockingSyncBN(C, momentum=0.3))
    sizes = [1, 5] if world == 2 else None       # unequal batches across the ranks
    xs = (x.split(sizes) if sizes else x.chunk(world))[rank].clone().requires_grad_()
    ws = (w_out.split(sizes) if sizes else w_out.chunk(world))[rank]
    for _ in range(2):                              # two steps: running stats accumulate
        bn.zero_grad()
        xs.grad = None
        y = bn(xs)
        (y * ws).sum().backward()
    torch.save(dict(y=y.detach(), dx=xs.grad, dw=bn.weight.grad, db=bn.bias.grad,
                    rm=bn.running_mean, rv=bn.running_var, n=bn.num_batches_tracked),
               f'{out_dir}/{rank}.pt')
    dist.destroy_process_group()


@pytest.mark.parametrize('offset', [1.0, 1000.0])     # 1000: activations far from zero
def test_two_ranks_match_batchnorm_on_the_whole_batch(tmp_path, offset):
    mp.spawn(_rank, args=(2, free_port(), str(tmp_path), offset), nprocs=2)
    got = [torch.load(tmp_path / f'{r}.pt', weights_only=True) for r in range(2)]

    x, w_out = _inputs(offset)
    ref = _affine(nn.BatchNorm2d(C, momentum=0.3))
    xr = x.clone().requires_grad_()
    for _ in range(2):
        ref.zero_grad()
        xr.grad = None
        y = ref(xr)
        (y * w_out).sum().backward()
    # fp32 holds x only to 6e-8 |x|: the outputs' absolute error grows with the offset
    atol = 1e-5 * (1 + offset / 100)
    close = (lambda a, b: torch.testing.assert_close(a, b, rtol=1e-4, atol=atol))
    close(torch.cat([g['y'] for g in got]), y.detach())
    close(torch.cat([g['dx'] for g in got]), xr.grad)
    close(got[0]['dw'] + got[1]['dw'], ref.weight.grad)     # DDP then sums / averages these
    close(got[0]['db'] + got[1]['db'], ref.bias.grad)
    for g in got:
        close(g['rm'], ref.running_mean)
        close(g['rv'], ref.running_var)
        assert g['n'].item() == 2


def test_single_process_is_batchnorm():
    x, _ = _inputs()
    a, b = _affine(NonBlockingSyncBN(C)), _affine(nn.BatchNorm2d(C))
    torch.testing.assert_close(a(x), b(x))
    a.eval(), b.eval()
    torch.testing.assert_close(a(x), b(x))


def test_builds_from_a_norm_cfg_with_syncbn_parameter_names():
    """Configs swap it in with norm_cfg=dict(type='NonBlockingSyncBN'); ConvModule names it
    'bn' as it does SyncBN, so checkpoints load either way."""
    pytest.importorskip('mmcv')
    from mmcv.cnn import ConvModule

    import fla_mm  # noqa: F401  (registers the layer)
    a = ConvModule(3, 4, 3, norm_cfg=dict(type='NonBlockingSyncBN', requires_grad=True))
    b = ConvModule(3, 4, 3, norm_cfg=dict(type='SyncBN', requires_grad=True))
    assert isinstance(a.bn, NonBlockingSyncBN)
    assert a.state_dict().keys() == b.state_dict().keys()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_no_host_sync_on_cuda(monkeypatch):
    """With CUDA's sync debug mode set to error, a training step of the distributed path
    (one-rank NCCL group, forced) raises if anything waits for the GPU."""
    dist.init_process_group('nccl', init_method=f'tcp://127.0.0.1:{free_port()}', rank=0,
                            world_size=1)
    try:
        monkeypatch.setattr(sync_bn, '_distributed', lambda: True)
        bn = NonBlockingSyncBN(C).cuda()
        x = torch.randn(4, C, 8, 8, device='cuda', requires_grad=True)
        bn(x).square().mean()       # first call: NCCL communicator set-up may sync
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')
        try:
            bn(x).square().mean().backward()
        finally:
            torch.cuda.set_sync_debug_mode('default')
        assert torch.isfinite(x.grad).all()
    finally:
        dist.destroy_process_group()
