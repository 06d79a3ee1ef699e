"""Domain-split datasets, loading transforms and the domain-mix sampler."""

from .augment import RandomAnisotropicResize
from .fundus import FundusDGDataset
from .prostate import ProstateDGDataset
from .samplers import (
    DomainMixBatchSampler,
    DomainMixSampler,
    check_domain_mix_batch_size,
)
from .transforms import (
    LoadFundusAnnotations,
    LoadFundusImageFromFile,
    LoadProstateSlice,
    VolumeCache,
    decode_fundus_mask,
)

# mmseg's default PackSegInputs meta keys plus the per-sample domain metas
# (see docs/design.md); keys a sample lacks (e.g. the prostate-only ones on
# fundus samples) are skipped by PackSegInputs.
DFQ_META_KEYS = (
    'img_path',
    'seg_map_path',
    'ori_shape',
    'img_shape',
    'pad_shape',
    'scale_factor',
    'flip',
    'flip_direction',
    'reduce_zero_label',
    'domain',
    'domain_idx',
    'seen',
    'case_id',
    'slice_index',
    'num_slices',
    'spacing',
)

__all__ = [
    'DFQ_META_KEYS',
    'DomainMixBatchSampler',
    'DomainMixSampler',
    'FundusDGDataset',
    'LoadFundusAnnotations',
    'LoadFundusImageFromFile',
    'LoadProstateSlice',
    'ProstateDGDataset',
    'RandomAnisotropicResize',
    'VolumeCache',
    'check_domain_mix_batch_size',
    'decode_fundus_mask',
]
