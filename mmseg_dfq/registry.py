"""The ``mmseg_dfq`` registry scope (transforms only).

DFQ's modules register in mmseg's registries, so configs keep
``default_scope='mmseg'``. This child scope exists for one job: holding a
loader named ``LoadImageFromFile`` (see
:class:`mmseg_dfq.datasets.transforms.LoadImageOrSliceFromFile`) that a
config entry selects with ``_scope_='mmseg_dfq'``. mmseg's own inference
code looks for a test-pipeline step of exactly that type name; the scope
lets our test pipelines carry it without shadowing mmcv's
``LoadImageFromFile`` in the ``mmseg`` scope. Every other type name looked up
in this scope resolves to mmseg's (the parent) as usual.
"""

from mmengine.registry import Registry
from mmseg.registry import TRANSFORMS as MMSEG_TRANSFORMS

TRANSFORMS = Registry(
    'transform',
    parent=MMSEG_TRANSFORMS,
    scope='mmseg_dfq',
    locations=['mmseg_dfq.datasets.transforms'],
)

__all__ = ['TRANSFORMS']
