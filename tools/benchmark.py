"""Speed and memory of fla_mm mixers, backbones and models against softmax attention.

Three levels, one subcommand each; every run writes DIR/results.md, DIR/results.json and
log-log PNG plots of time and memory against token count or resolution::

    # raw ops ([B, L, H, d] q/k/v vs F.scaled_dot_product_attention) and TokenMixer
    python tools/benchmark.py mixer --families gla simple_gla retnet transformer --scans bi \
        --dtype bf16 --out work_dirs/bench/mixer
    # fla_mm backbones vs the same layout with mixer='transformer' (+ Swin / ConvNeXt)
    python tools/benchmark.py backbone --families gla --resolutions 224 512 1024 2048
    # every model the ways it runs fastest (eager, torch.compile modes, fla_mm's
    # cuda_graph=True, the whole step captured), held against the fastest Swin / ConvNeXt
    python tools/benchmark.py backbone --families gla simple_gla retnet --no-twin \
        --compile none default max-autotune-no-cudagraphs --fla-compile none default \
        --backbone-cuda-graph --cuda-graph --resolutions 512 --batch-size 2 --mode fwdbwd
    # the ops at the exact q/k/v/gate shapes of each FLAPyramid-T and FLAPlain-S stage,
    # next to SDPA, with the achieved bandwidth by minimal traffic
    python tools/benchmark.py mixer --op-shapes backbone --families gla simple_gla retnet \
        --resolutions 512 1024 --batch-size 2 8 --cuda-graph
    # a whole segmentor / detector from its config, forward ('tensor') or loss + backward
    python tools/benchmark.py model configs/upernet_gla_ade20k.py --resolutions 512
    # one table and plots from several runs (e.g. each cut off by a GPU time limit)
    python tools/benchmark.py report work_dirs/bench/run1 work_dirs/bench/run2 --out DIR
    # cold compile time of the fused bi-scan kernels for sm_90 (no GPU needed)
    python tools/benchmark.py compile --kernels gla

Method (printed with the results and stored in results.json): a cold first call (Triton
compile + autotune included, timed on its own), warm-up calls, then ``--iters`` calls each
timed with CUDA events (time.perf_counter on CPU); median, p10 and p90 over them; peak
``torch.cuda.max_memory_allocated`` over the timed calls, reset per case (parameters and
inputs included). Ratios are against the softmax baseline measured in the same run, and at
the backbone level also against the fastest way Swin and ConvNeXt ran in it. With
``--profile-steps`` (the backbone level's default) a few more steps run under the PyTorch
profiler for GPU kernel time, kernels and launches per step. A ``torch.compile`` case's first
call is its compile time, reported apart from the step times. A case that runs out of
memory, fails, or fails to compile records that in its row and the run goes on. bf16/fp16 run
under ``torch.autocast`` with fp32 parameters (as in AMP training); raw ops take the dtypes
the mixer hands them (bf16 q/k/v, fp32 decays).

Only torch, mmengine and fla_mm are needed for the ``mixer`` and ``backbone`` levels;
matplotlib (plots), mmseg/mmdet (``model`` level, Swin baseline) and torchvision (ConvNeXt,
Swin fallback) are imported only where used.
"""
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.dirname(osp.abspath(__file__))          # where the bench package lives
for path in (ROOT, TOOLS):
    if path not in sys.path:
        sys.path.insert(0, path)

from bench.cli import main  # noqa: E402

if __name__ == '__main__':
    main()
