"""Prediction overlays for fundus images and NIfTI slices."""

import os.path as osp

import numpy as np
from mmseg.engine.hooks import SegVisualizationHook
from mmseg.registry import HOOKS


@HOOKS.register_module()
class DomainVisualizationHook(SegVisualizationHook):
    """mmseg's SegVisualizationHook that also paints NIfTI slices.

    mmseg's hook reads ``img_path`` as an image file, which fails for a
    prostate volume. For a sample with a ``slice_index`` this hook paints
    the middle channel of the network input (slice k, already scaled to
    [-1, 1]) instead. Windows are named ``<domain>_<case>[_slice<k>]`` so
    overlays of different domains do not overwrite each other.

    Args:
        **kwargs: :class:`SegVisualizationHook` arguments.
    """

    def _after_iter(self, runner, batch_idx, data_batch, outputs, mode='val'):
        if self.draw is False or mode == 'train':
            return
        if not self.every_n_inner_iters(batch_idx, self.interval):
            return
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
                img = self._slice_image(data_batch['inputs'][i])
            else:
                img = self._read_image(output.img_path)
            self._visualizer.add_datasample(
                name,
                img,
                data_sample=output,
                show=self.show,
                wait_time=self.wait_time,
                step=runner.iter,
            )

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
