"""Loading transforms of 2D images and masks, and the test pipelines' loader.

Every loader fails loudly: a missing, corrupt or wrongly encoded file raises
an error that names the file and the problem, so a bad sample can never turn
into a silently wrong label map. Images are decoded as stored: an EXIF
orientation tag is ignored (cv2 and PIL would otherwise rotate a JPEG while
its PNG mask stays as stored, misaligning the two). Images are 8-bit: a
16-bit image, an alpha channel with transparent pixels and a JPEG that
libjpeg reports as damaged are refused (see :func:`imdecode_as_stored`).

The test pipelines are written so that mmseg's own inference code works on
them unchanged: it drops test-pipeline steps of type ``LoadAnnotations``
only and looks for one of type ``LoadImageFromFile``. Hence
:class:`LoadFundusAnnotations` passes a sample without a mask through, and
the test pipelines load images with
``dict(type='LoadImageFromFile', _scope_='mmseg_dfq')``
(:class:`LoadImageOrSliceFromFile`).
"""

import io
import logging
import os
import os.path as osp
import sys
import tempfile
import threading
from typing import Dict, Optional

import cv2
import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmengine.logging import print_log
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import TRANSFORMS
from PIL import Image

from ...registry import TRANSFORMS as DFQ_TRANSFORMS
from ..fundus_codec import decode_fundus_mask
from ..mask_values import check_mask_values, map_mask_values
from ..nifti import is_nifti
from .volume import LoadProstateSlice


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


# JPEG data start with SOI and a marker.
_JPEG_MAGIC = b'\xff\xd8\xff'
# What libjpeg writes (to file descriptor 2, without a file name) when a
# JPEG's data are damaged; it then returns an image anyway, part grey.
_JPEG_DAMAGE = (
    'Corrupt JPEG data',  # bad Huffman code, premature end of a segment...
    'Premature end of JPEG file',
    'Inconsistent progression sequence',
    'Invalid SOS parameters',
)
# libjpeg's 'Corrupt JPEG data: N extraneous bytes before marker 0x..':
# bytes between markers, outside the entropy-coded data, that it skips;
# the image decodes as it would without them. Warned about, not refused.
_JPEG_PADDING = 'extraneous bytes before marker'

# Guards the process-wide file descriptor 2 while it is redirected; held
# across fork() so that no child starts with it redirected.
_FD2_LOCK = threading.Lock()
if hasattr(os, 'register_at_fork'):  # POSIX
    os.register_at_fork(
        before=_FD2_LOCK.acquire,
        after_in_parent=_FD2_LOCK.release,
        after_in_child=_FD2_LOCK.release,
    )
# One capture file per process (a forked worker makes its own).
_fd2_capture: Dict[int, object] = {}


def _call_capturing_fd2(fn, *args):
    """Call ``fn(*args)`` while what is written to descriptor 2 is kept.

    Args:
        fn (callable): The function (e.g. ``cv2.imdecode``).
        *args: Its arguments.

    Returns:
        tuple: ``(result, text)`` - what ``fn`` returned and what was
        written to descriptor 2 meanwhile.
    """
    with _FD2_LOCK:
        tmp = _fd2_capture.get(os.getpid())
        if tmp is None:
            tmp = _fd2_capture[os.getpid()] = tempfile.TemporaryFile()
        # Empty, whatever a call that raised left in it.
        tmp.seek(0)
        tmp.truncate()
        _flush_stderr()
        try:
            saved = os.dup(2)
        except OSError:  # no descriptor 2 (a daemon): nothing to keep
            saved = None
        try:
            os.dup2(tmp.fileno(), 2)
            out = fn(*args)
        finally:
            _flush_stderr()
            if saved is None:
                os.close(2)
            else:
                os.dup2(saved, 2)
                os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode('utf-8', 'replace')
        tmp.seek(0)
        tmp.truncate()
    return out, text


def _flush_stderr() -> None:
    """Flush Python's stderr, so its text lands where it was meant to."""
    if sys.stderr is not None:
        sys.stderr.flush()


