"""Loading transforms for the fundus and prostate DG benchmarks.

Every loader fails loudly: a missing, corrupt or wrongly encoded file raises
an error that names the file and the problem, so a bad sample can never turn
into a silently wrong label map. Images are decoded as stored: an EXIF
orientation tag is ignored (cv2 and PIL would otherwise rotate a JPEG while
its PNG mask stays as stored, misaligning the two).

The test pipelines are written so that mmseg's own inference code works on
them unchanged: it drops test-pipeline steps of type ``LoadAnnotations``
only and looks for one of type ``LoadImageFromFile``. Hence
:class:`LoadFundusAnnotations` passes a sample without a mask through, and
the test pipelines load images with
``dict(type='LoadImageFromFile', _scope_='mmseg_dfq')``
(:class:`LoadImageOrSliceFromFile`).
"""

import os.path as osp
from collections import OrderedDict
from typing import Optional, Tuple

import cv2
import nibabel as nib
import numpy as np
from mmcv.transforms import BaseTransform, LoadImageFromFile
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import TRANSFORMS

from ..registry import TRANSFORMS as DFQ_TRANSFORMS

# Grey-level thresholds of the DoFE/RAM-DSIR fundus masks (255 background,
# 128 disc rim, 0 cup); the bands tolerate JPEG-like noise around each level.
FUNDUS_BG_MIN = 201
FUNDUS_CUP_MAX = 50


