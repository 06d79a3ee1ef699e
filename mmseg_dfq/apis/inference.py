"""Segment new fundus images and NIfTI volumes with a trained model.

The preprocessing is the test pipeline's: fundus images go through the
config's ``test_dataloader`` pipeline with its annotation loader dropped;
volumes are decoded, checked and min-max scaled by the functions the
prostate dataset uses, cut into the same 2.5D slices, and then run through
the rest of that pipeline (everything after its loading steps). A model
therefore sees exactly what it saw in ``tools/test.py``, and the
post-processing is the one the config's ``DomainMetric`` applies.

mmseg's own ``inference_model`` / ``MMSegInferencer`` also run on these
configs (see ``mmseg_dfq.datasets.transforms``); for prostate models they
take 2.5D slices as arrays, which :func:`nifti_slices` cuts from a volume.
"""

import os
import os.path as osp
from typing import Callable, Dict, List, Optional, Tuple

import nibabel as nib
import numpy as np
import torch
from mmengine.dataset import Compose
from mmseg.apis import init_model
from mmseg.registry import DATASETS

from ..config import load_config
from ..datasets.prostate import ProstateDGDataset
from ..datasets.transforms import (
    decode_nifti,
    normalise_prostate_image,
    slice_25d,
)
from ..evaluation import (
    fill_holes,
    largest_connected_component,
    postprocess_connectivity,
)

IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')
NIFTI_EXTS = ('.nii', '.nii.gz')
SEGMENTATION_TAG = '_segmentation.nii'
# Fundus labels 0 background, 1 rim, 2 cup -> the grey levels of the masks.
FUNDUS_GREY = np.array([255, 128, 0], dtype=np.uint8)
# Loaders of the test pipeline that mark a volume model (the prostate test
# pipelines now load with DFQ's LoadImageFromFile; the dataset type tells).
VOLUME_LOADERS = ('LoadProstateSlice',)


def input_kind(path: str) -> Optional[str]:
    """Tell an image from a NIfTI volume by the file name.

    Args:
        path (str): A file name.

    Returns:
        str | None: 'volume', 'image', or None for other extensions.
    """
    name = path.lower()
    if name.endswith(NIFTI_EXTS):
        return 'volume'
    if name.endswith(IMAGE_EXTS):
        return 'image'
    return None


def file_stem(path: str) -> str:
    """File name without its extension (``.nii.gz`` counts as one).

    Args:
        path (str): A file path.

    Returns:
        str: E.g. ``'Case00'`` for ``'site/Case00.nii.gz'``.
    """
    name = osp.basename(path)
    if name.lower().endswith('.nii.gz'):
        return name[: -len('.nii.gz')]
    return osp.splitext(name)[0]


def find_inputs(path: str) -> Tuple[List[str], List[str]]:
    """List the images / volumes to segment in a file or folder.

    Args:
        path (str): A fundus image, a NIfTI volume, or a folder of either.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If a file has an unsupported extension, or a folder
            holds nothing to segment.

    Returns:
        tuple[list[str], list[str]]: The sorted inputs, and the ground-truth
        volumes (``*_segmentation.nii*``) of a folder that were left out.
    """
    if not osp.exists(path):
        raise FileNotFoundError(f'input not found: {path}')
    if osp.isfile(path):
        if input_kind(path) is None:
            raise ValueError(
                f'unsupported file type (expected one of '
                f'{", ".join(IMAGE_EXTS + NIFTI_EXTS)}): {path}'
            )
        return [path], []
    files, skipped = [], []
    for name in sorted(os.listdir(path)):
        full = osp.join(path, name)
        if not osp.isfile(full) or input_kind(name) is None:
            continue
        # The SAML layout keeps labels beside the volumes: not inputs.
        if SEGMENTATION_TAG in name.lower():
            skipped.append(full)
        else:
            files.append(full)
    if not files:
        raise ValueError(
            f'no image ({", ".join(IMAGE_EXTS)}) or NIfTI volume found in '
            f'folder {path}'
        )
    return files, skipped


def nifti_slices(path: str) -> List[np.ndarray]:
    """The 2.5D slices of a NIfTI volume, as a prostate model's inputs.

    Decoded, checked and min-max scaled like the prostate dataset does, then
    cut as ``LoadProstateSlice`` cuts them, so ``inference_model(model,
    nifti_slices(path))`` (mmseg's API) predicts slice k of the volume as
    ``tools/test.py`` does. Post-processing (largest 3D component) and NIfTI
    output are :class:`SegInferencer`'s / ``tools/infer.py``'s job.

    Args:
        path (str): A ``.nii`` / ``.nii.gz`` volume.

    Returns:
        list[np.ndarray]: One float32 (H, W, 3) array in [-1, 1] per slice
        ``volume[:, :, k]``.
    """
    vol = normalise_prostate_image(decode_nifti(path), path)
    return [slice_25d(vol, k) for k in range(vol.shape[2])]


