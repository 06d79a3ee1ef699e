from .dice_loss import ClassDiceLoss
from .rdwt_loss import (
    RDWTLoss,
    channel_covariance,
    instance_norm,
    off_diagonal_abs_sum,
)

__all__ = [
    'ClassDiceLoss',
    'RDWTLoss',
    'channel_covariance',
    'instance_norm',
    'off_diagonal_abs_sum',
]