def _read_bytes(path: str, what: str) -> bytes:
    """Read a whole file, raising an error that names it.

    Args:
        path (str): File to read.
        what (str): What the file is, used in the message (e.g. 'image').

    Returns:
        bytes: The file content.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'{what} file not found: {path}')
    with open(path, 'rb') as f:
        data = f.read()
    if not data:
        raise ValueError(f'{what} file is empty: {path}')
    return data


# Decode as stored: 3-channel BGR, EXIF orientation ignored.
IMREAD_AS_STORED = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
NIFTI_EXTS = ('.nii', '.nii.gz')


def imdecode_as_stored(data: bytes, path: str, what: str = 'image'):
    """Decode image bytes to BGR uint8 pixels as stored (no EXIF rotation).

    Args:
        data (bytes): Encoded image (PNG, JPEG, TIFF, BMP...).
        path (str): Where the bytes came from, named in errors.
        what (str): What the image is, used in the message. Default:
            'image'.

    Returns:
        np.ndarray: (H, W, 3) uint8, BGR.
    """
    img = cv2.imdecode(np.frombuffer(data, np.uint8), IMREAD_AS_STORED)
    if img is None:
        raise ValueError(f'cannot decode {what} (corrupt?): {path}')
    return img


def read_image_as_stored(path: str, what: str = 'image') -> np.ndarray:
    """Read an image file as stored (no EXIF rotation), BGR uint8.

    Args:
        path (str): Image file.
        what (str): What the image is, used in errors. Default: 'image'.

    Returns:
        np.ndarray: (H, W, 3) uint8, BGR.
    """
    return imdecode_as_stored(_read_bytes(path, what), path, what)


def decode_fundus_mask(
    mask: np.ndarray,
    path: Optional[str] = None,
    tolerance: int = 32,
    max_off_fraction: float = 0.01,
) -> np.ndarray:
    """Map fundus mask grey levels to labels with the authors' thresholds.

    The encoding is 255 background, 128 disc rim, 0 cup. The thresholds are
    tolerant (compression noise and smoothed edges of real releases decode
    to the nearest band), but a grey level more than ``tolerance`` away
    from all three levels (33..95 and 161..222 with the default 32) is not
    noise: such pixels are counted, a ``UserWarning`` names the file, their
    fraction and values, and past ``max_off_fraction`` of the mask the file
    is refused, since its labels would be guesses.

    Args:
        mask (np.ndarray): Grey levels, shape (H, W), integer values in
            [0, 255].
        path (str, optional): The file the mask came from, for messages.
            Default: None.
        tolerance (int): Largest distance to 0, 128 or 255 that counts as
            that level. Default: 32.
        max_off_fraction (float): Largest fraction of pixels off the
            encoding that is decoded (with a warning); more raises.
            Default: 0.01.

    Returns:
        np.ndarray: uint8 labels of shape (H, W): 0 background (> 200),
        1 optic-disc rim (51..200), 2 optic cup (<= 50).
    """
    import warnings

    name = path if path is not None else '<array>'
    mask = np.asarray(mask)
    if mask.dtype.kind not in 'ui':
        raise ValueError(
            f'fundus mask must hold integer grey levels, got dtype '
            f'{mask.dtype}: {name}'
        )
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(
            f'fundus mask values span {mask.min()}..{mask.max()}, outside '
            f'the 0/128/255 grey encoding: {name}'
        )
    counts = np.bincount(mask.ravel().astype(np.intp), minlength=256)
    levels = np.arange(256)
    nearest = np.minimum(
        np.minimum(levels, np.abs(levels - 128)), 255 - levels
    )
    off = np.flatnonzero((nearest > tolerance) & (counts > 0))
    if off.size:
        num_off = int(counts[off].sum())
        fraction = num_off / mask.size
        worst = off[np.argsort(-counts[off], kind='stable')][:8]
        values = ', '.join(f'{v} ({counts[v]} px)' for v in worst)
        if off.size > worst.size:
            values += f', ... ({off.size} values in all)'
        text = (
            f'fundus mask has {num_off} pixels ({fraction:.2%}) with grey '
            f'levels more than {tolerance} from 0/128/255 - {values}'
        )
        if fraction > max_off_fraction:
            raise ValueError(
                f'{text}; more than {max_off_fraction:.2%} of the mask is '
                f'not in the 255 (background) / 128 (rim) / 0 (cup) '
                f'encoding: {name}'
            )
        warnings.warn(
            f'{text}; decoded by the thresholds (> 200 background, '
            f'51..200 rim, <= 50 cup): {name}',
            UserWarning,
            stacklevel=2,
        )
    labels = np.ones(mask.shape, dtype=np.uint8)
    labels[mask >= FUNDUS_BG_MIN] = 0
    labels[mask <= FUNDUS_CUP_MAX] = 2
    return labels


@TRANSFORMS.register_module()
class LoadFundusImageFromFile(LoadImageFromFile):
    """Load a fundus image, raising an error naming a missing/corrupt file.

    mmcv's ``LoadImageFromFile`` reports an undecodable file with a bare
    assertion (or not at all under ``python -O``); this loader raises
    ``FileNotFoundError`` / ``ValueError`` with the path instead. The image
    is decoded as 3-channel BGR uint8 (mmcv's convention; the data
    preprocessor converts to RGB) with its pixels as stored: an EXIF
    orientation tag is ignored, as it is for the mask.

    Required Keys:

    - img_path

    Added Keys:

    - img, img_shape, ori_shape

    Args:
        to_float32 (bool): Whether to convert the image to float32.
            Default: False.
    """

    def __init__(self, to_float32: bool = False) -> None:
        super().__init__(to_float32=to_float32, color_type='color')

    def transform(self, results: dict) -> dict:
        """Load the image of ``results['img_path']``.

        Args:
            results (dict): Result dict with ``img_path``.

        Returns:
            dict: ``results`` with ``img`` (H, W, 3), ``img_shape`` and
            ``ori_shape``.
        """
        path = results['img_path']
        img = read_image_as_stored(path, 'fundus image')
        if self.to_float32:
            img = img.astype(np.float32)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(to_float32={self.to_float32})'


@TRANSFORMS.register_module()
class LoadFundusAnnotations(LoadAnnotations):
    """Load a DoFE fundus mask and decode it to labels 0 / 1 / 2.

    The mask must be a single-channel grey PNG (an RGB or RGBA file whose
    colour channels are identical is accepted as grey) with 8-bit values, or
    16-bit values that stay within 0..255. Grey levels are decoded with
    :func:`decode_fundus_mask`. When an image was loaded before (its
    ``ori_shape`` is in ``results``) the mask must have the same size, so
    the annotations may also be loaded after a test-time ``Resize``.

    A sample without ``seg_map_path`` (or with None) passes through
    unchanged: mmseg's ``inference_model`` and ``MMSegInferencer`` drop only
    steps of type ``LoadAnnotations`` from a test pipeline, so this one runs
    on new images that have no mask.

    Required Keys:

    - seg_map_path (optional, see above)
    - ori_shape (optional, used for the size check)

    Added Keys:

    - gt_seg_map (np.uint8, (H, W)), seg_fields
    """

    def __init__(self) -> None:
        super().__init__(reduce_zero_label=None, imdecode_backend='cv2')

    def _load_seg_map(self, results: dict) -> None:
        """Decode ``results['seg_map_path']`` into ``results['gt_seg_map']``.

        Grey levels far from 0/128/255 give a warning naming the file, or an
        error past 1% of the mask (see :func:`decode_fundus_mask`).

        Args:
            results (dict): Result dict with ``seg_map_path``.
        """
        path = results['seg_map_path']
        data = _read_bytes(path, 'fundus mask')
        mask = cv2.imdecode(
            np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED
        )
        if mask is None:
            raise ValueError(f'cannot decode fundus mask (corrupt?): {path}')
        if mask.ndim == 3:
            if mask.shape[2] == 2:
                # grey + alpha
                mask = mask[..., 0]
            elif mask.shape[2] in (3, 4):
                colour = mask[..., :3]
                if not (
                    np.array_equal(colour[..., 0], colour[..., 1])
                    and np.array_equal(colour[..., 0], colour[..., 2])
                ):
                    raise ValueError(
                        'fundus mask is not single-channel grey (its colour '
                        f'channels differ): {path}'
                    )
                mask = colour[..., 0]
            else:
                raise ValueError(
                    f'fundus mask has {mask.shape[2]} channels, expected a '
                    f'single grey channel: {path}'
                )
        if mask.dtype == np.uint16:
            if mask.max() > 255:
                raise ValueError(
                    f'fundus mask holds 16-bit values up to {mask.max()}, '
                    'outside the 0/128/255 grey encoding: ' + path
                )
        elif mask.dtype != np.uint8:
            raise ValueError(
                f'fundus mask has dtype {mask.dtype}, expected 8-bit grey: '
                + path
            )
        ori_shape = results.get('ori_shape')
        if ori_shape is not None and tuple(mask.shape) != tuple(ori_shape):
            raise ValueError(
                f'fundus mask size {mask.shape} differs from its image size '
                f'{tuple(ori_shape)} (image {results.get("img_path")}): '
                + path
            )
        results['gt_seg_map'] = decode_fundus_mask(mask, path)
        results['seg_fields'].append('gt_seg_map')

    def transform(self, results: dict) -> dict:
        """Load the mask of ``results['seg_map_path']``.

        Args:
            results (dict): Result dict with ``seg_map_path``.

        Returns:
            dict: ``results`` with ``gt_seg_map`` and ``seg_fields``, or
            ``results`` unchanged for a sample without a mask.
        """
        if results.get('seg_map_path') is None:
            return results
        results.setdefault('seg_fields', [])
        self._load_seg_map(results)
        return results

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}()'


def read_nifti_header(path: str) -> Tuple[tuple, tuple, np.ndarray]:
    """Read shape, voxel size and affine of a NIfTI file without its voxels.

    Args:
        path (str): Path of a ``.nii`` / ``.nii.gz`` file.

    Returns:
        tuple: ``(shape, spacing, affine)`` - the array shape, the header
        zooms in mm (array axis order) and the 4x4 affine.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'NIfTI file not found: {path}')
    try:
        # nib.load only parses the header; voxels stay behind a proxy.
        img = nib.load(path)
        shape = tuple(int(s) for s in img.header.get_data_shape())
        spacing = tuple(float(z) for z in img.header.get_zooms())
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as e:
        raise ValueError(f'cannot read NIfTI header of {path}: {e}') from e
    return shape, spacing, affine


