from ..utils.whitening import (
    channel_covariance,
    instance_norm,
    off_diagonal_abs_sum,
)
from .dice_loss import ClassDiceLoss
from .multilabel_loss import MultiLabelBCELoss, MultiLabelDiceLoss
from .rdwt_loss import RDWTLoss

# The whitening helpers live in models/utils; re-exported here because
# earlier releases documented them under mmseg_dfq.models.losses.
__all__ = [
    'ClassDiceLoss',
    'MultiLabelBCELoss',
    'MultiLabelDiceLoss',
    'RDWTLoss',
    'channel_covariance',
    'instance_norm',
    'off_diagonal_abs_sum',
]
