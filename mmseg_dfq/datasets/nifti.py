"""NIfTI I/O in one place: file naming, header, voxels, labels written back.

The datasets index volumes from their headers, the loading transforms
decode their voxels, and the inferencer writes predicted labels with the
source's geometry; all three go through these functions, so a file is
named, read and refused the same way everywhere (every error names it).
"""

import logging
import os.path as osp
from typing import Optional, Tuple

import nibabel as nib
import numpy as np
from mmengine.logging import print_log

# ``.nii.gz`` first: the longest extension is matched first.
NIFTI_EXTS = ('.nii.gz', '.nii')
# The SAML layout keeps a case's labels beside its volume under this suffix.
SEG_SUFFIX = '_segmentation'


def is_nifti(path: str) -> bool:
    """Whether a file name has a NIfTI extension (case-insensitive).

    Args:
        path (str): A file name or path.

    Returns:
        bool: True for ``.nii`` / ``.nii.gz``.
    """
    return str(path).lower().endswith(NIFTI_EXTS)


def split_nifti_ext(filename: str) -> Optional[Tuple[str, str]]:
    """Split a NIfTI file name into (stem, extension), or None if not NIfTI.

    Args:
        filename (str): A file name (no folder).

    Returns:
        tuple[str, str] | None: E.g. ``('Case00', '.nii.gz')``.
    """
    lower = filename.lower()
    for ext in NIFTI_EXTS:
        if lower.endswith(ext):
            return filename[: -len(ext)], filename[-len(ext) :]
    return None


def file_stem(path: str) -> str:
    """File name without its extension (``.nii.gz`` counts as one).

    Args:
        path (str): A file path.

    Returns:
        str: E.g. ``'Case00'`` for ``'site/Case00.nii.gz'``.
    """
    name = osp.basename(path)
    parts = split_nifti_ext(name)
    return parts[0] if parts is not None else osp.splitext(name)[0]


def _raw_voxel_size(img, ndim: int) -> np.ndarray:
    """The voxel size a NIfTI header stores, before nibabel's fixes.

    ``nib.load`` checks the header and fixes it in place: a 0 in
    ``pixdim[1:4]`` becomes 1 and a negative size its absolute value, with
    only a log line that does not name the file. The header is read again
    here without that check (``check=False``), as stored.

    Args:
        img: The image ``nib.load`` returned.
        ndim (int): Its number of array dimensions.

    Returns:
        np.ndarray: ``pixdim[1 : 1 + min(ndim, 3)]`` as stored (float64).
    """
    holder = img.file_map.get('header', img.file_map['image'])
    with holder.get_prepare_fileobj(mode='rb') as fobj:
        raw = type(img.header).from_fileobj(fobj, check=False)
    return np.asarray(raw['pixdim'][1 : 1 + min(ndim, 3)], np.float64)


def _sizes_text(sizes) -> str:
    """Voxel sizes for a message, e.g. ``'(0.5, 0.6, 3)'``."""
    return '(' + ', '.join(f'{float(v):.6g}' for v in sizes) + ')'


def check_voxel_size(pixdim, path: str) -> None:
    """Refuse a voxel size that is not positive and finite.

    Args:
        pixdim (Sequence[float]): The spatial voxel sizes of a header.
        path (str): Its file, named in the error.
    """
    sizes = np.asarray(pixdim, np.float64)
    if np.all(np.isfinite(sizes)) and np.all(sizes > 0):
        return
    raise ValueError(
        f'NIfTI voxel size (header pixdim[1:{len(sizes) + 1}]) is '
        f'{_sizes_text(sizes)}; every spatial size must be '
        'positive and finite (a 0 or negative size would be read silently '
        'as 1 or as its absolute value, and distances in mm would be '
        f'wrong): {path}'
    )


# Relative difference up to which two voxel sizes count as the same (float32
# headers and rounding by converters differ in the last digits).
VOXEL_SIZE_RTOL = 1e-3


