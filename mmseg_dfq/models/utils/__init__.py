from .accuracy import pixel_accuracy
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
    'RDWT_LAYOUTS',
    'channel_covariance',
    'check_layout',
    'from_whitening_groups',
    'instance_norm',
    'off_diagonal_abs_sum',
    'pixel_accuracy',
    'whitening_groups',
]
