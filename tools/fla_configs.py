"""Ship FLA's autotune picks with fla_mm: after a GPU run, turn the autotune results Triton
cached into fla_mm/fla_configs/<GPU>/<kernel>.json (see fla_mm/ops/fla_configs.py).

    python tools/fla_configs.py ~/.triton/cache                 # GPU name from this machine
    python tools/fla_configs.py DIR --gpu-name "NVIDIA H200"    # results brought from elsewhere
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fla_mm.ops.fla_configs import CONFIG_ROOT, collect  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('triton_cache', type=Path, help='a Triton cache directory (TRITON_CACHE_DIR)')
    p.add_argument('--gpu-name', help='the GPU the results were measured on '
                   '(default: this machine\'s first CUDA device)')
    p.add_argument('--out', type=Path, default=CONFIG_ROOT)
    args = p.parse_args(argv)
    files = sorted(args.triton_cache.rglob('*.autotune.json'))
    if not files:
        p.error(f'no *.autotune.json under {args.triton_cache}: run FLA kernels there first '
                '(FLA_CACHE_RESULTS=1, the default, makes Triton keep its autotune results)')
    gpu = args.gpu_name
    if gpu is None:
        import torch
        if not torch.cuda.is_available():
            p.error('no CUDA device here: say which GPU measured these with --gpu-name')
        gpu = torch.cuda.get_device_name(0)
    counts = collect(files, gpu, args.out)
    for kernel, n in counts.items():
        print(f'{kernel:45s} {n} key(s)')
    print(f'{len(files)} results -> {len(counts)} kernel files in {args.out}')


if __name__ == '__main__':
    main()
