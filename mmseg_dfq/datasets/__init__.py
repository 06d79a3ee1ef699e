"""Domain-split datasets, loading transforms and the domain-mix sampler."""

from .augment import RandomAnisotropicResize
from .base import DomainSplitDataset
from .collate import stack_seg_collate
from .fundus import FundusDGDataset
from .fundus_codec import FUNDUS_GREY, decode_fundus_mask, encode_fundus_labels
from .multisite import MultiSiteDataset
from .prostate import ProstateDGDataset
from .samplers import (
    DomainBatchSampler,
    DomainMixBatchSampler,
    DomainMixSampler,
    check_domain_mix_batch_size,
)
from .transforms import (
    PACK_META_KEYS,
    LoadFundusAnnotations,
    LoadFundusImageFromFile,
    LoadMappedAnnotations,
    LoadProstateSlice,
    PackDomainSegInputs,
    VolumeCache,
)

# For configs that keep mmseg's PackSegInputs: pass these meta keys to it.
# PackDomainSegInputs packs them by itself, and also refuses a volume sample
# without spacing; prefer it.
DFQ_META_KEYS = PACK_META_KEYS

__all__ = [
    'DFQ_META_KEYS',
    'DomainBatchSampler',
    'DomainMixBatchSampler',
    'DomainMixSampler',
    'DomainSplitDataset',
    'FUNDUS_GREY',
    'FundusDGDataset',
    'LoadFundusAnnotations',
    'LoadFundusImageFromFile',
    'LoadMappedAnnotations',
    'LoadProstateSlice',
    'MultiSiteDataset',
    'PackDomainSegInputs',
    'ProstateDGDataset',
    'RandomAnisotropicResize',
    'VolumeCache',
    'check_domain_mix_batch_size',
    'decode_fundus_mask',
    'encode_fundus_labels',
    'stack_seg_collate',
]
