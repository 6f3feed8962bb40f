"""Generate a deterministic toy ADE20K or COCO dataset (see fla_mm/toy_data.py).

Example: python tools/make_toy_data.py ade20k data/toy_ade --num-train 40
"""
import argparse
import importlib.util
import os.path as osp
import time

# Load the module by path: `import fla_mm` would pull in torch/mmengine via the
# package __init__, which the generator does not need.
_spec = importlib.util.spec_from_file_location('fla_mm_toy_data', osp.join(
    osp.dirname(osp.dirname(osp.abspath(__file__))), 'fla_mm', 'toy_data.py'))
_toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_toy)
make_ade20k, make_coco = _toy.make_ade20k, _toy.make_coco


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('kind', choices=['ade20k', 'coco'])
    p.add_argument('out_dir')
    p.add_argument('--num-train', type=int, default=40)
    p.add_argument('--num-val', type=int, default=12)
    p.add_argument('--size', type=int, nargs='+', default=None,
                   help='S or H W (default 160 for ade20k, 192 for coco)')
    p.add_argument('--seed', type=int, default=0)
    a = p.parse_args(argv)
    size = a.size or [160 if a.kind == 'ade20k' else 192]
    size = size[0] if len(size) == 1 else tuple(size[:2])
    fn = make_ade20k if a.kind == 'ade20k' else make_coco
    t = time.time()
    s = fn(a.out_dir, num_train=a.num_train, num_val=a.num_val, size=size, seed=a.seed)
    verb = 'already up to date' if s['cached'] else f'wrote in {time.time() - t:.2f}s'
    print(f"{a.kind} toy dataset at {s['root']} ({verb}): "
          f"{s['num_train']} train + {s['num_val']} val images, size {s['size']}, "
          f"seed {s['seed']}")
    if 'num_annotations' in s:
        print(f"  instances: {s['num_annotations']}")
    print(f"  classes: {s['classes']}")
    return s


if __name__ == '__main__':
    main()
