"""Prostate T2 MRI data set split by site (SAML layout), one sample a slice."""

import os.path as osp
from typing import Dict, List, Optional, Sequence, Union

from mmseg.registry import DATASETS

from .base import (
    DomainSpec,
    DomainSplitDataset,
    check_case_split,
    pair_case_files,
    resolve_domains,
    select_split,
)
from .nifti import SEG_SUFFIX, split_nifti_ext
from .transforms.volume import VolumeCache


@DATASETS.register_module()
class ProstateDGDataset(DomainSplitDataset):
    """Prostate T2 MRI data set of the SAML release, split by site.

    ``data_root`` holds one folder per site with ``CaseXX.nii.gz`` (or
    ``.nii``) and ``CaseXX_segmentation.nii.gz`` beside it. Domains 1..6 are
    RUNMC, BMC, I2CVB, UCL, BIDMC and HK. Each slice ``volume[:, :, k]``
    along the third NIfTI axis is one sample; its 2.5D input is built by
    ``LoadProstateSlice`` from the volume held in :attr:`volume_cache`.
    Shapes, spacings and affines come from the headers at construction
    (no voxel data is decoded then). Every sample carries the metas
    ``domain``, ``domain_idx``, ``seen``, ``case_id`` (``'<domain>/<stem>'``),
    ``slice_index``, ``num_slices`` and ``spacing`` (header zooms, mm), and
    the data info also keeps the volume ``affine`` (4x4 nested tuples).

    Args:
        data_root (str): Folder holding the site folders.
        domains (Sequence[int | str]): Sites to load, as 1..6 or names.
            Default: (1, 2, 3, 4, 5, 6).
        unseen_domains (Sequence[int | str]): Sites whose samples get
            ``seen=False`` (the held-out target). Default: ().
        split (str): ``'all'`` (every case; what leave-one-domain-out uses
            for the target and the authors for the sources), ``'train'`` or
            ``'test'`` - a deterministic per-site case split, see
            :func:`~mmseg_dfq.datasets.base.split_test_cases`.
            Default: 'all'.
        test_fraction (float): Fraction of each site's cases in the
            ``'test'`` split. Default: 0.2.
        split_seed (int): Seed of the case split (another seed, another
            train/test partition of each site). Default: 0.
        domain_dirs (dict | Sequence[str], optional): Folder names of the
            sites when they differ from the names above, as a dict
            name-or-index -> folder (e.g. ``{'I2CVB': 'HCRUDB'}``) or a list
            of six folder names. Default: None.
        cache_bytes (int): Byte budget of the volume cache (per dataloader
            worker). The default 1 GiB holds about 45 volumes of 384x384x30
            (image float32 + labels uint8), fewer than the 116 of the
            benchmark. Default: 1 << 30.
        pipeline (list[dict]): Transforms. Default: ().
        **kwargs: Passed to :class:`mmseg.datasets.BaseSegDataset`.
    """

    METAINFO = dict(
        classes=('background', 'prostate'),
        palette=[[0, 0, 0], [255, 0, 0]],
        domains=('RUNMC', 'BMC', 'I2CVB', 'UCL', 'BIDMC', 'HK'),
        structures=dict(Prostate=(1,)),
        eval_mode='3d',
        # The authors': largest 6-connected 3D component, no hole filling.
        post_process=dict(largest_cc=True, fill_holes=False, connectivity=1),
    )
    FILE_KIND = 'nifti'

    def __init__(
        self,
        data_root: str,
        domains: Sequence[DomainSpec] = (1, 2, 3, 4, 5, 6),
        unseen_domains: Sequence[DomainSpec] = (),
        split: str = 'all',
        test_fraction: float = 0.2,
        split_seed: int = 0,
        domain_dirs: Optional[Union[Dict, Sequence[str]]] = None,
        cache_bytes: int = 1 << 30,
        pipeline: Sequence[dict] = (),
        **kwargs,
    ) -> None:
        check_case_split(split, test_fraction)
        self.split = split
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self._domain_dirs = domain_dirs
        self.volume_cache = VolumeCache(cache_bytes)
        super().__init__(
            data_root=data_root,
            domains=domains,
            unseen_domains=unseen_domains,
            pipeline=pipeline,
            **kwargs,
        )

    def _resolve_dirs(
        self, domain_dirs: Optional[Union[Dict, Sequence[str]]]
    ) -> List[str]:
        """Folder name of each of the six sites.

        Args:
            domain_dirs (dict | Sequence[str], optional): Overrides.

        Returns:
            list[str]: Folder of domain ``i + 1`` at position ``i``.
        """
        names = self.domain_names
        dirs = list(names)
        if domain_dirs is None:
            return dirs
        if isinstance(domain_dirs, dict):
            for key, folder in domain_dirs.items():
                (idx,) = resolve_domains([key], names, 'domain_dirs')
                dirs[idx - 1] = folder
            return dirs
        if len(domain_dirs) != len(dirs):
            raise ValueError(
                f'domain_dirs as a list needs {len(dirs)} folder names, got '
                f'{len(domain_dirs)}'
            )
        return list(domain_dirs)

    def load_data_list(self) -> List[dict]:
        """Index every slice of the configured sites from the NIfTI headers.

        Returns:
            list[dict]: One data info per slice with paths and metas.
        """
        dirs = self._resolve_dirs(self._domain_dirs)
        data_list = []
        for d in self.domain_ids:
            folder = osp.join(self.data_root, dirs[d - 1])
            if not osp.isdir(folder):
                raise FileNotFoundError(
                    f'domain folder not found: {folder} (site '
                    f'{self.domain_names[d - 1]!r}; the site folders looked '
                    f'for: {list(dirs)}; other names are given by '
                    "domain_dirs=dict(SITE='folder'))"
                )
            cases = select_split(
                pair_case_files(
                    folder, split_nifti_ext, mask_suffix=SEG_SUFFIX
                ),
                self.split,
                self.test_fraction,
                self.split_seed,
                folder,
            )
            for stem, img_path, seg_path in cases:
                data_list.extend(
                    self.volume_slice_infos(d, stem, img_path, seg_path)
                )
        return data_list
