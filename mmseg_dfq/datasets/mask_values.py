"""Stored label values -> class indices, for masks and segmentations.

Medical label files rarely store class indices: a 2D mask may hold 0 / 255
or 0 / 128 / 255, a NIfTI segmentation extra sub-labels. A data set
declares the map (``mask_values``) and every loader applies it with
:func:`map_mask_values`, which refuses a stored value outside the map
rather than guessing its class.
"""

from typing import Dict, Optional

import numpy as np

# mmseg's ignore index: a stored value may be mapped to it.
IGNORE_INDEX = 255


def check_mask_values(
    mask_values, num_classes: Optional[int] = None, where: str = 'mask_values'
) -> Dict[int, int]:
    """Check a stored-value -> class-index map and return it as plain ints.

    Args:
        mask_values (dict): Stored value (int >= 0) -> class index.
        num_classes (int, optional): Classes of the data set; class indices
            must be below it (or 255, ignored). Default: None (not checked).
        where (str): Who gave the map, named in errors.

    Returns:
        dict[int, int]: The map.
    """
    if not isinstance(mask_values, dict) or not mask_values:
        raise ValueError(
            f'{where}: mask_values must be a non-empty dict of stored value '
            f'-> class index, got {mask_values!r}'
        )
    out = {}
    for key, cls in mask_values.items():
        for v in (key, cls):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(
                    f'{where}: mask_values needs integer keys and values, '
                    f'got {key!r}: {cls!r}'
                )
        if key < 0:
            raise ValueError(f'{where}: stored value {key} is negative')
        if num_classes is not None and not (
            0 <= cls < num_classes or cls == IGNORE_INDEX
        ):
            raise ValueError(
                f'{where}: stored value {key} maps to class {cls}, outside '
                f'0..{num_classes - 1} (or {IGNORE_INDEX}, ignored)'
            )
        out[int(key)] = int(cls)
    return out


def map_mask_values(
    seg: np.ndarray, mask_values: Dict[int, int], path: str
) -> np.ndarray:
    """Map the stored values of a label array to class indices.

    Args:
        seg (np.ndarray): Stored values (integers, or floats holding
            integers as NIfTI segmentations often do).
        mask_values (dict[int, int]): Stored value -> class index.
        path (str): The file, named in errors.

    Returns:
        np.ndarray: uint8 class indices of the same shape.
    """
    seg = np.asarray(seg)
    allowed = sorted(int(v) for v in mask_values)
    text = '{' + ', '.join(map(str, allowed)) + '}'
    if seg.dtype.kind == 'f':
        seg_int = np.rint(seg).astype(np.int64)
        if not np.array_equal(seg_int, seg):
            bad = np.unique(seg[seg_int != seg])[:5]
            raise ValueError(
                f'segmentation holds labels outside {text} (e.g. {bad}): '
                + path
            )
    elif seg.dtype.kind in 'ui':
        seg_int = seg.astype(np.int64)
    else:
        raise ValueError(
            f'segmentation has dtype {seg.dtype}, expected integer labels: '
            + path
        )
    values = np.unique(seg_int)
    unknown = [int(v) for v in values if int(v) not in mask_values]
    if unknown:
        raise ValueError(
            f'segmentation holds labels outside {text} (e.g. {unknown[:5]}; '
            f'mask_values maps every stored value to a class): {path}'
        )
    keys = np.array(allowed, dtype=np.int64)
    classes = np.array([mask_values[v] for v in allowed], dtype=np.uint8)
    return classes[np.searchsorted(keys, seg_int)]


def encoding_table(mask_values, where: str = 'mask_values') -> np.ndarray:
    """The inverse map, for writing predictions as the data set stores them.

    Each class gets its smallest stored value (a map may send several
    stored values to one class); the ignore index is never written.

    Args:
        mask_values (dict): Stored value -> class index (checked by
            :func:`check_mask_values`).
        where (str): Who gave the map, named in errors.

    Returns:
        np.ndarray: uint8 table, class index -> stored value.
    """
    first = {}
    for stored, cls in sorted(
        check_mask_values(mask_values, None, where).items()
    ):
        if cls != IGNORE_INDEX:
            first.setdefault(cls, stored)
    table = np.zeros(max(first) + 1, np.uint8)
    for cls, stored in first.items():
        table[cls] = stored
    return table
