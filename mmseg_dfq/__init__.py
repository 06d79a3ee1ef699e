"""mmseg-dfq: DFQ for domain-generalized medical segmentation in mmseg 1.x.

Importing the package applies :mod:`mmseg_dfq.compat` (before any mmseg model
module is imported) and registers every DFQ component in mmseg's registries.
"""

from . import compat

compat._apply()

from . import (  # noqa: E402,F401
    apis,  # noqa: E402,F401  (uses the three above)
    datasets,
    engine,
    evaluation,
    models,
)
from .version import __version__  # noqa: E402

__all__ = [
    '__version__',
    'compat',
    'datasets',
    'engine',
    'evaluation',
    'models',
]
