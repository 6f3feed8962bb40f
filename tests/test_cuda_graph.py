"""cuda_graph=True: the backbone's training step replays a CUDA graph; elsewhere it is eager."""
import pytest
import torch

from fla_mm.backbones import FLAPlain, FLAPyramid

TINY = dict(embed_dims=[16, 32, 32, 64], depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4])
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


def _pair(**kw):
    """Two backbones with the same weights, eager and cuda_graph=True."""
    torch.manual_seed(0)
    a = FLAPyramid(arch=TINY, drop_path_rate=0.0, **kw)
    b = FLAPyramid(arch=TINY, drop_path_rate=0.0, cuda_graph=True, **kw)
    b.load_state_dict(a.state_dict())
    return a, b


def test_cpu_runs_eagerly_with_the_same_state_dict():
    a, b = _pair(mixer='gla', scan='bi')
    assert a.state_dict().keys() == b.state_dict().keys()
    x = torch.randn(2, 3, 64, 96)
    for m in (a, b):
        sum(f.square().sum() for f in m(x)).backward()
    for fa, fb in zip(a(x), b(x)):
        torch.testing.assert_close(fa, fb)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)
    assert b._graphs == {}


def test_capture_function_runs_on_parameter_aliases():
    """What is captured is the eager forward as a function of aliases of the parameters:
    same outputs and gradients as the eager backbone, the real parameters' gradients left
    alone (DDP holds their AccumulateGrad nodes), and in-place optimizer steps seen."""
    from fla_mm.backbones.base import _AliasedForward
    torch.manual_seed(0)
    m = FLAPyramid(arch=TINY, mixer='gla', scan='bi', drop_path_rate=0.0).eval()
    fn, x = _AliasedForward(m), torch.randn(2, 3, 64, 96)
    aliases = fn.aliases()
    assert all(a.data_ptr() == p.data_ptr() and a is not p
               for a, p in zip(aliases, m.parameters()))
    proj = [torch.randn(f.shape) for f in m(x)]
    loss = lambda feats: sum((f * r).sum() for f, r in zip(feats, proj))  # noqa: E731
    loss(fn(x, *aliases)).backward()
    assert all(p.grad is None for p in m.parameters())
    loss(m(x)).backward()
    for (n, p), a in zip(m.named_parameters(), aliases):
        torch.testing.assert_close(a.grad, p.grad, msg=n)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(0.5)
    for fa, fb in zip(fn(x, *aliases), m(x)):
        torch.testing.assert_close(fa, fb)


def test_capture_function_compiles_as_one_graph():
    """With compile= and cuda_graph=True, what each graph captures is the aliased forward
    through torch.compile: Dynamo traces it (functional_call over the aliases) as one graph,
    with the eager function's outputs, and gradients reach the aliases."""
    from fla_mm.backbones.base import _AliasedForward
    torch.manual_seed(0)
    m = FLAPyramid(arch=TINY, mixer='gla', scan='bi', drop_path_rate=0.0)
    fn, x = _AliasedForward(m), torch.randn(2, 3, 64, 96)
    aliases = fn.aliases()
    explained = torch._dynamo.explain(fn)(x, *aliases)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    torch._dynamo.reset()
    got = torch.compile(fn, backend='aot_eager', fullgraph=True)(x, *aliases)
    for a, b in zip(got, fn(x, *aliases)):
        torch.testing.assert_close(a, b)
    sum(f.sum() for f in got).backward()
    assert all(a.grad is not None for a in aliases)


def test_cuda_graph_refuses_what_capture_cannot_replay():
    with pytest.raises(ValueError, match='with_cp'):
        FLAPyramid(arch=TINY, cuda_graph=True, with_cp=True)
    with pytest.raises(ValueError, match="scan='random'"):
        FLAPlain(arch=dict(embed_dims=32, depth=2, num_heads=2), scan='random', cuda_graph=True)


