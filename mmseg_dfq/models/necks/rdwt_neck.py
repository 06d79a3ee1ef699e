"""RDWT as a neck, so any mmseg backbone gets whitened multi-level features."""

from typing import Optional, Sequence

import torch.nn as nn
from mmseg.registry import MODELS

from ..composition import check_rdwt_composition
from ..utils.whitening import check_layout, instance_norm


@MODELS.register_module()
class RDWTNeck(nn.Module):
    """Instance-normalise the selected levels of a backbone's output.

    Unlike :class:`RDWTMixVisionTransformer`, the whitened maps are not fed
    back into the backbone; pair it with ``DFQHead(loss_rdwt=...)`` so the
    decorrelation loss acts on what the head sees. No parameters.

    Args:
        in_index (Sequence[int], optional): Levels to normalise; None means
            all. Default: None.
        eps (float): Instance-norm epsilon. Default: 1e-5.
        rdwt_layout (str): ``'channels'`` or ``'authors'``, as in
            :class:`RDWTMixVisionTransformer`. Default: 'channels'.
    """

    def __init__(
        self,
        in_index: Optional[Sequence[int]] = None,
        eps: float = 1e-5,
        rdwt_layout: str = 'channels',
    ):
        super().__init__()
        self.in_index = None if in_index is None else tuple(in_index)
        self.eps = eps
        self.rdwt_layout = check_layout(rdwt_layout, 'RDWTNeck')
        check_rdwt_composition(self)

    def forward(self, inputs):
        """Whiten the selected levels.

        Args:
            inputs (Sequence[Tensor]): Levels, each (B, C_i, H_i, W_i).

        Returns:
            tuple[Tensor]: Same shapes; selected levels normalised.
        """
        n = len(inputs)
        index = range(n) if self.in_index is None else self.in_index
        bad = [i for i in index if not -n <= i < n]
        if bad:
            raise IndexError(
                f'RDWTNeck: in_index {bad} out of range for {n} input levels'
            )
        chosen = {i % n for i in index}
        return tuple(
            instance_norm(x, self.eps, self.rdwt_layout) if i in chosen else x
            for i, x in enumerate(inputs)
        )
