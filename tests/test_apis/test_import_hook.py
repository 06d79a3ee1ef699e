"""mmseg first, in a fresh process: the start-up hook provides ``mmcv.ops``.

``from mmseg.apis import init_model`` as a program's first line imports
``mmcv.ops``, which mmcv-lite lacks. Installing mmseg-dfq installs
``mmseg_dfq_hook.pth``; the tests install this checkout into throwaway
virtual environments (editable, and from a built wheel) that see the test
environment's packages but not its own mmseg-dfq install, and run mmseg
first there. The finder's decisions are also tested in-process.
"""

import glob
import importlib.util
import os
import os.path as osp
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest

import _mmseg_dfq_hook

from ..helpers import REPO_ROOT, run

needs_lite = pytest.mark.skipif(
    importlib.util.find_spec('mmcv._ext') is not None,
    reason='full mmcv installed: the hook stays inactive by design',
)

# mmseg first; no mmseg_dfq import anywhere. Checks that the stand-in came
# from compat.py without importing the rest of mmseg_dfq, and that a later
# `import mmseg_dfq` reuses it.
MMSEG_FIRST = textwrap.dedent(
    """
    from mmseg.apis import inference_model, init_model
    import sys
    import _mmseg_dfq_hook
    ops = sys.modules['mmcv.ops']
    assert getattr(ops, '__mmseg_dfq_fallback__', False), ops
    assert 'mmseg_dfq' not in sys.modules
    assert not [f for f in sys.meta_path if hasattr(f, '_mmseg_dfq_hook')]
    compat = sys.modules['mmseg_dfq.compat']
    import mmseg_dfq
    assert mmseg_dfq.compat is compat
    assert sys.modules['mmcv.ops'] is ops
    print('HOOK-OK', compat.__file__)
    """
)


def test_finder_ignores_other_modules():
    assert _mmseg_dfq_hook.MmcvOpsFinder.find_spec('numpy') is None
    assert _mmseg_dfq_hook.MmcvOpsFinder.find_spec('mmcv.opsx') is None


def test_finder_steps_aside_for_full_mmcv(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args):
        if name == 'mmcv._ext':  # as if mmcv had its compiled ops
            return importlib.machinery.ModuleSpec(name, None)
        return real(name, *args)

    monkeypatch.setattr(importlib.util, 'find_spec', find_spec)
    assert _mmseg_dfq_hook.MmcvOpsFinder.find_spec('mmcv.ops') is None


def test_install_is_idempotent_and_off_once_ops_exist(monkeypatch):
    monkeypatch.setattr(sys, 'meta_path', list(sys.meta_path))
    _mmseg_dfq_hook.remove()
    # This process has imported mmcv.ops already: nothing left to provide.
    assert 'mmcv.ops' in sys.modules
    _mmseg_dfq_hook.install()
    assert _mmseg_dfq_hook.MmcvOpsFinder not in sys.meta_path
    monkeypatch.delitem(sys.modules, 'mmcv.ops')
    _mmseg_dfq_hook.install()
    _mmseg_dfq_hook.install()
    assert sys.meta_path.count(_mmseg_dfq_hook.MmcvOpsFinder) == 1
    assert sys.meta_path[0] is _mmseg_dfq_hook.MmcvOpsFinder


