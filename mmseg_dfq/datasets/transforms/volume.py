"""2.5D slices of NIfTI volumes: decoding, scaling, the cache and the loader.

A volume sample is one slice ``volume[:, :, k]`` (third NIfTI axis, no
transpose) whose input stacks slices ``k-1, k, k+1`` as three channels of
the volume min-max scaled to [-1, 1]. The segmentation's voxel values are
mapped to class indices by the sample's ``mask_values`` (the prostate
release's {0, 1, 2} -> {0, 1, 1} by default); a value outside the map
stops loading with an error naming the file.
"""

from collections import OrderedDict
from typing import Dict, Optional, Tuple

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from ..mask_values import map_mask_values
from ..nifti import decode_nifti

# The SAML prostate segmentations: 0 background, 1 prostate, and on some
# volumes 2 (a central zone), which belongs to the prostate.
PROSTATE_MASK_VALUES = {0: 0, 1: 1, 2: 1}


def normalise_volume(img: np.ndarray, path: str) -> np.ndarray:
    """Check a 3D volume and min-max scale it to [-1, 1].

    Args:
        img (np.ndarray): Decoded voxels, (H, W, D).
        path (str): Its file, named in errors.

    Returns:
        np.ndarray: float32 (H, W, D) in [-1, 1].
    """
    if img.ndim != 3:
        raise ValueError(
            f'image must be a 3D volume, got shape {img.shape}: {path}'
        )
    if not np.all(np.isfinite(img)):
        raise ValueError(f'image volume holds NaN/inf values: {path}')
    img = img.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    # A constant volume has no contrast to scale; map it to zeros.
    scale = 2.0 / (hi - lo) if hi > lo else 0.0
    img = (img - lo) * np.float32(scale) - np.float32(1.0 if scale else 0.0)
    return img.astype(np.float32)


def slice_25d(volume: np.ndarray, k: int) -> np.ndarray:
    """Slices k-1, k, k+1 of a volume as 3 channels (edges repeated).

    Args:
        volume (np.ndarray): (H, W, D).
        k (int): Slice index along the third axis.

    Returns:
        np.ndarray: (H, W, 3), contiguous.
    """
    depth = volume.shape[2]
    idx = [max(k - 1, 0), k, min(k + 1, depth - 1)]
    return np.ascontiguousarray(volume[:, :, idx])


def load_volume(
    img_path: str,
    seg_path: str,
    mask_values: Optional[Dict[int, int]] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Decode, check and normalise one volume and its labels.

    Args:
        img_path (str): Image NIfTI.
        seg_path (str): Segmentation NIfTI.
        mask_values (dict[int, int], optional): Stored segmentation value
            -> class index. Default: None (the prostate release's
            ``PROSTATE_MASK_VALUES``).

    Returns:
        tuple[np.ndarray, np.ndarray]: The image min-max scaled to [-1, 1]
        (float32, (H, W, D)) and the class indices (uint8, (H, W, D)).
    """
    if mask_values is None:
        mask_values = PROSTATE_MASK_VALUES
    img = decode_nifti(img_path)
    if img.ndim != 3:
        raise ValueError(
            f'image must be a 3D volume, got shape {img.shape}: {img_path}'
        )
    seg = decode_nifti(seg_path)
    if seg.shape != img.shape:
        raise ValueError(
            f'segmentation shape {seg.shape} differs from image shape '
            f'{img.shape} ({img_path}): {seg_path}'
        )
    labels = map_mask_values(seg, mask_values, seg_path)
    return normalise_volume(img, img_path), labels


class VolumeCache:
    """LRU cache of decoded, normalised volumes with a byte budget.

    Volumes are decoded by :func:`load_volume` on first use and kept until
    the budget forces out the least recently used one. A volume larger than
    the whole budget is returned without being kept. Each dataloader worker
    holds its own copy, so the budget applies per worker.

    Args:
        max_bytes (int): Budget for the image + label arrays held.
            Default: 1 GiB.
    """

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        if max_bytes < 0:
            raise ValueError(f'cache budget must be >= 0, got {max_bytes}')
        self.max_bytes = int(max_bytes)
        self.num_decodes = 0
        self._items: 'OrderedDict[tuple, tuple]' = OrderedDict()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        """int: Bytes currently held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(
        self,
        img_path: str,
        seg_path: str,
        mask_values: Optional[Dict[int, int]] = None,
    ) -> Tuple[np.ndarray, ...]:
        """Return the normalised image and labels of a volume.

        Args:
            img_path (str): Image NIfTI.
            seg_path (str): Its segmentation NIfTI.
            mask_values (dict[int, int], optional): See
                :func:`load_volume`.

        Returns:
            tuple[np.ndarray, np.ndarray]: See :func:`load_volume`.
        """
        values = None if mask_values is None else dict(mask_values)
        key = (
            img_path,
            seg_path,
            None if values is None else tuple(sorted(values.items())),
        )
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        item = load_volume(img_path, seg_path, values)
        self.num_decodes += 1
        size = sum(a.nbytes for a in item)
        if size <= self.max_bytes:
            while self._bytes + size > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= sum(a.nbytes for a in old)
            self._items[key] = item
            self._bytes += size
        return item


# Used when a slice loader runs outside a data set that holds a cache.
_DEFAULT_CACHE = VolumeCache()


@TRANSFORMS.register_module()
class LoadProstateSlice(BaseTransform):
    """Load one 2.5D slice and its labels from a NIfTI volume.

    The input stacks slices ``k-1, k, k+1`` along the third NIfTI axis as
    three channels (``volume[:, :, k]``, no transpose; at the first / last
    slice the edge slice is repeated) of the volume min-max scaled to
    [-1, 1]. The volume comes from the data set's :class:`VolumeCache`
    (``results['volume_cache']``, set by the volume data sets), so it is
    decoded once rather than once per slice. Segmentation values are mapped
    by ``results['mask_values']`` where the sample has one (the
    ``MultiSiteDataset`` of a config), else by the prostate release's
    ``{0: 0, 1: 1, 2: 1}``; the name is the benchmark's, the loader serves
    any NIfTI volume.

    Required Keys:

    - img_path, seg_map_path, slice_index
    - volume_cache, mask_values (optional)

    Added Keys:

    - img (np.float32, (H, W, 3)), gt_seg_map (np.uint8, (H, W)),
      img_shape, ori_shape, seg_fields
    """

    def transform(self, results: dict) -> dict:
        """Load slice ``results['slice_index']`` of the volume.

        Args:
            results (dict): Result dict of a volume data set.

        Returns:
            dict: ``results`` with ``img``, ``gt_seg_map`` and shapes.
        """
        cache: Optional[VolumeCache] = results.pop('volume_cache', None)
        if cache is None:
            cache = _DEFAULT_CACHE
        img, seg = cache.get(
            results['img_path'],
            results['seg_map_path'],
            results.get('mask_values'),
        )
        depth = img.shape[2]
        k = int(results['slice_index'])
        if not 0 <= k < depth:
            raise IndexError(
                f'slice {k} outside a volume of {depth} slices: '
                + results['img_path']
            )
        results['img'] = slice_25d(img, k)
        results['gt_seg_map'] = np.ascontiguousarray(seg[:, :, k])
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        results.setdefault('seg_fields', []).append('gt_seg_map')
        return results
