"""Shared fixtures: small generated datasets, made once per test session."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same global RNG state: a tolerance that a test's random
    inputs meet once is met every run, in any test order."""
    import random

    import numpy as np
    import torch
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope='session')
def toy_ade20k(tmp_path_factory):
    from fla_mm.toy_data import make_ade20k
    root = tmp_path_factory.mktemp('toy_ade20k')
    make_ade20k(str(root), num_train=8, num_val=4, seed=0)
    return str(root)


@pytest.fixture(scope='session')
def toy_coco(tmp_path_factory):
    from fla_mm.toy_data import make_coco
    root = tmp_path_factory.mktemp('toy_coco')
    make_coco(str(root), num_train=6, num_val=3, seed=0)
    return str(root)


def load_tool(name):
    """tools/<name>.py as a module, imported as the tools import each other (tools/ on sys.path)."""
    import importlib.util
    path = os.path.join(ROOT, 'tools', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'fla_mm_tool_{name}', path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(os.path.join(ROOT, 'tools'))
    return module


def run_tool(name, *args):
    """Run tools/<name>.py in-process (as a user would from the repo root) and return its result."""
    return load_tool(name).main(list(args))


def free_port():
    """A TCP port nobody listens on now, for a process group's rendezvous."""
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def gpu_report(line):
    """Print a line of a GPU result table; also append it to $FLA_MM_GPU_TABLE (xdist
    workers hide stdout), which is how the tables in README were collected."""
    print(line)
    path = os.environ.get('FLA_MM_GPU_TABLE')
    if path:
        with open(path, 'a') as f:
            f.write(line.strip() + '\n')