@needs_lite
def test_mmseg_first_with_the_hook_module(tmp_path):
    """The finder in a fresh process (this checkout on PYTHONPATH)."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS='1')
    if not any(
        osp.isfile(osp.join(d, 'mmseg_dfq_hook.pth'))
        for d in site.getsitepackages()
    ):
        # Not installed here (an install older than the hook): mmseg first
        # fails on mmcv-lite, the failure the hook exists for.
        proc = subprocess.run(
            [sys.executable, '-c', 'from mmseg.apis import init_model'],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode != 0, proc.stderr
        assert 'mmcv._ext' in proc.stderr, proc.stderr
    code = 'import _mmseg_dfq_hook; _mmseg_dfq_hook.install()\n' + MMSEG_FIRST
    out = run([sys.executable, '-c', code], cwd=tmp_path, env=env)
    assert f'HOOK-OK {osp.join(REPO_ROOT, "mmseg_dfq", "compat.py")}' in out


def make_venv(path):
    """A venv without pip that sees this environment's site-packages.

    The test environment's ``.pth`` files are not processed there (its
    site-packages is a plain path entry), so its own mmseg-dfq install
    stays invisible and what gets installed into the venv is what runs.
    """
    subprocess.run(
        [sys.executable, '-m', 'venv', '--without-pip', str(path)],
        check=True,
        timeout=120,
    )
    python = osp.join(path, 'bin', 'python')
    site = subprocess.run(
        [
            python,
            '-c',
            'import sysconfig; print(sysconfig.get_path("purelib"))',
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with open(osp.join(site, '_test_env.pth'), 'w') as f:
        f.write(sysconfig.get_path('purelib') + '\n')
    return python, site


def pip_install(python, *args):
    # --ignore-installed: never touch the test environment's own install.
    return run(
        [
            python,
            '-m',
            'pip',
            'install',
            '--quiet',
            '--no-deps',
            '--no-build-isolation',
            '--ignore-installed',
            *args,
        ],
        cwd=REPO_ROOT,
        env=clean_env(),
    )


def clean_env():
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env['OMP_NUM_THREADS'] = '1'
    env['PIP_DISABLE_PIP_VERSION_CHECK'] = '1'
    return env


@needs_lite
@pytest.mark.parametrize('install', ['editable', 'wheel'])
def test_mmseg_first_after_install(install, tmp_path):
    python, site = make_venv(tmp_path / 'venv')
    if install == 'editable':
        pip_install(python, '-e', REPO_ROOT)
        expected = osp.join(REPO_ROOT, 'mmseg_dfq', 'compat.py')
    else:
        # From a clean copy of the sources: no build/ left in the checkout,
        # and only what setup.py packages can end up in the wheel.
        src = tmp_path / 'src'
        src.mkdir()
        for name in ('setup.py', 'README.md', '_mmseg_dfq_hook.py'):
            shutil.copy(osp.join(REPO_ROOT, name), src / name)
        shutil.copytree(
            osp.join(REPO_ROOT, 'mmseg_dfq'),
            src / 'mmseg_dfq',
            ignore=shutil.ignore_patterns('__pycache__'),
        )
        dist = tmp_path / 'dist'
        run(
            [
                python,
                '-m',
                'pip',
                'wheel',
                '--quiet',
                '--no-deps',
                '--no-build-isolation',
                '-w',
                dist,
                src,
            ],
            cwd=tmp_path,
            env=clean_env(),
        )
        (wheel,) = glob.glob(str(dist / '*.whl'))
        names = zipfile.ZipFile(wheel).namelist()
        assert 'mmseg_dfq_hook.pth' in names and '_mmseg_dfq_hook.py' in names
        pip_install(python, wheel)
        expected = osp.join(site, 'mmseg_dfq', 'compat.py')
    with open(osp.join(site, 'mmseg_dfq_hook.pth')) as f:
        line = f.read()
    assert line.startswith('import sys;') and '_mmseg_dfq_hook' in line
    # A program that never imports mmcv does not even load the hook module;
    # one stub finder waits for mmcv.ops.
    probe = (
        'import sys, json; print("_mmseg_dfq_hook" in sys.modules, '
        '"mmseg_dfq" in sys.modules, '
        'sum(hasattr(f, "_mmseg_dfq_hook") for f in sys.meta_path))'
    )
    out = run([python, '-c', probe], cwd=tmp_path, env=clean_env())
    assert out.split() == ['False', 'False', '1'], out
    out = run([python, '-c', MMSEG_FIRST], cwd=tmp_path, env=clean_env())
    assert f'HOOK-OK {expected}' in out
