"""Training augmentations of the DFQ recipe that mmcv/mmseg do not have."""

from typing import Tuple

import numpy as np
from mmcv.transforms import RandomResize
from mmcv.transforms.utils import cache_randomness
from mmseg.registry import TRANSFORMS


@TRANSFORMS.register_module()
class RandomAnisotropicResize(RandomResize):
    """Resize to ``scale`` times ratios drawn independently for x and y.

    The authors' fundus augmentation scales width and height by two
    independent draws from U(ratio_range) (mmcv's ``RandomResize`` draws one
    ratio for both). The target size is ``(int(w * r_x), int(h * r_y))``
    for ``scale = (w, h)``, without keeping the aspect ratio.

    Args:
        scale (tuple[int, int]): Base size (w, h), e.g. the crop size after
            a fixed resize to it.
        ratio_range (tuple[float, float]): Range of each ratio.
            Default: (1.0, 1.5).
        **resize_kwargs: Passed on to mmcv's ``Resize`` (``keep_ratio`` is
            always False here).
    """

    def __init__(
        self,
        scale: Tuple[int, int],
        ratio_range: Tuple[float, float] = (1.0, 1.5),
        **resize_kwargs,
    ) -> None:
        if len(tuple(scale)) != 2 or len(tuple(ratio_range)) != 2:
            raise ValueError(
                'RandomAnisotropicResize: scale (w, h) and ratio_range '
                f'(min, max) must have two values, got {scale}, '
                f'{ratio_range}'
            )
        low, high = (float(r) for r in ratio_range)
        if not 0 < low <= high:
            raise ValueError(
                'RandomAnisotropicResize: ratio_range must satisfy '
                f'0 < min <= max, got {ratio_range}'
            )
        resize_kwargs['keep_ratio'] = False
        super().__init__(
            scale=tuple(int(s) for s in scale),
            ratio_range=(low, high),
            **resize_kwargs,
        )

    @cache_randomness
    def _random_scale(self) -> Tuple[int, int]:
        """Draw (w * r_x, h * r_y) with r_x, r_y ~ U(ratio_range)."""
        low, high = self.ratio_range
        rx, ry = np.random.uniform(low, high, size=2)
        return int(self.scale[0] * rx), int(self.scale[1] * ry)