def decode_nifti(path: str) -> np.ndarray:
    """Decode the voxel array of a NIfTI file.

    Args:
        path (str): Path of a ``.nii`` / ``.nii.gz`` file.

    Returns:
        np.ndarray: The voxel data (header scaling applied).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'NIfTI file not found: {path}')
    try:
        return np.asanyarray(nib.load(path).dataobj)
    except Exception as e:
        raise ValueError(f'cannot decode NIfTI (corrupt?) {path}: {e}') from e


def normalise_prostate_image(img: np.ndarray, path: str) -> np.ndarray:
    """Check a T2 volume and min-max scale it to [-1, 1].

    Args:
        img (np.ndarray): Decoded voxels, (H, W, D).
        path (str): Its file, named in errors.

    Returns:
        np.ndarray: float32 (H, W, D) in [-1, 1].
    """
    if img.ndim != 3:
        raise ValueError(
            f'prostate image must be a 3D volume, got shape {img.shape}: '
            + path
        )
    if not np.all(np.isfinite(img)):
        raise ValueError(f'prostate image holds NaN/inf values: {path}')
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


def load_prostate_volume(
    img_path: str, seg_path: str
) -> Tuple[np.ndarray, np.ndarray]:
    """Decode, check and normalise one prostate volume and its labels.

    Args:
        img_path (str): T2 image NIfTI.
        seg_path (str): Segmentation NIfTI (labels 0, 1 and optionally 2).

    Returns:
        tuple[np.ndarray, np.ndarray]: The image min-max scaled to [-1, 1]
        (float32, (H, W, D)) and the binary labels (uint8, (H, W, D), 2 -> 1).
    """
    img = decode_nifti(img_path)
    if img.ndim != 3:
        raise ValueError(
            f'prostate image must be a 3D volume, got shape {img.shape}: '
            + img_path
        )
    seg = decode_nifti(seg_path)
    if seg.shape != img.shape:
        raise ValueError(
            f'segmentation shape {seg.shape} differs from image shape '
            f'{img.shape} ({img_path}): {seg_path}'
        )
    seg_int = np.rint(seg).astype(np.int64)
    if not np.array_equal(seg_int, seg) or seg_int.min() < 0:
        bad = np.unique(seg[(seg_int != seg) | (seg_int < 0)])[:5]
        raise ValueError(
            f'segmentation holds labels outside {{0, 1, 2}} (e.g. {bad}): '
            + seg_path
        )
    if seg_int.max() > 2:
        bad = np.unique(seg_int[seg_int > 2])[:5]
        raise ValueError(
            f'segmentation holds labels outside {{0, 1, 2}} (e.g. {bad}): '
            + seg_path
        )
    img = normalise_prostate_image(img, img_path)
    return img, (seg_int > 0).astype(np.uint8)


class VolumeCache:
    """LRU cache of decoded, normalised prostate volumes with a byte budget.

    Volumes are decoded by :func:`load_prostate_volume` on first use and
    kept until the budget forces out the least recently used one. A volume
    larger than the whole budget is returned without being kept. Each
    dataloader worker holds its own copy, so the budget applies per worker.

    Args:
        max_bytes (int): Budget for the image + label arrays held.
            Default: 1 GiB.
    """

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        if max_bytes < 0:
            raise ValueError(f'cache budget must be >= 0, got {max_bytes}')
        self.max_bytes = int(max_bytes)
        self.num_decodes = 0
        self._items: 'OrderedDict[str, tuple]' = OrderedDict()
        self._bytes = 0

    @property
    def nbytes(self) -> int:
        """int: Bytes currently held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, img_path: str, seg_path: str) -> Tuple[np.ndarray, ...]:
        """Return the normalised image and labels of a volume.

        Args:
            img_path (str): T2 image NIfTI.
            seg_path (str): Its segmentation NIfTI.

        Returns:
            tuple[np.ndarray, np.ndarray]: See :func:`load_prostate_volume`.
        """
        key = img_path + '\0' + seg_path
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        item = load_prostate_volume(img_path, seg_path)
        self.num_decodes += 1
        size = sum(a.nbytes for a in item)
        if size <= self.max_bytes:
            while self._bytes + size > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= sum(a.nbytes for a in old)
            self._items[key] = item
            self._bytes += size
        return item