def init_segmentor(
    config: str,
    checkpoint: Optional[str],
    device: str = 'cpu',
    cfg_options: Optional[dict] = None,
):
    """Build a model from its config and load a checkpoint, for inference.

    The config is read by :func:`mmseg_dfq.config.load_config`, so a
    GPU-minded config (SyncBN) also runs on a CPU-only host.

    Args:
        config (str): Config file.
        checkpoint (str, optional): Checkpoint file; None keeps the
            initialisation (tests only).
        device (str): 'cpu' or 'cuda[:i]'. Default: 'cpu'.
        cfg_options (dict, optional): Config overrides.

    Raises:
        FileNotFoundError: If the config or checkpoint does not exist.

    Returns:
        BaseSegmentor: The model in eval mode, ``model.cfg`` set.
    """
    if checkpoint is not None and not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint file not found: {checkpoint}')
    cfg = load_config(config, cfg_options)
    model = init_model(cfg, checkpoint, device=device)
    return model.eval()


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


def _metric_postprocess_cfg(cfg) -> Dict:
    """Structures and post-processing of the config's ``DomainMetric``."""
    evaluator = cfg.get('test_evaluator', None)
    if isinstance(evaluator, (list, tuple)):
        evaluator = next(
            (e for e in evaluator if e.get('type') == 'DomainMetric'), None
        )
    if not evaluator or evaluator.get('type') != 'DomainMetric':
        return dict(structures=None, fill_holes=False, connectivity=None)
    mode = evaluator.get('mode', '2d')
    fill = evaluator.get('fill_holes', None)
    return dict(
        structures={k: list(v) for k, v in evaluator['structures'].items()},
        fill_holes=(mode == '2d') if fill is None else bool(fill),
        connectivity=postprocess_connectivity(
            mode, evaluator.get('cc_connectivity', None)
        ),
    )


