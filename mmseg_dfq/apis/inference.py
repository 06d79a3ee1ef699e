"""Segment new fundus images and NIfTI volumes with a trained model.

The preprocessing is the test pipeline's: fundus images go through the
config's ``test_dataloader`` pipeline (annotation loading dropped); volumes
are normalised and cut into 2.5D slices by the same functions the prostate
dataset uses, so a model sees exactly what it saw in ``tools/test.py``.
"""

import os
import os.path as osp
from typing import List, Optional

import numpy as np
import torch
from mmengine.dataset import Compose
from mmseg.apis import init_model

from ..datasets.transforms import (
    decode_nifti,
    normalise_prostate_image,
    slice_25d,
)
from ..evaluation.surface import largest_connected_component

IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')
NIFTI_EXTS = ('.nii', '.nii.gz')
# Fundus labels 0 background, 1 rim, 2 cup -> the grey levels of the masks.
FUNDUS_GREY = np.array([255, 128, 0], dtype=np.uint8)


def _kind(path: str) -> Optional[str]:
    name = path.lower()
    if name.endswith(NIFTI_EXTS):
        return 'nifti'
    if name.endswith(IMAGE_EXTS):
        return 'image'
    return None


def find_inputs(path: str) -> List[str]:
    """List the images / volumes to segment in a file or folder.

    Segmentations lying beside their volumes (``*_segmentation.nii*``) are
    skipped in folders.

    Args:
        path (str): A fundus image, a NIfTI volume, or a folder of either.

    Returns:
        list[str]: Sorted input files.
    """
    if not osp.exists(path):
        raise FileNotFoundError(f'input {path!r} does not exist')
    if osp.isfile(path):
        if _kind(path) is None:
            raise ValueError(
                f'{path!r}: unsupported file type (expected one of '
                f'{IMAGE_EXTS + NIFTI_EXTS})'
            )
        return [path]
    files = sorted(
        osp.join(path, f)
        for f in os.listdir(path)
        if _kind(f) is not None and '_segmentation.nii' not in f.lower()
    )
    if not files:
        raise ValueError(f'{path!r}: no image or NIfTI file found')
    return files


def fundus_overlay(
    image_rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.45
) -> np.ndarray:
    """Paint disc rim (green) and cup (blue) over an RGB image.

    Args:
        image_rgb (np.ndarray): (H, W, 3) uint8.
        labels (np.ndarray): (H, W) labels 0/1/2.
        alpha (float): Opacity of the colours. Default: 0.45.

    Returns:
        np.ndarray: (H, W, 3) uint8.
    """
    colours = np.array([[0, 0, 0], [0, 200, 0], [0, 90, 255]], np.float32)
    out = image_rgb.astype(np.float32)
    fg = labels > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colours[labels[fg]]
    return np.clip(out, 0, 255).astype(np.uint8)


class SegInferencer:
    """A trained mmseg model applied to fundus images and NIfTI volumes.

    Args:
        config (str): The model's config file.
        checkpoint (str): Its checkpoint.
        device (str): 'cpu' or 'cuda[:i]'. Default: 'cpu'.
        largest_cc (bool): Keep the largest connected component of every
            foreground structure (2D per image, 3D per volume), as the
            metric's post-processing does. Default: True.
    """

    def __init__(
        self,
        config: str,
        checkpoint: str,
        device: str = 'cpu',
        largest_cc: bool = True,
    ):
        for path, what in ((config, 'config'), (checkpoint, 'checkpoint')):
            if not osp.isfile(path):
                raise FileNotFoundError(f'{what} {path!r} does not exist')
        self.model = init_model(config, checkpoint, device=device)
        self.cfg = self.model.cfg
        self.largest_cc = largest_cc
        pipeline = [
            t
            for t in self.cfg.test_dataloader.dataset.pipeline
            if 'Annotation' not in t['type']
            and t['type'] != 'LoadProstateSlice'
        ]
        self.image_pipeline = Compose(pipeline)

    @property
    def num_classes(self) -> int:
        """int: Classes the model predicts."""
        return self.model.decode_head.num_classes

    def _predict(self, packed: List[dict]) -> List[np.ndarray]:
        data = dict(
            inputs=[p['inputs'] for p in packed],
            data_samples=[p['data_samples'] for p in packed],
        )
        with torch.no_grad():
            results = self.model.test_step(data)
        return [
            r.pred_sem_seg.data[0].cpu().numpy().astype(np.uint8)
            for r in results
        ]

    def _keep_largest(self, labels: np.ndarray) -> np.ndarray:
        """Largest component of each nested structure (c >= k for class k)."""
        if not self.largest_cc:
            return labels
        out = np.zeros_like(labels)
        for k in range(1, self.num_classes):
            # Fundus classes nest (cup inside disc): structure k = labels>=k.
            mask = largest_connected_component(labels >= k)
            out[mask] = k
        return out

    def image(self, path: str) -> np.ndarray:
        """Segment one fundus image.

        Args:
            path (str): Image file.

        Returns:
            np.ndarray: (H, W) uint8 labels at the image's own size.
        """
        packed = self.image_pipeline(
            dict(img_path=path, seg_fields=[], reduce_zero_label=False)
        )
        return self._keep_largest(self._predict([packed])[0])

    def volume(
        self, path: str, batch_size: int = 8, progress=None
    ) -> np.ndarray:
        """Segment every slice of a NIfTI volume (2.5D).

        Args:
            path (str): NIfTI file.
            batch_size (int): Slices per forward pass. Default: 8.
            progress (callable, optional): Called with the number of slices
                done after each batch.

        Returns:
            np.ndarray: (H, W, D) uint8 labels, the volume's array layout.
        """
        from mmcv.transforms import to_tensor
        from mmseg.structures import SegDataSample

        vol = normalise_prostate_image(decode_nifti(path), path)
        depth = vol.shape[2]
        out = np.zeros(vol.shape, np.uint8)
        for start in range(0, depth, batch_size):
            packed = []
            for k in range(start, min(start + batch_size, depth)):
                img = slice_25d(vol, k)
                sample = SegDataSample()
                sample.set_metainfo(
                    dict(
                        img_path=path,
                        ori_shape=img.shape[:2],
                        img_shape=img.shape[:2],
                        slice_index=k,
                    )
                )
                packed.append(
                    dict(
                        inputs=to_tensor(img.transpose(2, 0, 1).copy()),
                        data_samples=sample,
                    )
                )
            for k, pred in zip(range(start, depth), self._predict(packed)):
                out[:, :, k] = pred
            if progress is not None:
                progress(len(packed))
        return self._keep_largest(out)
