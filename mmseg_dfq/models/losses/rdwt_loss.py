"""RDWT decorrelation loss and the two feature statistics it is built on."""

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.registry import MODELS


def instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Normalise each channel of each sample to zero mean, unit variance.

    Args:
        x (Tensor): Feature map, shape (B, C, H, W).
        eps (float): Added to the variance. Default: 1e-5.

    Returns:
        Tensor: Same shape as ``x``; statistics over H x W, no affine.
    """
    if x.shape[2] * x.shape[3] < 2:
        # F.instance_norm rejects a single spatial element in training; its
        # statistics would give x - mean = 0 there, so return that (keeping
        # the graph) instead of failing on small inputs.
        return x - x.mean(dim=(2, 3), keepdim=True)
    return F.instance_norm(x, eps=eps)


def channel_covariance(x: torch.Tensor) -> torch.Tensor:
    """Per-sample channel covariance ``X X^T / (HW - 1)`` in float32.

    Args:
        x (Tensor): Feature map, shape (B, C, H, W), assumed zero-mean per
            channel (e.g. the output of :func:`instance_norm`).

    Returns:
        Tensor: Shape (B, C, C). All zeros for 1x1 maps, where a covariance
        is undefined.
    """
    b, c, h, w = x.shape
    # float32 even under autocast: the sums over HW overflow/round in fp16.
    flat = x.float().reshape(b, c, h * w)
    if h * w < 2:
        # Zeros that stay in the graph, so backward() on this alone works.
        return flat.new_zeros(b, c, c) + 0 * flat.sum()
    with torch.autocast(device_type=flat.device.type, enabled=False):
        return torch.bmm(flat, flat.transpose(1, 2)) / (h * w - 1)


def off_diagonal_abs_sum(cov: torch.Tensor) -> torch.Tensor:
    """Sum of ``|S_jk|`` over ``j < k`` for each matrix of a batch.

    Args:
        cov (Tensor): Symmetric matrices, shape (B, C, C).

    Returns:
        Tensor: Shape (B,).
    """
    c = cov.shape[-1]
    # Half of (all entries - diagonal): the upper triangle of a symmetric S.
    total = cov.abs().sum(dim=(-2, -1))
    diag = torch.diagonal(cov, dim1=-2, dim2=-1).abs().sum(-1)
    return (total - diag) / 2 if c > 1 else total * 0


@MODELS.register_module()
class RDWTLoss(nn.Module):
    """Decorrelation loss of the relaxed deep whitening transformation.

    For every feature level: instance-normalise, take the per-sample channel
    covariance S (float32), and sum ``|S_jk|`` over the off-diagonal entries
    ``j < k``; average over the batch. Levels are combined with
    ``stage_weights`` (a plain sum by default, as in the paper) and scaled by
    ``loss_weight``.

    Args:
        loss_weight (float): lambda of the paper. Default: 1e-4.
        stage_weights (Sequence[float], optional): One weight per level.
            Default: None (all 1).
        eps (float): Instance-norm epsilon. Default: 1e-5.
        loss_name (str): Key of the loss in the losses dict.
            Default: 'loss_rdwt'.
    """

    def __init__(
        self,
        loss_weight: float = 1e-4,
        stage_weights: Optional[Sequence[float]] = None,
        eps: float = 1e-5,
        loss_name: str = 'loss_rdwt',
    ):
        super().__init__()
        if loss_weight < 0:
            raise ValueError(
                f'RDWTLoss: loss_weight must be >= 0, got {loss_weight}'
            )
        self.loss_weight = float(loss_weight)
        self.stage_weights = (
            None
            if stage_weights is None
            else [float(w) for w in stage_weights]
        )
        self.eps = eps
        self._loss_name = loss_name

    @property
    def loss_name(self) -> str:
        """str: The key under which the Runner logs this loss."""
        return self._loss_name

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
            if feat.dim() != 4:
                raise ValueError(
                    'RDWTLoss: expected (B, C, H, W) maps, got '
                    f'shape {tuple(feat.shape)}'
                )
            normed = instance_norm(feat.float(), self.eps)
            cov = channel_covariance(normed)
            total = total + weight * off_diagonal_abs_sum(cov).mean()
        return self.loss_weight * total