def _imdecode_checked(data: bytes, path: str, what: str) -> np.ndarray:
    """Decode image bytes as stored (``IMREAD_UNCHANGED``), or raise.

    ``IMREAD_UNCHANGED`` keeps the bit depth and an alpha channel and
    ignores an EXIF orientation tag. A JPEG is decoded with libjpeg's
    messages captured: damaged data that libjpeg reports ('Corrupt JPEG
    data: ...', 'Premature end of JPEG file') is an error naming the file;
    its other messages go on to stderr. JPEG has no checksum, so damage that
    still decodes as valid data cannot be told from an image (PIL reports
    less than libjpeg: on 300 damaged copies each of one generated JPEG,
    PIL failed on 21% with 64 random bytes written into the data and on
    none with 64 zeroed bytes, libjpeg's messages flagged 56% and 69%,
    every file PIL caught among them; both flag every truncated file).
    libjpeg's 'extraneous bytes before marker' (bytes it skips between two
    markers; the pixels are intact) is only logged as a warning.

    Args:
        data (bytes): Encoded image (PNG, JPEG, TIFF, BMP...).
        path (str): Where the bytes came from, named in errors.
        what (str): What the image is, used in the message.

    Returns:
        np.ndarray: The decoded pixels, as the file stores them.
    """
    buf = np.frombuffer(data, np.uint8)
    if not data.startswith(_JPEG_MAGIC):
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    else:
        img, text = _call_capturing_fd2(
            cv2.imdecode, buf, cv2.IMREAD_UNCHANGED
        )
        lines = text.splitlines()
        damage = [
            ln
            for ln in lines
            if ln.startswith(_JPEG_DAMAGE) and _JPEG_PADDING not in ln
        ]
        padded = [ln for ln in lines if _JPEG_PADDING in ln]
        others = [ln for ln in lines if ln not in damage and ln not in padded]
        if padded:
            # Bytes between two markers, outside the image data: some
            # encoders write them; the pixels are intact.
            print_log(
                f'{what}: libjpeg: {padded[0]} (skipped; the pixels are '
                f'intact): {path}',
                logger='current',
                level=logging.WARNING,
            )
        if others and sys.stderr is not None:
            # Not libjpeg's damage reports (its other warnings, or another
            # thread's output): passed on.
            sys.stderr.write('\n'.join(others) + '\n')
        if damage:
            raise ValueError(
                f'corrupt {what} (libjpeg: {"; ".join(damage)}): {path}'
            )
    if img is None:
        raise ValueError(f'cannot decode {what} (corrupt?): {path}')
    return img


def imdecode_as_stored(data: bytes, path: str, what: str = 'image'):
    """Decode image bytes to BGR uint8 pixels as stored (no EXIF rotation).

    Grey images are repeated to 3 channels. Refused with an error naming
    the file: undecodable or damaged data (a JPEG that libjpeg reports as
    corrupt, see :func:`_imdecode_checked`), an image that is not 8-bit
    (16-bit: its scaling to 8 bits cannot be guessed - a 12-bit scan in a
    16-bit file would turn nearly black - so convert it with the scaling
    you intend), and an alpha channel with transparent pixels (the colour
    there is undefined). A fully opaque alpha channel is dropped.

    Args:
        data (bytes): Encoded image (PNG, JPEG, TIFF, BMP...).
        path (str): Where the bytes came from, named in errors.
        what (str): What the image is, used in the message. Default:
            'image'.

    Returns:
        np.ndarray: (H, W, 3) uint8, BGR.
    """
    img = _imdecode_checked(data, path, what)
    if img.dtype != np.uint8:
        bits = (
            f'{img.dtype.itemsize * 8}-bit'
            if img.dtype.kind == 'u'
            else f'of type {img.dtype}'
        )
        raise ValueError(
            f'{what} is {bits} (values up to {img.max()}); images are read '
            'as 8-bit, and how to scale this one cannot be guessed: convert '
            f'it to 8-bit with the scaling you intend: {path}'
        )
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    channels = img.shape[2]
    if channels == 4:
        transparent = int(np.count_nonzero(img[..., 3] != 255))
        if transparent:
            raise ValueError(
                f'{what} has an alpha channel with {transparent} '
                'transparent pixel(s) (alpha < 255), whose colour is '
                'undefined: flatten it onto the background you intend, or '
                f'drop the alpha if its colours are valid: {path}'
            )
        return np.ascontiguousarray(img[..., :3])
    if channels != 3:
        raise ValueError(
            f'{what} has {channels} channels, expected grey, BGR or BGRA: '
            + path
        )
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


def _is_palette_png(data: bytes) -> bool:
    """Whether ``data`` is a PNG of indexed colour (IHDR colour type 3)."""
    return (
        data[:8] == b'\x89PNG\r\n\x1a\n'
        and data[12:16] == b'IHDR'
        and len(data) > 25
        and data[25] == 3
    )


def read_grey_mask(path: str, what: str = 'mask') -> np.ndarray:
    """Read a single-channel label mask as stored, 8- or 16-bit.

    An indexed-colour (palette) PNG gives its indices, as mmseg's loader
    reads them. An RGB or RGBA file whose colour channels are identical, or
    grey + alpha, is accepted as grey; anything else is refused, since its
    labels would be a guess. A JPEG that libjpeg reports as damaged is refused
    (see :func:`_imdecode_checked`).

    Args:
        path (str): Mask file (PNG, TIFF, BMP...).
        what (str): What the mask is, used in errors. Default: 'mask'.

    Returns:
        np.ndarray: (H, W) uint8 or uint16 values.
    """
    data = _read_bytes(path, what)
    if _is_palette_png(data):
        # Indexed colour (the usual mmseg / VOC label PNG): the labels are
        # the palette indices, as mmseg's pillow loader reads them; cv2
        # would expand them to the palette's colours.
        try:
            with Image.open(io.BytesIO(data)) as img:
                return np.array(img, dtype=np.uint8)
        except Exception as err:
            raise ValueError(
                f'cannot decode {what} (corrupt?): {path} ({err})'
            ) from err
    mask = _imdecode_checked(data, path, what)
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
                    f'{what} is not single-channel grey (its colour '
                    f'channels differ): {path}'
                )
            mask = colour[..., 0]
        else:
            raise ValueError(
                f'{what} has {mask.shape[2]} channels, expected a single '
                f'grey channel: {path}'
            )
    if mask.dtype not in (np.uint8, np.uint16):
        raise ValueError(
            f'{what} has dtype {mask.dtype}, expected 8- or 16-bit grey: '
            + path
        )
    return mask