class SegInferencer:
    """A trained mmseg model applied to fundus images or NIfTI volumes.

    Which input kind a model takes follows from its test data: a
    ``ProstateDGDataset`` (or a pipeline with ``LoadProstateSlice``) means
    volumes (slice by slice, 2.5D), anything else images.

    Args:
        config (str): The model's config file.
        checkpoint (str): Its checkpoint.
        device (str): 'cpu' or 'cuda[:i]'. Default: 'cpu'.
        postprocess (bool): Apply the post-processing of the config's
            ``DomainMetric`` to every structure: keep the largest connected
            component (2D per image, 8-connected; 3D per volume,
            6-connected; or the metric's ``cc_connectivity``) and, where
            the metric does (fundus), fill its holes. Default: True.
        cfg_options (dict, optional): Config overrides.
    """

    def __init__(
        self,
        config: str,
        checkpoint: str,
        device: str = 'cpu',
        postprocess: bool = True,
        cfg_options: Optional[dict] = None,
    ):
        self.config = config
        self.model = init_segmentor(config, checkpoint, device, cfg_options)
        self.cfg = self.model.cfg
        self.postprocess = postprocess
        try:
            test_pipeline = self.cfg.test_dataloader.dataset.pipeline
        except AttributeError:
            raise ValueError(
                f'{config} has no test_dataloader.dataset.pipeline, which '
                'inference uses as its preprocessing'
            ) from None
        pipeline = [
            t
            for t in test_pipeline
            # Ground truth is not there to load for new data.
            if 'Annotation' not in t['type']
        ]
        types = [t['type'] for t in pipeline]
        dataset_cls = DATASETS.get(
            self.cfg.test_dataloader.dataset.get('type', '')
        )
        volumes = any(t in VOLUME_LOADERS for t in types) or (
            dataset_cls is not None
            and issubclass(dataset_cls, ProstateDGDataset)
        )
        self.kind = 'volume' if volumes else 'image'
        if volumes:
            # The slices are cut here (same functions as LoadProstateSlice);
            # the steps after the loader run unchanged.
            pipeline = [
                t for t in pipeline if not t['type'].startswith('Load')
            ]
        self.pipeline = Compose(pipeline)
        post = _metric_postprocess_cfg(self.cfg)
        num_classes = self.model.decode_head.num_classes
        self.structures = post['structures'] or {
            f'class{k}': [k] for k in range(1, num_classes)
        }
        self.fill_holes = post['fill_holes']
        # Without a DomainMetric: the authors' default for the input kind.
        self.connectivity = post['connectivity'] or postprocess_connectivity(
            '3d' if self.kind == 'volume' else '2d'
        )

    def check_input(self, path: str) -> None:
        """Raise a clear error if the model cannot segment this file.

        Args:
            path (str): Input file.
        """
        kind = input_kind(path)
        if kind != self.kind:
            raise ValueError(
                f'the model of {self.config} segments '
                f'{"NIfTI volumes" if self.kind == "volume" else "2D images"}'
                f' (see its test pipeline), not '
                f'{"a NIfTI volume" if kind == "volume" else "a 2D image"}:'
                f' {path}'
            )

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

    def _postprocess(self, labels: np.ndarray) -> np.ndarray:
        """The metric's post-processing, applied to each structure."""
        if not self.postprocess:
            return labels
        out = np.zeros_like(labels)
        # Paint structures from the widest class set to the narrowest, so a
        # nested one (cup inside disc) ends up on top; each keeps its
        # smallest class (disc = {rim, cup} -> rim, cup = {cup} -> cup).
        for classes in sorted(self.structures.values(), key=len)[::-1]:
            mask = largest_connected_component(
                np.isin(labels, classes), self.connectivity
            )
            if self.fill_holes:
                if mask.ndim == 2:
                    mask = fill_holes(mask)
                else:
                    for k in range(mask.shape[2]):
                        mask[:, :, k] = fill_holes(mask[:, :, k])
            out[mask] = min(classes)
        return out

    def pack_image(self, path: str) -> dict:
        """Run an image through the test pipeline (no annotations).

        Args:
            path (str): Image file.

        Returns:
            dict: ``inputs`` (Tensor, (3, h, w)) and ``data_samples``, as the
            test dataloader gives them.
        """
        return self.pipeline(
            dict(img_path=path, seg_fields=[], reduce_zero_label=False)
        )

    def pack_slice(self, volume: np.ndarray, path: str, k: int) -> dict:
        """Cut 2.5D slice k as ``LoadProstateSlice`` does; run the rest.

        Args:
            volume (np.ndarray): (H, W, D) float32 volume, already scaled by
                :func:`normalise_prostate_image`.
            path (str): Its file (kept as ``img_path``).
            k (int): Slice index along the third axis.

        Returns:
            dict: ``inputs`` (Tensor, (3, H, W)) and ``data_samples``.
        """
        return self.pipeline(
            dict(
                img=slice_25d(volume, k),
                img_path=path,
                img_shape=volume.shape[:2],
                ori_shape=volume.shape[:2],
                slice_index=k,
                num_slices=volume.shape[2],
                seg_fields=[],
                reduce_zero_label=False,
            )
        )

    def image(self, path: str) -> np.ndarray:
        """Segment one fundus image.

        Args:
            path (str): Image file.

        Returns:
            np.ndarray: (H, W) uint8 labels at the image's own size.
        """
        self.check_input(path)
        return self._postprocess(self._predict([self.pack_image(path)])[0])

    def volume(
        self,
        path: str,
        batch_size: int = 8,
        progress: Optional[Callable[[int], object]] = None,
    ) -> np.ndarray:
        """Segment every slice of a NIfTI volume (2.5D).

        Args:
            path (str): NIfTI file.
            batch_size (int): Slices per forward pass. Default: 8.
            progress (callable, optional): Called with the number of slices
                done after each batch.

        Returns:
            np.ndarray: (H, W, D) uint8 labels in the volume's array layout
            (slice k is ``labels[:, :, k]``).
        """
        self.check_input(path)
        vol = normalise_prostate_image(decode_nifti(path), path)
        depth = vol.shape[2]
        out = np.zeros(vol.shape, np.uint8)
        for start in range(0, depth, batch_size):
            stop = min(start + batch_size, depth)
            packed = [
                self.pack_slice(vol, path, k) for k in range(start, stop)
            ]
            for k, pred in zip(range(start, stop), self._predict(packed)):
                out[:, :, k] = pred
            if progress is not None:
                progress(stop - start)
        return self._postprocess(out)

    def __call__(self, path: str, **kwargs) -> np.ndarray:
        """Segment an image or a volume, whichever ``path`` is.

        Args:
            path (str): Image or NIfTI file.
            **kwargs: Passed to :meth:`volume` for volumes.

        Returns:
            np.ndarray: Labels, (H, W) or (H, W, D), uint8.
        """
        if input_kind(path) == 'volume':
            return self.volume(path, **kwargs)
        return self.image(path)