# Used when LoadProstateSlice runs outside a ProstateDGDataset.
_DEFAULT_CACHE = VolumeCache()


@TRANSFORMS.register_module()
class LoadProstateSlice(BaseTransform):
    """Load one 2.5D prostate slice and its labels from a NIfTI volume.

    The input stacks slices ``k-1, k, k+1`` along the third NIfTI axis as
    three channels (``volume[:, :, k]``, no transpose; at the first / last
    slice the edge slice is repeated) of the volume min-max scaled to
    [-1, 1]. The volume comes from the dataset's :class:`VolumeCache`
    (``results['volume_cache']``, set by ``ProstateDGDataset``), so it is
    decoded once rather than once per slice.

    Required Keys:

    - img_path, seg_map_path, slice_index
    - volume_cache (optional)

    Added Keys:

    - img (np.float32, (H, W, 3)), gt_seg_map (np.uint8, (H, W), labels
      0 / 1), img_shape, ori_shape, seg_fields
    """

    def transform(self, results: dict) -> dict:
        """Load slice ``results['slice_index']`` of the volume.

        Args:
            results (dict): Result dict from ``ProstateDGDataset``.

        Returns:
            dict: ``results`` with ``img``, ``gt_seg_map`` and shapes.
        """
        cache: Optional[VolumeCache] = results.pop('volume_cache', None)
        if cache is None:
            cache = _DEFAULT_CACHE
        img, seg = cache.get(results['img_path'], results['seg_map_path'])
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