class _MaskLoader(LoadAnnotations):
    """Shared part of the 2D mask loaders: pass-through and size check.

    A sample without ``seg_map_path`` (or with None) passes through
    unchanged: mmseg's ``inference_model`` and ``MMSegInferencer`` drop only
    steps of type ``LoadAnnotations`` from a test pipeline, so these run on
    new images that have no mask. When an image was loaded before (its
    ``ori_shape`` is in ``results``) the mask must have the same size, so
    the annotations may also be loaded after a test-time ``Resize``.
    """

    what = 'mask'

    def __init__(self) -> None:
        super().__init__(reduce_zero_label=None, imdecode_backend='cv2')

    def decode(self, mask: np.ndarray, results: dict) -> np.ndarray:
        """Stored values -> uint8 class indices (subclasses)."""
        raise NotImplementedError

    def _load_seg_map(self, results: dict) -> None:
        """Decode ``results['seg_map_path']`` into ``results['gt_seg_map']``.

        Args:
            results (dict): Result dict with ``seg_map_path``.
        """
        path = results['seg_map_path']
        mask = read_grey_mask(path, self.what)
        ori_shape = results.get('ori_shape')
        if ori_shape is not None and tuple(mask.shape) != tuple(ori_shape):
            raise ValueError(
                f'{self.what} size {mask.shape} differs from its image size '
                f'{tuple(ori_shape)} (image {results.get("img_path")}): '
                + path
            )
        results['gt_seg_map'] = self.decode(mask, results)
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


@TRANSFORMS.register_module()
class LoadFundusAnnotations(_MaskLoader):
    """Load a DoFE fundus mask and decode it to labels 0 / 1 / 2.

    The mask must be a single-channel grey PNG (see :func:`read_grey_mask`)
    with 8-bit values, or 16-bit values that stay within 0..255. Grey levels
    are decoded with :func:`~mmseg_dfq.datasets.fundus_codec.
    decode_fundus_mask`: far from 0/128/255 they give a warning naming the
    file, or an error past 1% of the mask. Samples without a mask pass
    through (see ``_MaskLoader``).

    Required Keys:

    - seg_map_path (optional)
    - ori_shape (optional, used for the size check)

    Added Keys:

    - gt_seg_map (np.uint8, (H, W)), seg_fields
    """

    what = 'fundus mask'

    def decode(self, mask: np.ndarray, results: dict) -> np.ndarray:
        path = results['seg_map_path']
        if mask.dtype == np.uint16 and mask.max() > 255:
            raise ValueError(
                f'fundus mask holds 16-bit values up to {mask.max()}, '
                'outside the 0/128/255 grey encoding: ' + path
            )
        return decode_fundus_mask(mask, path)


@TRANSFORMS.register_module()
class LoadMappedAnnotations(_MaskLoader):
    """Load a grey mask and map its stored values to class indices.

    For data sets whose masks store one value per class that is not the
    class index (e.g. 0 / 255, or 0 / 128 / 255): the map comes from the
    sample's ``mask_values`` (``MultiSiteDataset`` puts its config's there)
    or, for a sample without one, from ``mask_values`` here. A stored value
    outside the map stops loading with an error naming the file. Samples
    without a mask pass through (see ``_MaskLoader``).

    Required Keys:

    - seg_map_path (optional), mask_values (optional)
    - ori_shape (optional, used for the size check)

    Added Keys:

    - gt_seg_map (np.uint8, (H, W)), seg_fields

    Args:
        mask_values (dict[int, int], optional): Stored value -> class
            index, for samples that carry none. Default: None.
    """

    def __init__(self, mask_values: Optional[Dict[int, int]] = None) -> None:
        super().__init__()
        self.mask_values = (
            None if mask_values is None else check_mask_values(mask_values)
        )

    def decode(self, mask: np.ndarray, results: dict) -> np.ndarray:
        values = results.get('mask_values', self.mask_values)
        if values is None:
            raise ValueError(
                'LoadMappedAnnotations: the sample has no mask_values and '
                'none were given to the transform: ' + results['seg_map_path']
            )
        return map_mask_values(mask, values, results['seg_map_path'])

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(mask_values={self.mask_values})'


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
        if is_nifti(path):
            raise ValueError(
                f'{path} is a NIfTI volume: segment volumes with '
                "tools/infer.py (mmseg_dfq.apis.SegInferencer); mmseg's "
                'inference_model / MMSegInferencer take its 2.5D slices as '
                'arrays, e.g. mmseg_dfq.apis.nifti_slices(path)'
            )
        return super().transform(results)
