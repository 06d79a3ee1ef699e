"""Prediction overlays for fundus images and NIfTI slices."""

import os.path as osp

import numpy as np
from mmengine.runner import BaseLoop
from mmseg.engine.hooks import SegVisualizationHook
from mmseg.registry import HOOKS

from .overlay import OverlayWriter


@HOOKS.register_module()
class DomainVisualizationHook(SegVisualizationHook):
    """mmseg's SegVisualizationHook that also paints NIfTI slices.

    mmseg's hook reads ``img_path`` as an image file, which fails for a
    prostate volume. For a sample with a ``slice_index`` this hook paints
    the middle channel of the network input (slice k, already scaled to
    [-1, 1]; with ``--tta`` that of the unflipped view) instead. Windows
    are named ``<domain>_<case>[_slice<k>]`` so overlays of different
    domains do not overwrite each other.

    With ``painter='overlay'`` (the default) saved pictures come from
    :class:`OverlayWriter`: ground truth and prediction blended into the
    image with class contours, no text, painted and written by background
    threads (a few ms per 512 px image instead of mmseg's ~1 s, and off the
    test loop). They land where mmseg's visualiser would put them,
    ``<save_dir>/vis_data/vis_image/<name>_<step>.png``. ``show=True`` (a
    window) and ``painter='mmseg'`` use mmseg's visualiser.

    Args:
        painter (str): ``'overlay'`` or ``'mmseg'``. Default: 'overlay'.
        num_threads (int): Overlay writer threads. Default: 2.
        **kwargs: :class:`SegVisualizationHook` arguments.
    """

    def __init__(self, painter='overlay', num_threads=2, **kwargs):
        super().__init__(**kwargs)
        if painter not in ('overlay', 'mmseg'):
            raise ValueError(
                "DomainVisualizationHook: painter must be 'overlay' or "
                f"'mmseg', got {painter!r}"
            )
        self.painter = painter
        self.num_threads = num_threads
        self._writer = None

    def _overlay_writer(self, runner):
        if self._writer is None:
            backend = self._visualizer.get_backend('LocalVisBackend')
            save_dir = getattr(backend, '_save_dir', None) or osp.join(
                runner.log_dir, 'vis_data'
            )
            meta = self._visualizer.dataset_meta or {}
            self._writer = OverlayWriter(
                osp.join(save_dir, 'vis_image'),
                palette=meta.get('palette'),
                num_threads=self.num_threads,
                backend_args=self.backend_args,
            )
        return self._writer

    def _close_writer(self):
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def after_val_epoch(self, runner, metrics=None):
        """Wait for the overlays of this validation."""
        self._close_writer()

    def after_test_epoch(self, runner, metrics=None):
        """Wait for the overlays of this test."""
        self._close_writer()

    def after_run(self, runner):
        """Wait for any overlay still queued."""
        self._close_writer()

    def _after_iter(self, runner, batch_idx, data_batch, outputs, mode='val'):
        if self.draw is False or mode == 'train':
            return
        if not self.every_n_inner_iters(batch_idx, self.interval):
            return
        fast = self.painter == 'overlay' and not self.show
        step = self._step(runner)
        for i, output in enumerate(outputs):
            meta = output.metainfo
            case = meta.get('case_id', osp.basename(output.img_path))
            # Prostate case ids already read '<domain>/<case>'.
            name = (
                case.replace('/', '_')
                if '/' in case
                else f'{meta.get("domain", mode)}_{case}'
            )
            if 'slice_index' in meta:
                name += f'_slice{meta["slice_index"]:03d}'
                img = self._slice_image(self._sample_input(data_batch, i))
            elif fast:
                img = None  # decoded by the writer's thread
            else:
                img = self._read_image(output.img_path)
            if fast:
                self._overlay_writer(runner).submit(
                    f'{name}_{step}',
                    self._labels(output, 'pred_sem_seg'),
                    gt=self._labels(output, 'gt_sem_seg'),
                    image=img,
                    image_path=None if img is not None else output.img_path,
                )
                continue
            self._visualizer.add_datasample(
                name,
                img,
                data_sample=output,
                show=self.show,
                wait_time=self.wait_time,
                step=step,
            )

    @staticmethod
    def _step(runner):
        """``runner.iter`` without building a training loop to read it.

        In a test run the Runner's ``iter`` builds the configured training
        loop, dataset and sampler included, only to return 0 (and fails when
        the training data is absent, e.g. testing with only a test set).
        """
        if not hasattr(runner, '_train_loop'):
            return runner.iter
        loop = runner._train_loop
        return loop.iter if isinstance(loop, BaseLoop) else 0

    @staticmethod
    def _sample_input(data_batch, i):
        """The network input of sample ``i``; a TTA batch's unflipped view.

        A test-time augmentation batch (``TestTimeAug``) holds one list of
        samples per view: ``inputs[view][i]``. The view whose sample is not
        flipped is painted (the first view if every one is).
        """
        inputs = data_batch['inputs']
        if hasattr(inputs, 'shape') or not isinstance(
            inputs[0], (list, tuple)
        ):
            return inputs[i]  # one view: (B, C, H, W) or a list of (C, H, W)
        views = data_batch.get('data_samples') or []
        for view, samples in enumerate(views):
            if not samples[i].metainfo.get('flip', False):
                return inputs[view][i]
        return inputs[0][i]

    @staticmethod
    def _labels(output, key):
        """(H, W) int64 labels of ``output.<key>``, or None if absent."""
        if key not in output:
            return None
        return output.get(key).data[0].cpu().numpy()

    @staticmethod
    def _slice_image(inputs):
        """(3, H, W) 2.5D input in [-1, 1] -> (H, W, 3) uint8 of slice k."""
        mid = inputs[inputs.shape[0] // 2].float().cpu().numpy()
        grey = np.clip((mid + 1.0) * 127.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)

    def _read_image(self, path):
        from mmengine import fileio

        from ..datasets.transforms import imdecode_as_stored

        # As stored (EXIF orientation ignored), like the model's input.
        data = fileio.get(path, backend_args=self.backend_args)
        return imdecode_as_stored(data, path, 'image to paint')[..., ::-1]
