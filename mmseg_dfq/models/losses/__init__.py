from .rdwt_loss import (
    RDWTLoss,
    channel_covariance,
    instance_norm,
    off_diagonal_abs_sum,
)

__all__ = [
    'RDWTLoss',
    'channel_covariance',
    'instance_norm',
    'off_diagonal_abs_sum',
]
