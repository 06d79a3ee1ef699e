"""Per-class soft Dice loss, as medical segmentation codes use it."""

from typing import Optional

import torch
import torch.nn as nn
from mmseg.registry import MODELS


@MODELS.register_module()
class ClassDiceLoss(nn.Module):
    """Soft Dice computed per sample and per class, then averaged.

    mmseg 1.2.2's ``DiceLoss`` flattens classes and pixels together, so a
    small foreground (a prostate is ~3% of a slice) is drowned by the
    background and predicting all background already gives a near-zero loss.
    This loss takes ``1 - 2|P∩G| / (|P| + |G|)`` for each class of each
    sample separately (as the DFQ / RAM-DSIR code does per channel), with
    pixels labelled ``ignore_index`` left out. Probabilities are the softmax
    over classes: the labels are exclusive (the authors' overlapping
    sigmoid form is ``MultiLabelDiceLoss``).

    Args:
        include_background (bool): Also average class 0. Default: False.
        smooth (float): Added to numerator and denominator. Default: 1.0.
        loss_weight (float): Multiplier. Default: 1.0.
        loss_name (str): Key in the losses dict. Default: 'loss_dice'.
    """

    def __init__(
        self,
        include_background: bool = False,
        smooth: float = 1.0,
        loss_weight: float = 1.0,
        loss_name: str = 'loss_dice',
    ):
        super().__init__()
        self.include_background = include_background
        self.smooth = smooth
        self.loss_weight = loss_weight
        self._loss_name = loss_name

    @property
    def loss_name(self) -> str:
        """str: The key under which the Runner logs this loss."""
        return self._loss_name

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        weight: Optional[torch.Tensor] = None,
        ignore_index: int = 255,
        **kwargs,
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            pred (Tensor): Logits, (B, C, H, W).
            target (Tensor): Labels, (B, H, W), values in [0, C) or
                ``ignore_index``.
            weight (Tensor, optional): Unused (no pixel sampler support).
            ignore_index (int): Label of pixels to leave out. Default: 255.

        Returns:
            Tensor: Scalar loss.
        """
        num_classes = pred.shape[1]
        if num_classes < 2:
            raise ValueError(
                f'ClassDiceLoss: softmax needs >= 2 classes, got logits of '
                f'shape {tuple(pred.shape)}'
            )
        prob = pred.float().softmax(dim=1)
        valid = (target != ignore_index).unsqueeze(1).float()
        labels = torch.where(
            target == ignore_index, torch.zeros_like(target), target
        )
        onehot = torch.zeros_like(prob).scatter_(1, labels.unsqueeze(1), 1.0)
        prob, onehot = prob * valid, onehot * valid
        inter = (prob * onehot).sum(dim=(2, 3))
        denom = prob.sum(dim=(2, 3)) + onehot.sum(dim=(2, 3))
        dice = (2 * inter + self.smooth) / (denom + self.smooth)
        start = 0 if self.include_background else 1
        return self.loss_weight * (1 - dice[:, start:]).mean()