def _sgd_steps(a, b, amp, steps=3):
    """``steps`` SGD steps of backbones ``a`` and ``b`` on the same new input each step (one
    shape; fp32, or under bf16 autocast as AMP runs it) and a fixed random projection of the
    maps as loss; returns the last input and the worst relative weight difference."""
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (a, b)]
    gen = torch.Generator(device='cuda').manual_seed(0)
    proj = None
    for _ in range(steps):
        x = torch.randn(2, 3, 64, 96, device='cuda', generator=gen)
        for m, opt in zip((a, b), opts):
            with torch.autocast('cuda', torch.bfloat16, enabled=amp):
                feats = [f.float() for f in m(x)]
            if proj is None:
                proj = [torch.randn(f.shape, device='cuda', generator=gen) for f in feats]
            sum((f * r).sum() for f, r in zip(feats, proj)).backward()
            opt.step()
            opt.zero_grad()
    worst = max(((p - q).abs().max() / p.abs().max().clamp_min(1e-6)).item()
                for p, q in zip(a.parameters(), b.parameters()))
    return x, worst


@cuda
@pytest.mark.parametrize('amp', [False, True], ids=['fp32', 'bf16-autocast'])
@pytest.mark.parametrize('mixer', ['gla', 'simple_gla', 'gla-two_call'])
def test_graphed_training_steps_match_eager(mixer, amp):
    """Three SGD steps (new inputs each step, one shape, fp32 or under bf16 autocast as AMP
    runs it): the graphed backbone ends with the weights of the eager one; evaluation runs
    eagerly and a second shape gets a second graph. 'gla-two_call': FLA's chunk_gla kernels
    inside the graph (the default GLA bi-scan is fla_mm's fused kernel)."""
    mixer, _, bi_kernel = mixer.partition('-')
    kw = dict(mixer_cfg=dict(bi_kernel=bi_kernel)) if bi_kernel else {}
    a, b = (m.cuda().train() for m in _pair(mixer=mixer, scan='bi', **kw))
    x, worst = _sgd_steps(a, b, amp)
    assert len(b._graphs) == 1
    assert worst < (1e-2 if amp else 1e-4), worst
    b.eval()            # eager: no new graph (its BatchNorm statistics saw 3 extra warm-ups)
    with torch.no_grad():
        yb = b(x)
    assert len(b._graphs) == 1 and all(torch.isfinite(t).all() for t in yb)
    b.train()(torch.randn(1, 3, 32, 32, device='cuda'))[0].sum().backward()
    assert len(b._graphs) == 2


@cuda
def test_graphed_backbone_trains_under_ddp(tmp_path):
    """Under DistributedDataParallel (one NCCL process) the capture works and the gradients
    reach DDP: DDP keeps the parameters' AccumulateGrad nodes, which a capture through the
    real parameters would make the legacy stream depend on (a CUDA error)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    dist.init_process_group('nccl', init_method=f'file://{tmp_path}/pg', rank=0, world_size=1)
    try:
        a, b = (m.cuda().train() for m in _pair(mixer='gla', scan='bi'))
        ddp = DistributedDataParallel(b, device_ids=[torch.cuda.current_device()])
        opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (a, ddp)]
        gen = torch.Generator(device='cuda').manual_seed(0)
        for _ in range(3):
            x = torch.randn(2, 3, 64, 96, device='cuda', generator=gen)
            for m, opt in zip((a, ddp), opts):
                sum(f.float().square().mean() for f in m(x)).backward()
                opt.step()
                opt.zero_grad()
        assert len(b._graphs) == 1
        worst = max(((p - q).abs().max() / p.abs().max().clamp_min(1e-6)).item()
                    for p, q in zip(a.parameters(), b.parameters()))
        assert worst < 1e-4, worst
    finally:
        dist.destroy_process_group()


@cuda
@pytest.mark.parametrize('amp', [False, True], ids=['fp32', 'bf16-autocast'])
def test_compiled_graphed_training_steps_match_eager(amp):
    """compile=True inside cuda_graph=True (Inductor's kernels captured in the backbone's
    graph): three SGD steps end with the eager backbone's weights, within the float
    reordering of Inductor's fusions (bf16: the tolerance of the graphed test)."""
    torch.manual_seed(0)
    a = FLAPyramid(arch=TINY, mixer='gla', scan='bi', drop_path_rate=0.0).cuda().train()
    b = FLAPyramid(arch=TINY, mixer='gla', scan='bi', drop_path_rate=0.0, cuda_graph=True,
                   compile=True).cuda().train()
    b.load_state_dict(a.state_dict())
    _, worst = _sgd_steps(a, b, amp)
    assert len(b._graphs) == 1 and list(b._compiled) == [('graph',) + next(iter(b._graphs))]
    assert worst < (1e-2 if amp else 1e-3), worst
