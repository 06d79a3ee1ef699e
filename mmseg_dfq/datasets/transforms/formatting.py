"""Packing a sample with its domain metas: ``PackDomainSegInputs``."""

import inspect
from typing import Optional, Sequence

from mmseg.datasets.transforms import PackSegInputs
from mmseg.registry import TRANSFORMS

from ..nifti import is_nifti

# mmseg's own default meta keys, read from its signature (not copied).
MMSEG_META_KEYS = tuple(
    inspect.signature(PackSegInputs.__init__).parameters['meta_keys'].default
)
# The per-sample metas of a domain-split data set (docs/design.md): every
# sample has the first four; volume slices also the last three.
DOMAIN_META_KEYS = (
    'domain',
    'domain_idx',
    'seen',
    'case_id',
    'slice_index',
    'num_slices',
    'spacing',
)
PACK_META_KEYS = MMSEG_META_KEYS + DOMAIN_META_KEYS


@TRANSFORMS.register_module()
class PackDomainSegInputs(PackSegInputs):
    """mmseg's ``PackSegInputs`` that always keeps the domain metas.

    Packs mmseg's default meta keys plus ``domain``, ``domain_idx``,
    ``seen``, ``case_id``, ``slice_index``, ``num_slices`` and ``spacing``
    (keys a sample lacks are skipped, as mmseg does: a fundus image has no
    ``spacing`` and is measured in pixels). The domain keys cannot be
    configured away, since the per-domain metric needs them and a dropped
    ``spacing`` would silently turn millimetres into voxels. For the same
    reason a sample of a NIfTI volume (one with ``slice_index`` or a NIfTI
    ``img_path``) without a ``spacing`` is refused here, naming the file,
    rather than being measured in voxels at evaluation.

    Args:
        extra_meta_keys (Sequence[str]): More keys to pack. Default: ().
    """

    def __init__(self, extra_meta_keys: Sequence[str] = ()) -> None:
        if isinstance(extra_meta_keys, str):
            extra_meta_keys = (extra_meta_keys,)
        extra = tuple(k for k in extra_meta_keys if k not in PACK_META_KEYS)
        super().__init__(meta_keys=PACK_META_KEYS + extra)

    def transform(self, results: dict) -> dict:
        """Pack ``results`` after checking that a volume sample has spacing.

        Args:
            results (dict): Result dict of the pipeline.

        Returns:
            dict: ``inputs`` and ``data_samples``, as ``PackSegInputs``.
        """
        img_path: Optional[str] = results.get('img_path')
        volume = 'slice_index' in results or (
            isinstance(img_path, str) and is_nifti(img_path)
        )
        if volume and results.get('spacing') is None:
            where = img_path if img_path is not None else '<array>'
            if 'slice_index' in results:
                where += f' (slice {results["slice_index"]})'
            raise ValueError(
                f'PackDomainSegInputs: a NIfTI volume sample without a '
                f'spacing meta: {where}. Its data set must give the voxel '
                'size in mm (header zooms), or surface distances would be '
                'in voxels'
            )
        return super().transform(results)

    def __repr__(self) -> str:
        extra = self.meta_keys[len(PACK_META_KEYS) :]
        return f'{self.__class__.__name__}(extra_meta_keys={extra})'
