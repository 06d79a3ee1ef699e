"""Predictions painted over their inputs, for ``tools/infer.py``."""

from typing import Optional

import numpy as np


def fundus_overlay(
    image_rgb: np.ndarray,
    labels: np.ndarray,
    alpha: float = 0.45,
    colours: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Paint labels translucently over an image (rim green, cup blue).

    Args:
        image_rgb (np.ndarray): (H, W, 3) uint8 RGB.
        labels (np.ndarray): (H, W) labels; 0 is left unpainted.
        alpha (float): Opacity of the colours. Default: 0.45.
        colours (np.ndarray, optional): (num_classes, 3) RGB per label.
            Default: fundus, 1 rim green, 2 cup blue.

    Returns:
        np.ndarray: (H, W, 3) uint8 RGB.
    """
    if colours is None:
        colours = np.array([[0, 0, 0], [0, 200, 0], [0, 90, 255]])
    colours = np.asarray(colours, np.float32)
    out = image_rgb.astype(np.float32)
    fg = labels > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colours[labels[fg]]
    return np.clip(out, 0, 255).astype(np.uint8)


def volume_slice_overlay(
    volume: np.ndarray, labels: np.ndarray, k: Optional[int] = None
) -> np.ndarray:
    """Slice k of a volume in grey with its labels in red.

    The slice is shown in the array layout (rows = first NIfTI axis), not
    rotated to a radiological view.

    Args:
        volume (np.ndarray): (H, W, D) intensities (any range).
        labels (np.ndarray): (H, W, D) labels.
        k (int, optional): Slice index. Default: the middle slice.

    Returns:
        np.ndarray: (H, W, 3) uint8 RGB.
    """
    k = volume.shape[2] // 2 if k is None else k
    img = volume[:, :, k].astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    grey = (img - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)
    rgb = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
    red = np.array([[0, 0, 0]] + [[255, 40, 40]] * 255)
    return fundus_overlay(rgb, labels[:, :, k], alpha=0.5, colours=red)
