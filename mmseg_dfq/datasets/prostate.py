"""Prostate T2 MRI data set split by site (SAML layout), one sample a slice."""

import os
import os.path as osp
import re
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from .fundus import DomainSpec, _resolve_domains
from .transforms import VolumeCache, read_nifti_header

_SEG_SUFFIX = '_segmentation'
_NIFTI_EXTS = ('.nii.gz', '.nii')


def _split_ext(filename: str) -> Optional[tuple]:
    """Split a NIfTI file name into (stem, extension), or None if not NIfTI.

    Args:
        filename (str): A file name.

    Returns:
        tuple[str, str] | None: Stem and extension.
    """
    for ext in _NIFTI_EXTS:
        if filename.endswith(ext):
            return filename[: -len(ext)], ext
    return None


def _natural_key(text: str) -> list:
    """Sort key that orders ``Case2`` before ``Case10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', text)]


def split_test_cases(
    cases: Sequence[str], test_fraction: float, seed: int = 0
) -> List[str]:
    """Pick the test cases of one domain, deterministically.

    The cases are sorted, shuffled with ``seed`` and the first
    ``round(n * test_fraction)`` (at least one when the fraction is > 0 and
    the domain has two or more cases, never all of them) become test cases.

    Args:
        cases (Sequence[str]): Case stems of a domain.
        test_fraction (float): Fraction of cases held out for testing.
        seed (int): Seed of the shuffle. Default: 0.

    Returns:
        list[str]: The test case stems, sorted.
    """
    cases = sorted(cases, key=_natural_key)
    n = len(cases)
    n_test = int(round(n * test_fraction))
    if test_fraction > 0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    order = np.random.RandomState(seed).permutation(n)
    return sorted((cases[i] for i in order[:n_test]), key=_natural_key)


@DATASETS.register_module()
class ProstateDGDataset(BaseSegDataset):
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
            :func:`split_test_cases`. Default: 'all'.
        test_fraction (float): Fraction of each site's cases in the
            ``'test'`` split. Default: 0.2.
        split_seed (int): Seed of the case split. Default: 0.
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
        classes=('background', 'prostate'), palette=[[0, 0, 0], [255, 0, 0]]
    )
    DOMAIN_NAMES = ('RUNMC', 'BMC', 'I2CVB', 'UCL', 'BIDMC', 'HK')
    SPLITS = ('all', 'train', 'test')

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
        self.domain_ids = _resolve_domains(
            domains, self.DOMAIN_NAMES, 'domains'
        )
        self.unseen_ids = _resolve_domains(
            unseen_domains, self.DOMAIN_NAMES, 'unseen_domains'
        )
        if split not in self.SPLITS:
            raise ValueError(f'split must be in {self.SPLITS}, got {split!r}')
        if not 0.0 <= test_fraction < 1.0:
            raise ValueError(
                f'test_fraction must be in [0, 1), got {test_fraction}'
            )
        self.split = split
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.dir_names = self._resolve_dirs(domain_dirs)
        if not osp.isdir(data_root):
            raise FileNotFoundError(
                f'prostate data_root is not a folder: {data_root}'
            )
        self.volume_cache = VolumeCache(cache_bytes)
        super().__init__(
            data_root=data_root,
            pipeline=list(pipeline),
            reduce_zero_label=False,
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
        dirs = list(self.DOMAIN_NAMES)
        if domain_dirs is None:
            return dirs
        if isinstance(domain_dirs, dict):
            for key, folder in domain_dirs.items():
                (idx,) = _resolve_domains([key], self.DOMAIN_NAMES, 'dirs')
                dirs[idx - 1] = folder
            return dirs
        if len(domain_dirs) != len(dirs):
            raise ValueError(
                f'domain_dirs as a list needs {len(dirs)} folder names, got '
                f'{len(domain_dirs)}'
            )
        return list(domain_dirs)

    @property
    def domains(self) -> List[str]:
        """list[str]: Names of the loaded sites, in the configured order."""
        return [self.DOMAIN_NAMES[i - 1] for i in self.domain_ids]

    def _find_cases(self, folder: str) -> List[tuple]:
        """List (stem, image path, segmentation path) of a site folder.

        Args:
            folder (str): Site folder.

        Returns:
            list[tuple]: Cases in natural order of their stems.
        """
        if not osp.isdir(folder):
            raise FileNotFoundError(
                f'prostate site folder not found: {folder}'
            )
        files = os.listdir(folder)
        segs = {}
        images = {}
        for fname in files:
            parts = _split_ext(fname)
            if parts is None:
                continue
            stem, _ = parts
            target = segs if stem.endswith(_SEG_SUFFIX) else images
            key = stem[: -len(_SEG_SUFFIX)] if target is segs else stem
            if key in target:
                raise ValueError(
                    f'{folder}: both .nii and .nii.gz exist for {stem}'
                )
            target[key] = osp.join(folder, fname)
        for stem in segs:
            if stem not in images:
                raise FileNotFoundError(
                    f'segmentation {segs[stem]} has no image {stem}.nii[.gz]'
                )
        cases = []
        for stem in sorted(images, key=_natural_key):
            if stem not in segs:
                raise FileNotFoundError(
                    f'image {images[stem]} has no segmentation '
                    f'{stem}{_SEG_SUFFIX}.nii[.gz] beside it'
                )
            cases.append((stem, images[stem], segs[stem]))
        if not cases:
            raise ValueError(f'no CaseXX.nii[.gz] volumes found in {folder}')
        return cases

    def load_data_list(self) -> List[dict]:
        """Index every slice of the configured sites from the NIfTI headers.

        Returns:
            list[dict]: One data info per slice with paths and metas.
        """
        data_list = []
        for d in self.domain_ids:
            name = self.DOMAIN_NAMES[d - 1]
            folder = osp.join(self.data_root, self.dir_names[d - 1])
            cases = self._find_cases(folder)
            if self.split != 'all':
                test = set(
                    split_test_cases(
                        [c[0] for c in cases],
                        self.test_fraction,
                        self.split_seed,
                    )
                )
                want_test = self.split == 'test'
                cases = [c for c in cases if (c[0] in test) == want_test]
                if not cases:
                    raise ValueError(
                        f'{folder}: no cases in split {self.split!r} '
                        f'(test_fraction={self.test_fraction})'
                    )
            for stem, img_path, seg_path in cases:
                shape, spacing, affine = read_nifti_header(img_path)
                seg_shape, _, _ = read_nifti_header(seg_path)
                if len(shape) != 3:
                    raise ValueError(
                        f'prostate image must be a 3D volume, got shape '
                        f'{shape}: {img_path}'
                    )
                if seg_shape != shape:
                    raise ValueError(
                        f'segmentation shape {seg_shape} differs from image '
                        f'shape {shape} ({img_path}): {seg_path}'
                    )
                affine_t = tuple(tuple(float(v) for v in r) for r in affine)
                for k in range(shape[2]):
                    data_list.append(
                        dict(
                            img_path=img_path,
                            seg_map_path=seg_path,
                            label_map=self.label_map,
                            reduce_zero_label=False,
                            seg_fields=[],
                            domain=name,
                            domain_idx=d,
                            seen=d not in self.unseen_ids,
                            case_id=f'{name}/{stem}',
                            slice_index=k,
                            num_slices=shape[2],
                            spacing=spacing[:3],
                            affine=affine_t,
                        )
                    )
        return data_list

    def prepare_data(self, idx: int) -> dict:
        """Run the pipeline on sample ``idx`` with access to the cache.

        Args:
            idx (int): Sample index.

        Returns:
            dict: The pipeline output.
        """
        data_info = self.get_data_info(idx)
        data_info['volume_cache'] = self.volume_cache
        return self.pipeline(data_info)