@DFQ_TRANSFORMS.register_module(name='LoadImageFromFile')
class LoadImageOrSliceFromFile(LoadFundusImageFromFile):
    """The test pipelines' loader: an image file, or a 2.5D NIfTI slice.

    Registered in the ``mmseg_dfq`` scope under mmcv's name, so a test
    pipeline selects it with ``dict(type='LoadImageFromFile',
    _scope_='mmseg_dfq')``. mmseg's ``MMSegInferencer`` finds that step by
    its type name and replaces it with its own loader of paths and arrays
    (which, built in this scope, reads paths with this class again);
    ``inference_model`` replaces the first step with
    ``LoadImageFromNDArray`` for arrays. In the ``mmseg`` scope
    ``LoadImageFromFile`` stays mmcv's.

    - A sample with ``slice_index`` (from ``ProstateDGDataset``) is loaded
      exactly as :class:`LoadProstateSlice` does (2.5D image and labels).
    - A NIfTI path without ``slice_index`` is refused with a message:
      volumes are segmented by ``tools/infer.py``, and mmseg's inference
      APIs take their 2.5D slices as arrays
      (:func:`mmseg_dfq.apis.nifti_slices`).
    - Any other path is an image, loaded as
      :class:`LoadFundusImageFromFile` does (as stored, EXIF orientation
      ignored, errors naming the file).

    Required Keys:

    - img_path
    - slice_index, seg_map_path, volume_cache (prostate samples)

    Added Keys:

    - img, img_shape, ori_shape (+ gt_seg_map, seg_fields for slices)

    Args:
        to_float32 (bool): Whether to convert an image file's pixels to
            float32 (slices are float32 already). Default: False.
    """

    def __init__(self, to_float32: bool = False) -> None:
        super().__init__(to_float32=to_float32)
        self._slice_loader = LoadProstateSlice()

    def transform(self, results: dict) -> dict:
        """Load the image or slice that ``results`` names.

        Args:
            results (dict): Result dict with ``img_path``.

        Returns:
            dict: ``results`` with ``img`` and shapes.
        """
        if 'slice_index' in results:
            return self._slice_loader.transform(results)
        path = results['img_path']
        if str(path).lower().endswith(NIFTI_EXTS):
            raise ValueError(
                f'{path} is a NIfTI volume: segment volumes with '
                "tools/infer.py (mmseg_dfq.apis.SegInferencer); mmseg's "
                'inference_model / MMSegInferencer take its 2.5D slices as '
                'arrays, e.g. mmseg_dfq.apis.nifti_slices(path)'
            )
        return super().transform(results)
