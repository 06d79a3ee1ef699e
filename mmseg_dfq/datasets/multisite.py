"""Your own multi-site data: per-domain folders of 2D images or NIfTI volumes.

With data from, say, three hospitals in three folders, a config declares
the classes, the domains (the folder names), what to measure and how to
post-process (``metainfo``), and how a stored mask value becomes a class
(``mask_values``); no Python is needed. See ``configs/_base_/datasets/
multisite_2d.py`` / ``multisite_nifti.py`` and the README section "Your own
multi-site data".
"""

import os.path as osp
from typing import Dict, List, Optional, Sequence

from mmseg.registry import DATASETS

from .base import (
    DomainSpec,
    DomainSplitDataset,
    check_case_split,
    pair_case_files,
    select_split,
    split_image_ext,
)
from .mask_values import check_mask_values
from .nifti import split_nifti_ext
from .transforms.volume import VolumeCache

FILE_KINDS = ('image', 'nifti')


@DATASETS.register_module()
class MultiSiteDataset(DomainSplitDataset):
    """Domain-split data in per-domain folders, declared by a config.

    Layout (``<domain>`` = each name of ``metainfo['domains']``)::

        data_root/<domain>/<img_dir>/<stem><ext>
        data_root/<domain>/<mask_dir>/<stem><mask_suffix><ext>

    With ``file_kind='image'`` a case is a 2D image (PNG, JPEG, TIFF, BMP)
    and its single-channel mask; every image is a sample, ``case_id`` its
    stem, and the masks are read by ``LoadMappedAnnotations``. With
    ``file_kind='nifti'`` a case is a ``.nii[.gz]`` volume and its
    segmentation; every slice ``volume[:, :, k]`` is a 2.5D sample as in
    ``ProstateDGDataset`` (``case_id`` ``'<domain>/<stem>'``, with
    ``slice_index``, ``num_slices`` and ``spacing`` from the header), read
    by the prostate slice loader from :attr:`volume_cache`. In both, stored
    mask values are mapped to classes by ``mask_values``, and a value
    outside the map stops loading with an error naming the file.

    ``metainfo`` must declare ``classes``, ``domains``, ``structures``,
    ``eval_mode`` and ``post_process`` (see :mod:`mmseg_dfq.datasets.base`;
    ``palette`` is optional).

    Args:
        data_root (str): Folder holding one folder per domain.
        metainfo (dict): The data set's facts, see above.
        domains (Sequence[int | str], optional): Domains to load, as 1-based
            indices into ``metainfo['domains']`` or names. Default: None
            (all).
        unseen_domains (Sequence[int | str]): Domains whose samples get
            ``seen=False`` (the held-out target). Default: ().
        file_kind (str): ``'image'`` or ``'nifti'``. Default: 'image'.
        img_dir (str): Sub-folder of a domain with the images. Default:
            'images'.
        mask_dir (str): Sub-folder of a domain with the masks. Default:
            'masks'.
        mask_suffix (str): Suffix of a mask's stem (needed when images and
            masks share a folder). Default: ''.
        mask_values (dict[int, int], optional): Stored mask value -> class
            index (255 = ignored), e.g. ``{0: 0, 255: 1}``. Default: None
            (the stored values are the class indices 0..num_classes-1).
        split (str): ``'all'``, ``'train'`` or ``'test'``: a deterministic
            per-domain case split (:func:`~mmseg_dfq.datasets.base.
            split_test_cases`). Default: 'all'.
        test_fraction (float): Fraction of each domain's cases in
            ``'test'``. Default: 0.2.
        split_seed (int): Seed of the case split. Default: 0.
        cache_bytes (int): Byte budget of the volume cache per dataloader
            worker (``'nifti'``). Default: 1 << 30.
        pipeline (list[dict]): Transforms. Default: ().
        **kwargs: Passed to :class:`mmseg.datasets.BaseSegDataset`.
    """

    METAINFO: dict = dict()

    def __init__(
        self,
        data_root: str,
        metainfo: dict,
        domains: Optional[Sequence[DomainSpec]] = None,
        unseen_domains: Sequence[DomainSpec] = (),
        file_kind: str = 'image',
        img_dir: str = 'images',
        mask_dir: str = 'masks',
        mask_suffix: str = '',
        mask_values: Optional[Dict[int, int]] = None,
        split: str = 'all',
        test_fraction: float = 0.2,
        split_seed: int = 0,
        cache_bytes: int = 1 << 30,
        pipeline: Sequence[dict] = (),
        **kwargs,
    ) -> None:
        if file_kind not in FILE_KINDS:
            raise ValueError(
                f'MultiSiteDataset: file_kind must be one of {FILE_KINDS}, '
                f'got {file_kind!r}'
            )
        if not metainfo or 'classes' not in metainfo:
            raise ValueError(
                'MultiSiteDataset: metainfo must declare the classes, '
                'domains, structures, eval_mode and post_process of the data'
            )
        num_classes = len(metainfo['classes'])
        if mask_values is None:
            mask_values = {k: k for k in range(num_classes)}
        self.mask_values = check_mask_values(
            dict(mask_values), num_classes, 'MultiSiteDataset'
        )
        check_case_split(split, test_fraction)
        self.file_kind = file_kind
        self.img_dir = img_dir
        self.mask_dir = mask_dir
        self.mask_suffix = mask_suffix
        self.split = split
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        if file_kind == 'nifti':
            self.volume_cache = VolumeCache(cache_bytes)
        super().__init__(
            data_root=data_root,
            metainfo=metainfo,
            domains=domains,
            unseen_domains=unseen_domains,
            pipeline=pipeline,
            **kwargs,
        )
        if file_kind == 'image' and self._metainfo['eval_mode'] != '2d':
            raise ValueError(
                "MultiSiteDataset: 2D images (file_kind='image') are "
                f"evaluated per image, so eval_mode must be '2d', got "
                f'{self._metainfo["eval_mode"]!r}'
            )

    def load_data_list(self) -> List[dict]:
        """Index the cases of the configured domains and split.

        Returns:
            list[dict]: One data info per image or slice.
        """
        nifti = self.file_kind == 'nifti'
        data_list = []
        for d in self.domain_ids:
            folder = osp.join(self.data_root, self.domain_names[d - 1])
            cases = select_split(
                pair_case_files(
                    folder,
                    split_nifti_ext if nifti else split_image_ext,
                    self.img_dir,
                    self.mask_dir,
                    self.mask_suffix,
                ),
                self.split,
                self.test_fraction,
                self.split_seed,
                folder,
            )
            for stem, img_path, mask_path in cases:
                if nifti:
                    data_list.extend(
                        self.volume_slice_infos(
                            d,
                            stem,
                            img_path,
                            mask_path,
                            mask_values=self.mask_values,
                        )
                    )
                else:
                    data_list.append(
                        self.sample_info(
                            img_path,
                            mask_path,
                            **self.domain_metas(d, stem),
                            mask_values=self.mask_values,
                        )
                    )
        return data_list
