"""RDWT decorrelation loss."""

from typing import Optional, Sequence

import torch
import torch.nn as nn
from mmseg.registry import MODELS

from ..utils.whitening import (
    channel_covariance,
    check_layout,
    instance_norm,
    off_diagonal_abs_sum,
)


@MODELS.register_module()
class RDWTLoss(nn.Module):
    """Decorrelation loss of the relaxed deep whitening transformation.

    For every feature level: instance-normalise (per ``layout`` group;
    skipped with ``normalize=False``), take the per-sample group covariance
    S (float32), and sum ``|S_jk|`` over the off-diagonal entries ``j < k``;
    average over the batch. The level terms L_i are weighted by
    ``stage_weights`` (all 1 by default) and combined by ``reduction``, then
    scaled by ``loss_weight``:

    - ``reduction='mean'`` (default): ``loss_weight * sum_i w_i L_i / n``,
      the authors' objective (their encoder returns the sum of its four
      stage terms divided by 4, their training adds 1e-4 times that).
    - ``reduction='sum'``: ``loss_weight * sum_i w_i L_i``; with four levels
      its gradient is exactly 4x the authors'.

    The authors' stage term sums the upper triangle *including* the
    diagonal of ``S + 1e-5 I``. After instance normalisation the diagonal is
    a constant (~HW / (HW - 1)), so it changes the logged value but never
    the gradient; ``with_diagonal=True`` adds it to reproduce their number.

    ``normalize`` says whether the maps still need the instance norm. The
    authors take S = Xn Xn^T / (HW - 1) of the very maps their encoder
    normalised and passes on, so after an RDWT producer
    (:class:`RDWTMixVisionTransformer` stages in ``rdwt_stages``, or
    :class:`RDWTNeck` levels) with the same layout, ``normalize=False``
    is their computation, and saves an instance norm forward and backward
    per level on every step. Normalising those maps a second time moves the
    value and the gradient by a relative ~eps / var (var: a group's
    variance before the producer's norm; 7e-6 on the value of the authors'
    reference encoder), nothing more: the producer's own instance-norm
    backward already projects out what the second norm would. On
    features nothing normalised (the loss on any other head's inputs),
    the covariance would measure scale as well as correlation, so the
    default ``True`` normalises them first. The build refuses
    ``normalize=False`` unless the producer normalised every level the
    loss sees (:mod:`mmseg_dfq.models.composition`).

    Args:
        loss_weight (float): lambda of the paper. Default: 1e-4.
        stage_weights (Sequence[float], optional): One weight per level.
            Default: None (all 1).
        reduction (str): ``'mean'`` or ``'sum'`` over levels.
            Default: 'mean'.
        layout (str): ``'channels'`` (true channels, the default) or
            ``'authors'`` (the published reshape-without-transpose
            grouping); must match the backbone's / neck's ``rdwt_layout``.
            Default: 'channels'.
        with_diagonal (bool): Add the constant diagonal of ``S + eps I``
            to each term, as the authors' code does. Default: False.
        normalize (bool): Instance-normalise each map before its
            covariance. False for the maps of an RDWT producer with the same
            layout, which are normalised already. Default: True.
        eps (float): Instance-norm epsilon (and the authors' diagonal
            offset). Default: 1e-5.
        loss_name (str): Key of the loss in the losses dict.
            Default: 'loss_rdwt'.
    """

    def __init__(
        self,
        loss_weight: float = 1e-4,
        stage_weights: Optional[Sequence[float]] = None,
        reduction: str = 'mean',
        layout: str = 'channels',
        with_diagonal: bool = False,
        normalize: bool = True,
        eps: float = 1e-5,
        loss_name: str = 'loss_rdwt',
    ):
        super().__init__()
        if loss_weight < 0:
            raise ValueError(
                f'RDWTLoss: loss_weight must be >= 0, got {loss_weight}'
            )
        if reduction not in ('mean', 'sum'):
            raise ValueError(
                "RDWTLoss: reduction must be 'mean' or 'sum', got "
                f'{reduction!r}'
            )
        self.loss_weight = float(loss_weight)
        self.stage_weights = (
            None
            if stage_weights is None
            else [float(w) for w in stage_weights]
        )
        self.reduction = reduction
        self.layout = check_layout(layout, 'RDWTLoss')
        self.with_diagonal = bool(with_diagonal)
        self.normalize = bool(normalize)
        self.eps = eps
        self._loss_name = loss_name

    @property
    def loss_name(self) -> str:
        """str: The key under which the Runner logs this loss."""
        return self._loss_name

    def stage_term(self, feat: torch.Tensor) -> torch.Tensor:
        """Decorrelation term L_i of one level, averaged over the batch.

        Args:
            feat (Tensor): Feature map, (B, C, H, W); instance-normalised
                per ``layout`` group already when ``normalize`` is False.

        Returns:
            Tensor: Scalar (float32, whatever the map's dtype).
        """
        if feat.dim() != 4:
            raise ValueError(
                'RDWTLoss: expected (B, C, H, W) maps, got '
                f'shape {tuple(feat.shape)}'
            )
        # channel_covariance works in float32 whatever comes in (fp16 maps
        # under autocast too), so the unnormalised path needs no cast here.
        if self.normalize:
            feat = instance_norm(feat.float(), self.eps, self.layout)
        cov = channel_covariance(feat, self.layout)
        term = off_diagonal_abs_sum(cov)
        if self.with_diagonal:
            diag = torch.diagonal(cov, dim1=-2, dim2=-1) + self.eps
            term = term + diag.abs().sum(-1)
        return term.mean()

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Compute the weighted decorrelation loss.

        Args:
            feats (Sequence[Tensor]): Feature maps, each (B, C_i, H_i, W_i).

        Returns:
            Tensor: Scalar loss (float32).
        """
        if isinstance(feats, torch.Tensor):
            feats = [feats]
        if len(feats) == 0:
            raise ValueError('RDWTLoss: got no feature maps')
        weights = self.stage_weights or [1.0] * len(feats)
        if len(weights) != len(feats):
            raise ValueError(
                f'RDWTLoss: {len(weights)} stage_weights for {len(feats)} '
                'feature levels'
            )
        total = feats[0].new_zeros((), dtype=torch.float32)
        for weight, feat in zip(weights, feats):
            total = total + weight * self.stage_term(feat)
        if self.reduction == 'mean':
            total = total / len(feats)
        return self.loss_weight * total
