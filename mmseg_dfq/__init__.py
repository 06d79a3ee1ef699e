"""mmseg-dfq: DFQ for domain-generalized medical segmentation in mmseg 1.x.

Importing the package applies :mod:`mmseg_dfq.compat` (before any mmseg model
module is imported) and registers every DFQ component in mmseg's registries.
"""

from . import compat

compat._apply()

from . import apis, datasets, engine, evaluation, models  # noqa: E402,F401
from .version import __version__  # noqa: E402

__all__ = [
    '__version__',
    'apis',
    'compat',
    'datasets',
    'engine',
    'evaluation',
    'models',
]