def check_same_voxel_size(
    img_path: str, img_spacing, seg_path: str, seg_spacing
) -> bool:
    """Warn when a segmentation's voxel size differs from its image's.

    Sizes count as equal up to a relative difference of
    ``VOXEL_SIZE_RTOL`` (0.1%). A difference is logged as a warning naming
    both files, not refused: converters often write a label volume's
    header on their own (e.g. 1 mm voxels), and the voxels still match
    when the shapes do (checked apart). Distances use the image's size.

    Args:
        img_path (str): The image volume, named in the warning.
        img_spacing (Sequence[float]): Its voxel size (mm).
        seg_path (str): The segmentation, named in the warning.
        seg_spacing (Sequence[float]): Its voxel size (mm).

    Returns:
        bool: Whether the two agree.
    """
    a = np.asarray(img_spacing, np.float64)
    b = np.asarray(seg_spacing, np.float64)
    if a.shape == b.shape and np.all(
        np.abs(a - b) <= VOXEL_SIZE_RTOL * np.maximum(np.abs(a), np.abs(b))
    ):
        return True
    print_log(
        f'segmentation voxel size {_sizes_text(b)} mm differs from its '
        f'image voxel size {_sizes_text(a)} mm (by more than '
        f"{VOXEL_SIZE_RTOL:.1%}); distances use the image's: image "
        f'{img_path}, segmentation {seg_path}',
        logger='current',
        level=logging.WARNING,
    )
    return False


def check_same_affine(img_path: str, img_affine, seg_path: str, seg_affine):
    """Warn when a segmentation's affine (orientation, origin) differs.

    The labels are read voxel for voxel (the shapes are checked apart), so
    a segmentation stored in another orientation or position would not lie
    on its image; a difference beyond rounding (0.1% of the entries' scale,
    the same tolerance as :func:`check_same_voxel_size`) is logged as a
    warning naming both files.

    Args:
        img_path (str): The image volume, named in the warning.
        img_affine (array-like): Its 4x4 affine.
        seg_path (str): The segmentation, named in the warning.
        seg_affine (array-like): Its 4x4 affine.

    Returns:
        bool: Whether the two agree.
    """
    a = np.asarray(img_affine, np.float64)
    b = np.asarray(seg_affine, np.float64)
    scale = max(float(np.abs(a[:3, :3]).max()), 1e-12)
    if a.shape == b.shape and np.allclose(
        a, b, rtol=VOXEL_SIZE_RTOL, atol=VOXEL_SIZE_RTOL * scale
    ):
        return True
    print_log(
        'segmentation affine differs from its image affine (orientation or '
        'origin); its labels are read voxel for voxel with the image: '
        f'image {img_path}, segmentation {seg_path}',
        logger='current',
        level=logging.WARNING,
    )
    return False


def read_nifti_header(path: str) -> Tuple[tuple, tuple, np.ndarray]:
    """Read shape, voxel size and affine of a NIfTI file without its voxels.

    The voxel size must be positive and finite in every spatial dimension
    of the array (up to 3) as stored in the header: see
    :func:`check_voxel_size`.

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
        raw_sizes = _raw_voxel_size(img, len(shape))
    except Exception as e:
        raise ValueError(f'cannot read NIfTI header of {path}: {e}') from e
    check_voxel_size(raw_sizes, path)
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


def save_label_volume(
    labels: np.ndarray, source_path: str, out_path: str
) -> None:
    """Write a label volume with the geometry of its source NIfTI.

    The source's header (voxel size, orientation codes, qform and sform) and
    affine are kept, so the labels overlay the source in ITK-SNAP or 3D
    Slicer; the data type becomes uint8 without intensity scaling.

    Args:
        labels (np.ndarray): (H, W, D) labels, the source's array layout.
        source_path (str): The NIfTI volume that was segmented.
        out_path (str): Output ``.nii`` / ``.nii.gz`` file.
    """
    src = nib.load(source_path)
    if labels.shape != src.shape:
        raise ValueError(
            f'label volume of shape {labels.shape} does not match the '
            f'source shape {src.shape}: {source_path}'
        )
    header = src.header.copy()
    header.set_data_dtype(np.uint8)
    # Labels, not intensities: no rescaling slope/intercept.
    header.set_slope_inter(1, 0)
    pred = type(src)(labels.astype(np.uint8), src.affine, header)
    # Keep both orientation records exactly (the constructor may rewrite
    # them from the affine alone).
    pred.set_qform(src.get_qform(), code=int(src.header['qform_code']))
    pred.set_sform(src.get_sform(), code=int(src.header['sform_code']))
    nib.save(pred, out_path)
