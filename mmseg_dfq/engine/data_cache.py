"""Per-worker memory cache of a pipeline's deterministic first transforms.

The fundus release's images are 800x800 PNGs; decoding one and resizing it
to the 256 px training size costs tens of milliseconds of CPU, every epoch,
while everything after that (random scale, crop, flip) works on 256 px.
:class:`MemoryCache` runs the deterministic prefix once per sample and
serves copies afterwards, so a GPU step of a few tens of milliseconds is
not starved by PNG decoding.
"""

from typing import Optional, Sequence

import numpy as np
from mmcv.transforms import BaseTransform, Compose
from mmseg.registry import TRANSFORMS


@TRANSFORMS.register_module()
class MemoryCache(BaseTransform):
    """Run ``transforms`` once per sample, then return cached copies.

    Only deterministic transforms belong inside (loading, a fixed resize):
    a random one would be frozen at its first draw. Each dataloader worker
    has its own cache; with ``persistent_workers=True`` it survives epochs.
    The memory is about one resized image (+ label) per sample per worker,
    e.g. 739 fundus training images at 256 px: ~190 MB per worker.

    Args:
        transforms (Sequence[dict]): The deterministic transforms.
        keys (Sequence[str]): Result keys that identify a sample; those
            present are used. Default: ('img_path', 'slice_index').
        max_items (int, optional): Stop adding entries beyond this many
            (later samples are computed each time). Default: None (no
            limit).
    """

    def __init__(
        self,
        transforms: Sequence[dict],
        keys: Sequence[str] = ('img_path', 'slice_index'),
        max_items: Optional[int] = None,
    ):
        if not transforms:
            raise ValueError('MemoryCache: transforms is empty')
        self.transforms = Compose(transforms)
        self.keys = tuple(keys)
        self.max_items = max_items
        self.cache = {}

    def _key(self, results):
        key = tuple((k, results[k]) for k in self.keys if k in results)
        if not key:
            raise KeyError(
                f'MemoryCache: the sample has none of the keys {self.keys} '
                f'(got {sorted(results)})'
            )
        return key

    @staticmethod
    def _copy(results):
        # Arrays and containers are copied so that in-place work downstream
        # (flips, photometric changes, seg_fields.append) cannot alter the
        # cached sample.
        out = {}
        for key, value in results.items():
            if isinstance(value, (np.ndarray, list, dict)):
                value = value.copy()
            out[key] = value
        return out

    def transform(self, results: dict) -> Optional[dict]:
        """Return the cached (or freshly computed) prefix result.

        Args:
            results (dict): The dataset's sample dict.

        Returns:
            dict | None: A copy of what ``transforms`` returned for this
            sample (None if they dropped it).
        """
        key = self._key(results)
        cached = self.cache.get(key)
        if cached is None:
            cached = self.transforms(self._copy(results))
            if cached is None:
                return None
            if self.max_items is None or len(self.cache) < self.max_items:
                self.cache[key] = cached
        out = dict(results)
        out.update(self._copy(cached))
        return out

    def __repr__(self):
        return (
            f'{self.__class__.__name__}(transforms={self.transforms}, '
            f'keys={self.keys}, max_items={self.max_items})'
        )
