from .accuracy import pixel_accuracy
from .attention import (
    check_fused_attention,
    fused_attention_pays,
    scaled_dot_product,
    use_fused_attention,
)
from .chunk_norm import ChunkBatchNorm2d
from .upsample import bilinear_resize, upsample_by_slices
from .whitening import (
    RDWT_LAYOUTS,
    channel_covariance,
    check_layout,
    from_whitening_groups,
    instance_norm,
    off_diagonal_abs_sum,
    whitening_groups,
)

__all__ = [
    'ChunkBatchNorm2d',
    'RDWT_LAYOUTS',
    'bilinear_resize',
    'check_fused_attention',
    'channel_covariance',
    'check_layout',
    'from_whitening_groups',
    'fused_attention_pays',
    'instance_norm',
    'off_diagonal_abs_sum',
    'pixel_accuracy',
    'scaled_dot_product',
    'upsample_by_slices',
    'use_fused_attention',
    'whitening_groups',
]
