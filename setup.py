"""Install mmseg-dfq: ``pip install -e .`` (torch + torchvision first)."""

import os
import re
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# Installed into site-packages, where Python runs this line at start-up: a
# stub finder that does nothing until mmcv.ops is imported, then lets
# _mmseg_dfq_hook provide mmcv.ops on mmcv-lite (inactive with a full mmcv).
# Inline so that start-up imports nothing; idempotent because site.py may
# process a site-packages folder twice (seen in a venv made from a venv).
HOOK_PTH = 'mmseg_dfq_hook.pth'
HOOK_LINE = (
    'import sys; any(getattr(f, "_mmseg_dfq_hook", 0) for f in sys.meta_path)'
    ' or sys.meta_path.insert(0, type('
    "'MmsegDfqStartupFinder', (), dict(_mmseg_dfq_hook=True, "
    'find_spec=staticmethod(lambda name, path=None, target=None: '
    "__import__('_mmseg_dfq_hook').find_spec(name, path, target) "
    "if name == 'mmcv.ops' else None))))\n"
)


class BuildPyWithHook(build_py):
    """build_py that also writes the start-up ``.pth`` next to the modules.

    A wheel (``pip install .``) puts build_py's outputs into site-packages,
    where Python processes ``.pth`` files. An editable install
    (``pip install -e .``, setuptools >= 64) packs only its unpacked wheel
    folder, which is the install command's ``install_lib`` there.
    """

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            folder = self.get_finalized_command('install').install_lib
        else:
            folder = self.build_lib
        self.mkpath(folder)
        with open(os.path.join(folder, HOOK_PTH), 'w') as f:
            f.write(HOOK_LINE)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, 'editable_mode', False):
            return outputs
        return outputs + [os.path.join(self.build_lib, HOOK_PTH)]


def _version():
    text = (
        Path(__file__)
        .with_name('mmseg_dfq')
        .joinpath('version.py')
        .read_text()
    )
    return re.search(r"__version__ = '([^']+)'", text).group(1)


def _mmcv_requirement():
    # A full mmcv (with compiled ops) that is already installed is used as is;
    # otherwise mmcv-lite is enough, because DFQ needs no compiled op.
    try:
        from importlib.metadata import PackageNotFoundError, version

        try:
            full = version('mmcv')
        except PackageNotFoundError:
            full = None
    except ImportError:  # pragma: no cover
        full = None
    if full is not None:
        return 'mmcv>=2.0.0rc4,<2.2.0'
    return 'mmcv-lite>=2.0.0rc4,<2.2.0'


setup(
    name='mmseg-dfq',
    version=_version(),
    description='DFQ (decoupled feature queries, AAAI 2024) for '
    'domain-generalized medical image segmentation, as an '
    'mmsegmentation 1.x plugin',
    long_description=Path(__file__).with_name('README.md').read_text(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.8',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    py_modules=['_mmseg_dfq_hook'],
    cmdclass={'build_py': BuildPyWithHook},
    install_requires=[
        # torch is not pinned: users bring the build for their CUDA first,
        # together with the torchvision built for it (README, Install).
        'torch>=1.12',
        # mmpretrain imports torchvision but does not declare it.
        'torchvision',
        'mmengine>=0.10.5,<0.11',
        _mmcv_requirement(),
        'mmsegmentation==1.2.2',
        'mmpretrain>=1.2.0,<1.3',
        'nibabel>=4.0',
        'scipy>=1.8',
        'numpy',
        'opencv-python',
        'matplotlib',
        'scikit-learn',
        'tqdm',
        # mmengine 0.10 resolves 'mmseg::' config bases with pkg_resources,
        # which setuptools >= 81 no longer ships.
        'setuptools<81',
        # mmsegmentation 1.2.2 imports these at import time.
        'ftfy',
        'regex',
    ],
    extras_require={
        'tests': ['pytest>=7', 'medpy>=0.5', 'ruff>=0.5'],
    },
    zip_safe=False,
)
