"""Per-class soft Dice loss, as medical segmentation codes use it."""

from typing import Optional

import torch
import torch.nn as nn
from mmseg.registry import MODELS


@MODELS.register_module()
class ClassDiceLoss(nn.Module):
    """Soft Dice computed per class (and per sample), then averaged.

    mmseg 1.2.2's ``DiceLoss`` flattens classes and pixels together, so a
    small foreground (a prostate is ~3% of a slice) is drowned by the
    background and predicting all background already gives a near-zero loss.
    This loss takes ``1 - (2 sum(p g) + s) / (sum(p) + sum(g) + s)`` for
    each class, by default of each sample separately, with pixels labelled
    ``ignore_index`` left out, and averages them. Probabilities are the
    softmax over classes: the labels are exclusive (the authors'
    overlapping sigmoid form is ``MultiLabelDiceLoss``).

    The DFQ authors' prostate Dice (their ``dice_loss_multi`` with
    ``ignore_index=0``) is ``ClassDiceLoss(batch_pooled=True, squared=True,
    smooth=1e-5)``: the foreground classes only, each sum over the whole
    batch, squared probabilities and labels in the denominator.

    Args:
        include_background (bool): Also average class 0. Default: False.
        smooth (float): Added to numerator and denominator. Default: 1.0.
        batch_pooled (bool): One Dice per class over the whole batch
            instead of one per sample and class. Default: False.
        squared (bool): ``sum(p^2) + sum(g^2)`` in the denominator.
            Default: False.
        loss_weight (float): Multiplier. Default: 1.0.
        loss_name (str): Key in the losses dict. Default: 'loss_dice'.
    """

    def __init__(
        self,
        include_background: bool = False,
        smooth: float = 1.0,
        batch_pooled: bool = False,
        squared: bool = False,
        loss_weight: float = 1.0,
        loss_name: str = 'loss_dice',
    ):
        super().__init__()
        self.include_background = include_background
        self.smooth = smooth
        self.batch_pooled = batch_pooled
        self.squared = squared
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
        dims = (0, 2, 3) if self.batch_pooled else (2, 3)
        inter = (prob * onehot).sum(dim=dims)
        if self.squared:
            # onehot is 0/1: its square is itself.
            denom = (prob * prob).sum(dim=dims) + onehot.sum(dim=dims)
        else:
            denom = prob.sum(dim=dims) + onehot.sum(dim=dims)
        dice = (2 * inter + self.smooth) / (denom + self.smooth)
        start = 0 if self.include_background else 1
        return self.loss_weight * (1 - dice[..., start:]).mean()
