"""Loading and packing transforms of the domain-split data sets.

- :mod:`.loading`: 2D images and masks (fundus codec, mapped masks) and the
  test pipelines' ``LoadImageFromFile`` of the ``mmseg_dfq`` scope.
- :mod:`.volume`: 2.5D slices of NIfTI volumes and their cache.
- :mod:`.formatting`: ``PackDomainSegInputs``.
"""

from .formatting import (
    DOMAIN_META_KEYS,
    PACK_META_KEYS,
    PackDomainSegInputs,
)
from .loading import (
    LoadFundusAnnotations,
    LoadFundusImageFromFile,
    LoadImageOrSliceFromFile,
    LoadMappedAnnotations,
    imdecode_as_stored,
    read_grey_mask,
    read_image_as_stored,
)
from .volume import (
    PROSTATE_MASK_VALUES,
    LoadProstateSlice,
    VolumeCache,
    load_volume,
    normalise_volume,
    slice_25d,
)

__all__ = [
    'DOMAIN_META_KEYS',
    'LoadFundusAnnotations',
    'LoadFundusImageFromFile',
    'LoadImageOrSliceFromFile',
    'LoadMappedAnnotations',
    'LoadProstateSlice',
    'PACK_META_KEYS',
    'PROSTATE_MASK_VALUES',
    'PackDomainSegInputs',
    'VolumeCache',
    'imdecode_as_stored',
    'load_volume',
    'normalise_volume',
    'read_grey_mask',
    'read_image_as_stored',
    'slice_25d',
]
