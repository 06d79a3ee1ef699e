"""Segment new images and NIfTI volumes with a trained model.

The preprocessing is the test pipeline's: images go through the config's
``test_dataloader`` pipeline with its annotation loader dropped; volumes
are decoded, checked and min-max scaled by the functions the volume data
sets use, cut into the same 2.5D slices, and then run through the rest of
that pipeline (everything after its loading steps). A model therefore sees
exactly what it saw in ``tools/test.py``. What a model takes (images or
volumes), what it segments (structures) and how its predictions are
post-processed come from the facts its test data set declares
(``METAINFO``, see :mod:`mmseg_dfq.datasets.base`), with the config's
``DomainMetric`` arguments on top, as the metric applies them.

mmseg's own ``inference_model`` / ``MMSegInferencer`` also run on these
configs (see ``mmseg_dfq.datasets.transforms``); for volume models they
take 2.5D slices as arrays, which :func:`~mmseg_dfq.apis.nifti_slices`
cuts from a volume.
"""

import logging
import os.path as osp
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from mmengine.dataset import Compose
from mmengine.logging import print_log
from mmseg.apis import init_model
from mmseg.registry import DATASETS, METRICS

from ..config import load_config
from ..datasets.base import DomainSplitDataset
from ..datasets.nifti import decode_nifti, read_nifti_header
from ..datasets.transforms.volume import normalise_volume, slice_25d
from ..engine.checkpoint import load_checked_checkpoint
from ..evaluation import (
    DomainMetric,
    fill_holes,
    largest_connected_component,
)
from .inputs import input_kind


def _is_domain_metric(evaluator) -> bool:
    """Whether an evaluator config builds a :class:`DomainMetric` (or a
    subclass, under any registered name or scope)."""
    if not isinstance(evaluator, dict):
        return False
    metric_cls = METRICS.get(evaluator.get('type', ''))
    return isinstance(metric_cls, type) and issubclass(
        metric_cls, DomainMetric
    )


def _domain_metric_cfg(cfg) -> Optional[dict]:
    """The config's ``DomainMetric`` test evaluator, if it has one."""
    evaluator = cfg.get('test_evaluator', None)
    if isinstance(evaluator, (list, tuple)):
        evaluator = next((e for e in evaluator if _is_domain_metric(e)), None)
    return evaluator if _is_domain_metric(evaluator) else None


def dataset_facts_of(cfg) -> Optional[Dict]:
    """The declared facts of a config's test data set, or None.

    Args:
        cfg (mmengine.Config): A model's config.

    Returns:
        dict | None: The facts (:func:`mmseg_dfq.datasets.base.
        check_dataset_facts`) plus ``file_kind``, or None when the test
        data set is not a :class:`DomainSplitDataset`.
    """
    try:
        dataset_cfg = cfg.test_dataloader.dataset
    except AttributeError:
        return None
    dataset_cls = DATASETS.get(dataset_cfg.get('type', ''))
    if not (
        isinstance(dataset_cls, type)
        and issubclass(dataset_cls, DomainSplitDataset)
    ):
        return None
    facts = dataset_cls.declared_facts(dataset_cfg.get('metainfo', None))
    facts['file_kind'] = dataset_cls.file_kind_of(dataset_cfg)
    return facts


def postprocess_settings(cfg) -> Optional[Dict]:
    """Structures and post-processing a config's evaluation applies.

    The test data set's declared facts, overridden by what the config's
    ``DomainMetric`` sets explicitly (``structures``, ``largest_cc``,
    ``fill_holes``, ``cc_connectivity``).

    Args:
        cfg (mmengine.Config): A model's config.

    Returns:
        dict | None: ``structures`` (name -> list of labels),
        ``largest_cc``, ``fill_holes`` and ``connectivity``; None when the
        config's test data set declares no facts.
    """
    facts = dataset_facts_of(cfg)
    if facts is None:
        return None
    post = dict(facts['post_process'])
    structures = {k: list(v) for k, v in facts['structures'].items()}
    evaluator = _domain_metric_cfg(cfg) or {}
    if evaluator.get('structures') is not None:
        structures = {
            k: [v] if isinstance(v, int) else list(v)
            for k, v in evaluator['structures'].items()
        }
    for arg, key in (
        ('largest_cc', 'largest_cc'),
        ('fill_holes', 'fill_holes'),
        ('cc_connectivity', 'connectivity'),
    ):
        if evaluator.get(arg) is not None:
            post[key] = evaluator[arg]
    return dict(structures=structures, **post)


def init_segmentor(
    config: str,
    checkpoint: Optional[str],
    device: str = 'cpu',
    cfg_options: Optional[dict] = None,
):
    """Build a model from its config and load a checkpoint, for inference.

    The config is read by :func:`mmseg_dfq.config.load_config`, so a
    GPU-minded config (SyncBN) also runs on a CPU-only host. The model is
    built by mmseg's ``init_model``; the checkpoint is read once and must
    fit the model exactly (mmseg loads whatever keys match and only warns):
    see :func:`mmseg_dfq.engine.checkpoint.check_checkpoint_fits`.
    ``model.dataset_meta`` is the checkpoint's, as mmseg sets it, else the
    config's test data set's classes and palette.

    Args:
        config (str): Config file.
        checkpoint (str, optional): Checkpoint file; None keeps the
            initialisation (tests only).
        device (str): 'cpu' or 'cuda[:i]'. Default: 'cpu'.
        cfg_options (dict, optional): Config overrides.

    Raises:
        FileNotFoundError: If the config or checkpoint does not exist.
        mmseg_dfq.compat.CheckpointError: If the checkpoint cannot be read
            or, as :class:`~mmseg_dfq.engine.checkpoint.
            CheckpointMismatchError`, does not fit the model (a
            ``RuntimeError``; the message names the file and the keys).

    Returns:
        BaseSegmentor: The model in eval mode, ``model.cfg`` set.
    """
    if checkpoint is not None and not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint file not found: {checkpoint}')
    cfg = load_config(config, cfg_options)
    model = init_model(cfg, None, device=device)
    if checkpoint is not None:
        loaded = load_checked_checkpoint(model, checkpoint, config=config)
        model.dataset_meta = _dataset_meta(loaded, cfg, checkpoint)
    return model.eval()


