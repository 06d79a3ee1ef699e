"""NIfTI I/O in one place: file naming, header, voxels, labels written back.

The datasets index volumes from their headers, the loading transforms
decode their voxels, and the inferencer writes predicted labels with the
source's geometry; all three go through these functions, so a file is
named, read and refused the same way everywhere (every error names it).
"""

import os.path as osp
from typing import Optional, Tuple

import nibabel as nib
import numpy as np

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
