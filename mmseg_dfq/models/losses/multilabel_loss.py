"""Losses on nested binary targets: the authors' two-sigmoid fundus form.

The authors predict the optic cup and the optic disc as two independent
sigmoid channels, in that order (multi-label: the disc channel includes the
cup). Labels in mmseg are one map of class indices ({0 background, 1 rim,
2 cup} for fundus), so each channel c is given the set of labels it covers
(``label_sets``, fundus: ``[[2], [1, 2]]``) and its target is "label in
set c".
"""

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.registry import MODELS


def multilabel_targets(
    labels: torch.Tensor,
    label_sets: Sequence[Sequence[int]],
    ignore_index: int = 255,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Turn a label map into one binary target per channel.

    Args:
        labels (Tensor): Class indices, (B, H, W).
        label_sets (Sequence[Sequence[int]]): Labels each channel covers.
        ignore_index (int): Label of pixels to leave out. Default: 255.

    Returns:
        tuple[Tensor, Tensor]: Targets (B, C, H, W) in {0, 1} (float32) and
        the valid-pixel mask (B, 1, H, W) (float32).
    """
    targets = torch.stack(
        [
            torch.isin(labels, labels.new_tensor(list(s))).float()
            for s in label_sets
        ],
        dim=1,
    )
    valid = (labels != ignore_index).unsqueeze(1).float()
    return targets * valid, valid


def check_label_sets(label_sets, owner: str) -> list:
    """Validate ``label_sets``: non-empty lists of non-negative ints.

    Args:
        label_sets: The sets as given in a config.
        owner (str): Class name for the message.

    Returns:
        list[list[int]]: The sets.
    """
    sets = [[int(v) for v in s] for s in label_sets]
    if not sets or any(not s or min(s) < 0 for s in sets):
        raise ValueError(
            f'{owner}: label_sets must be non-empty lists of labels >= 0, '
            f'one per output channel; got {label_sets}'
        )
    return sets


class _MultiLabelLoss(nn.Module):
    """Common arguments and checks of the two losses below."""

    def __init__(self, label_sets, loss_weight: float, loss_name: str):
        super().__init__()
        self.label_sets = check_label_sets(label_sets, type(self).__name__)
        self.loss_weight = float(loss_weight)
        self._loss_name = loss_name

    @property
    def loss_name(self) -> str:
        """str: The key under which the Runner logs this loss."""
        return self._loss_name

    def _targets(self, pred, target, ignore_index):
        if pred.shape[1] != len(self.label_sets):
            raise ValueError(
                f'{type(self).__name__}: {pred.shape[1]} output channels '
                f'but {len(self.label_sets)} label_sets {self.label_sets}'
            )
        return multilabel_targets(target, self.label_sets, ignore_index)


@MODELS.register_module()
class MultiLabelBCELoss(_MultiLabelLoss):
    """Binary cross-entropy of each sigmoid channel, mean over all values.

    The authors apply ``BCELoss`` to sigmoid probabilities; the same value
    is computed here from the logits (numerically stable).

    Args:
        label_sets (Sequence[Sequence[int]]): Labels covered by each output
            channel (fundus: ``[[2], [1, 2]]`` = cup, disc, the authors'
            channel order).
        loss_weight (float): Multiplier. Default: 1.0.
        loss_name (str): Key in the losses dict. Default: 'loss_bce'.
    """

    def __init__(self, label_sets, loss_weight=1.0, loss_name='loss_bce'):
        super().__init__(label_sets, loss_weight, loss_name)

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        weight: Optional[torch.Tensor] = None,
        ignore_index: int = 255,
        **kwargs,
    ) -> torch.Tensor:
        """Args: pred (B, C, H, W) logits; target (B, H, W) labels."""
        targets, valid = self._targets(pred, target, ignore_index)
        loss = F.binary_cross_entropy_with_logits(
            pred.float(), targets, reduction='none'
        )
        count = (valid.sum() * pred.shape[1]).clamp(min=1)
        return self.loss_weight * (loss * valid).sum() / count


@MODELS.register_module()
class MultiLabelDiceLoss(_MultiLabelLoss):
    """One soft Dice pooled over the batch, the channels and the pixels.

    ``1 - (2 sum(p t) + s) / (sum(p^2) + sum(t^2) + s)`` with sigmoid
    probabilities p and binary targets t, every sum over the whole batch
    (the RAM-DSIR / DFQ ``dice_loss``), smooth s = 1e-5.

    Args:
        label_sets (Sequence[Sequence[int]]): As for
            :class:`MultiLabelBCELoss`.
        smooth (float): s. Default: 1e-5.
        loss_weight (float): Multiplier. Default: 1.0.
        loss_name (str): Key in the losses dict. Default: 'loss_dice'.
    """

    def __init__(
        self, label_sets, smooth=1e-5, loss_weight=1.0, loss_name='loss_dice'
    ):
        super().__init__(label_sets, loss_weight, loss_name)
        self.smooth = float(smooth)

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        weight: Optional[torch.Tensor] = None,
        ignore_index: int = 255,
        **kwargs,
    ) -> torch.Tensor:
        """Args: pred (B, C, H, W) logits; target (B, H, W) labels."""
        targets, valid = self._targets(pred, target, ignore_index)
        prob = pred.float().sigmoid() * valid
        inter = (prob * targets).sum()
        denom = (prob * prob).sum() + (targets * targets).sum()
        dice = (2 * inter + self.smooth) / (denom + self.smooth)
        return self.loss_weight * (1 - dice)