def _dataset_meta(checkpoint, cfg, filename) -> Optional[dict]:
    """Classes and palette of a model: its checkpoint's, else its config's.

    mmseg's ``init_model`` takes ``meta['dataset_meta']`` (mmseg 1.x) or
    ``meta['CLASSES']``/``['PALETTE']`` (0.x); a checkpoint without either
    (converted ones) gets the config's test data set's ``metainfo`` here,
    where mmseg would guess a data set from the number of classes.
    """
    meta = checkpoint.get('meta') or {}
    if meta.get('dataset_meta'):
        return meta['dataset_meta']
    if 'CLASSES' in meta:
        return dict(classes=meta['CLASSES'], palette=meta.get('PALETTE'))
    metainfo = {}
    try:
        dataset_cfg = cfg.test_dataloader.dataset
    except AttributeError:
        dataset_cfg = {}
    dataset_cls = DATASETS.get(dataset_cfg.get('type', '') or '')
    metainfo.update(getattr(dataset_cls, 'METAINFO', None) or {})
    metainfo.update(dataset_cfg.get('metainfo', None) or {})
    print_log(
        f'{filename}: its meta has no dataset_meta; the classes and palette '
        "are the config's test data set's",
        logger='current',
        level=logging.WARNING,
    )
    return metainfo or None


class SegInferencer:
    """A trained mmseg model applied to fundus images or NIfTI volumes.

    Which input kind a model takes follows from its test data set: one
    that reads NIfTI volumes (``file_kind`` ``'nifti'``, e.g.
    ``ProstateDGDataset``) means volumes, segmented slice by slice (2.5D);
    anything else images.

    Args:
        config (str): The model's config file.
        checkpoint (str): Its checkpoint.
        device (str): 'cpu' or 'cuda[:i]'. Default: 'cpu'.
        postprocess (bool): Apply the evaluation's post-processing (see
            :func:`postprocess_settings`) to every structure: keep the
            largest connected component (2D per image, 3D per volume) and,
            where the data set says so (fundus), fill its holes. A config
            whose test data set declares no facts is not post-processed (a
            warning says so). Default: True.
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
        facts = dataset_facts_of(self.cfg)
        volumes = facts is not None and facts['file_kind'] == 'nifti'
        self.kind = 'volume' if volumes else 'image'
        if volumes:
            # The slices are cut here (same functions as the slice loader);
            # the steps after the loader run unchanged.
            pipeline = [
                t for t in pipeline if not t['type'].startswith('Load')
            ]
        self.pipeline = Compose(pipeline)
        post = postprocess_settings(self.cfg)
        if post is None and postprocess:
            print_log(
                f'{config}: its test data set declares no structures or '
                'post_process (not a DomainSplitDataset), so predictions '
                'are not post-processed',
                logger='current',
                level=logging.WARNING,
            )
        self.postprocess = postprocess and post is not None
        post = post or dict(
            structures={}, largest_cc=False, fill_holes=False, connectivity=1
        )
        self.structures = post['structures']
        self.largest_cc = post['largest_cc']
        self.fill_holes = post['fill_holes']
        self.connectivity = post['connectivity']

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
            mask = np.isin(labels, classes)
            if self.largest_cc:
                mask = largest_connected_component(mask, self.connectivity)
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

    def pack_slice(
        self,
        volume: np.ndarray,
        path: str,
        k: int,
        spacing: Optional[tuple] = None,
    ) -> dict:
        """Cut 2.5D slice k as ``LoadProstateSlice`` does; run the rest.

        Args:
            volume (np.ndarray): (H, W, D) float32 volume, already scaled by
                :func:`~mmseg_dfq.datasets.transforms.normalise_volume`.
            path (str): Its file (kept as ``img_path``).
            k (int): Slice index along the third axis.
            spacing (tuple, optional): Voxel size (mm), packed as the data
                sets do. Default: None (read from the file's header).

        Returns:
            dict: ``inputs`` (Tensor, (3, H, W)) and ``data_samples``.
        """
        if spacing is None:
            spacing = read_nifti_header(path)[1][:3]
        return self.pipeline(
            dict(
                img=slice_25d(volume, k),
                img_path=path,
                img_shape=volume.shape[:2],
                ori_shape=volume.shape[:2],
                slice_index=k,
                num_slices=volume.shape[2],
                spacing=tuple(spacing),
                seg_fields=[],
                reduce_zero_label=False,
            )
        )

    def image(self, path: str) -> np.ndarray:
        """Segment one image.

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
        vol = normalise_volume(decode_nifti(path), path)
        spacing = read_nifti_header(path)[1][:3]
        depth = vol.shape[2]
        out = np.zeros(vol.shape, np.uint8)
        for start in range(0, depth, batch_size):
            stop = min(start + batch_size, depth)
            packed = [
                self.pack_slice(vol, path, k, spacing)
                for k in range(start, stop)
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
