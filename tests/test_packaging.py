"""The package installs into a researcher's environment without replacing its torch, and the
tested version set (requirements/constraints.txt) satisfies what setup.py declares."""
import functools
import os
import subprocess
import sys

import pytest
from packaging.requirements import Requirement

from conftest import ROOT


@functools.lru_cache(None)
def _declared():
    """setup.py's install_requires and extras, read by running it as pip would."""
    from setuptools import distutils  # noqa: F401  (setuptools' distutils shim)
    from distutils.core import run_setup
    dist = run_setup(os.path.join(ROOT, 'setup.py'), stop_after='init')
    extras = [r for reqs in dist.extras_require.values() for r in reqs]
    return [Requirement(r) for r in dist.install_requires], [Requirement(r) for r in extras]


def _constraints():
    pins = {}
    for line in open(os.path.join(ROOT, 'requirements', 'constraints.txt')):
        line = line.split('#')[0].strip()
        if line:
            req = Requirement(line)
            pins[req.name.lower()] = req
    return pins


@pytest.mark.parametrize('name,versions', [
    ('torch', ['2.7.0', '2.11.0', '2.13.0']),     # FLA 0.6.0's floor, the GPU image, CPU CI
    ('triton', ['3.3.0', '3.6.0', '3.7.1']),
    ('mmengine', ['0.10.0', '0.10.7']),
])
def test_core_requirements_are_floors_not_pins(name, versions):
    core, _ = _declared()
    req = next(r for r in core if r.name == name)
    assert not any(s.operator in ('==', '===', '~=') for s in req.specifier), str(req)
    for v in versions:
        assert req.specifier.contains(v, prereleases=True), f'{req} refuses {name} {v}'


def test_tested_set_satisfies_the_declared_requirements():
    core, extras = _declared()
    pins = _constraints()
    for req in core + extras:
        pin = pins.get(req.name.lower())
        if pin is None or not any(s.operator == '==' for s in pin.specifier):
            continue
        version = next(s.version for s in pin.specifier if s.operator == '==')
        assert req.specifier.contains(version, prereleases=True), (str(req), str(pin))


def test_installed_environment_is_consistent():
    """What tools/install.sh installed leaves pip nothing to complain about."""
    out = subprocess.run([sys.executable, '-m', 'pip', 'check'], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_install_into_an_environment_with_another_torch_keeps_it(tmp_path):
    """fla_mm installed with ``--no-deps`` into an environment that has its own torch (here a
    torch 2.7.0 distribution, as a cluster image would have) leaves that torch, and the
    installed package's requirements accept it. The package is built once, as pip builds it,
    with this environment's setuptools (the new one has none), then installed offline."""
    import shutil
    src = tmp_path / 'src'
    shutil.copytree(os.path.join(ROOT, 'fla_mm'), src / 'fla_mm',
                    ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copy(os.path.join(ROOT, 'setup.py'), src / 'setup.py')
    wheels = tmp_path / 'wheels'
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-index',
                    '--no-build-isolation', '-w', str(wheels), str(src)], check=True)
    env = tmp_path / 'env'
    base = getattr(sys, '_base_executable', sys.executable)
    subprocess.run([base, '-m', 'venv', str(env)], check=True)
    python = str(env / 'bin' / 'python')
    site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                          capture_output=True, text=True, check=True).stdout.strip()
    info = os.path.join(site, 'torch-2.7.0.dist-info')
    os.makedirs(info)
    with open(os.path.join(info, 'METADATA'), 'w') as f:
        f.write('Metadata-Version: 2.1\nName: torch\nVersion: 2.7.0\n')
    open(os.path.join(info, 'RECORD'), 'w').close()
    wheel = next(wheels.glob('fla_mm-*.whl'))
    subprocess.run([python, '-m', 'pip', 'install', '-q', '--no-deps', '--no-index', str(wheel)],
                   check=True)
    probe = subprocess.run([python, '-c', 'import importlib.metadata as m; print(m.version("torch")); '
                            'print(*m.requires("fla_mm"), sep="\\n")'],
                           capture_output=True, text=True, check=True).stdout.split('\n')
    assert probe[0] == '2.7.0'
    torch_req = next(Requirement(r) for r in probe[1:] if r.startswith('torch'))
    assert torch_req.specifier.contains('2.7.0'), str(torch_req)
