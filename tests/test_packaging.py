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
