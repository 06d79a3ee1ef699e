"""The base of every domain-split data set: domains, metas and dataset facts.

A domain-generalisation data set is an mmseg data set whose samples each
belong to a domain (a hospital, scanner or site). :class:`DomainSplitDataset`
holds what every such data set shares - turning the configured domains into
indices, the check of ``data_root``, the per-sample domain metas - and
checks the facts a data set declares in its ``METAINFO`` (or a config passes
as ``metainfo``), which the metric and the inferencer read from
``dataset_meta`` instead of knowing data-set types:

- ``classes``, ``palette``: as in mmseg.
- ``domains``: names of the domains, domain ``i + 1`` at position ``i``.
- ``structures``: structure name -> the labels whose union is its mask,
  e.g. ``dict(OD=(1, 2), OC=(2,))``; what is measured per case.
- ``eval_mode``: ``'2d'`` (every sample is a case) or ``'3d'`` (slices of a
  volume make one case).
- ``post_process``: ``dict(largest_cc=bool, fill_holes=bool,
  connectivity=int)``, the post-processing of every predicted structure
  (connectivity as scipy's rank: 1 face neighbours up to the number of
  dimensions for the full neighbourhood).
"""

import logging
import os
import os.path as osp
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from mmengine.logging import print_log
from mmseg.datasets import BaseSegDataset

from ..evaluation.postprocess import check_eval_mode, post_process_from_meta
from .nifti import (
    NIFTI_EXTS,
    check_same_affine,
    check_same_voxel_size,
    read_nifti_header,
)

DomainSpec = Union[int, str]

# Keys of the facts every domain-split data set declares (see the module
# docstring); DomainMetric and the inferencer read them from dataset_meta.
DATASET_FACT_KEYS = (
    'classes',
    'palette',
    'domains',
    'structures',
    'eval_mode',
    'post_process',
)


def resolve_domains(
    domains: Union[DomainSpec, Sequence[DomainSpec]],
    names: Sequence[str],
    what: str,
) -> List[int]:
    """Turn domain indices (1-based) or names into 1-based indices.

    Args:
        domains (int | str | Sequence[int | str]): Domains as 1-based
            indices or names.
        names (Sequence[str]): Name of domain ``i + 1`` at position ``i``.
        what (str): Argument name for error messages.

    Returns:
        list[int]: 1-based indices in the given order.
    """
    if isinstance(domains, (int, str)):
        domains = [domains]
    out = []
    for d in domains:
        if isinstance(d, bool):
            raise TypeError(f'{what}: a domain cannot be a bool ({d!r})')
        if isinstance(d, int):
            if not 1 <= d <= len(names):
                raise ValueError(
                    f'{what}: domain index {d} outside 1..{len(names)}'
                )
            idx = d
        elif isinstance(d, str) and d in names:
            idx = list(names).index(d) + 1
        else:
            raise ValueError(
                f'{what}: unknown domain {d!r}; use 1..{len(names)} or one '
                f'of {list(names)}'
            )
        if idx in out:
            raise ValueError(f'{what}: domain {d!r} given twice')
        out.append(idx)
    return out


def check_dataset_facts(meta: dict, where: str) -> dict:
    """Check and normalise the facts a domain-split data set declares.

    Lists become tuples (a config gives lists), so that every data set's
    ``metainfo`` holds the same types.

    Args:
        meta (dict): The metainfo (``classes`` ... ``post_process``).
        where (str): Who declared it, named in errors.

    Returns:
        dict: The normalised facts but ``palette`` (mmseg's own; may be
        left out, mmseg then draws one).
    """
    missing = [
        k for k in DATASET_FACT_KEYS if k != 'palette' and meta.get(k) is None
    ]
    if missing:
        raise ValueError(
            f'{where}: metainfo lacks {missing}; a domain-split data set '
            f'declares {list(DATASET_FACT_KEYS)} (see '
            'mmseg_dfq.datasets.base)'
        )
    classes = tuple(meta['classes'])
    domains = meta['domains']
    if isinstance(domains, str) or not domains:
        raise ValueError(
            f'{where}: metainfo domains must be a non-empty sequence of '
            f'names, got {domains!r}'
        )
    domains = tuple(str(d) for d in domains)
    if len(set(domains)) != len(domains):
        raise ValueError(f'{where}: metainfo domains repeat a name: {domains}')
    structures = meta['structures']
    if not isinstance(structures, dict) or not structures:
        raise ValueError(
            f'{where}: metainfo structures must be a non-empty dict of name '
            f'-> labels, got {structures!r}'
        )
    norm_structures = {}
    for name, labels in structures.items():
        labels = (labels,) if isinstance(labels, int) else tuple(labels)
        bad = [
            v
            for v in labels
            if isinstance(v, bool)
            or not isinstance(v, (int, np.integer))
            or not 1 <= v < len(classes)
        ]
        if not labels or bad:
            raise ValueError(
                f'{where}: structure {name!r} needs labels in '
                f'1..{len(classes) - 1} (the foreground classes), got '
                f'{structures[name]!r}'
            )
        norm_structures[str(name)] = tuple(int(v) for v in labels)
    eval_mode = check_eval_mode(
        meta['eval_mode'], f'{where}: metainfo eval_mode'
    )
    post = post_process_from_meta(
        meta['post_process'], eval_mode, f'{where}: metainfo'
    )
    out = dict(
        classes=classes,
        domains=domains,
        structures=norm_structures,
        eval_mode=eval_mode,
        post_process=post,
    )
    return out


class DomainSplitDataset(BaseSegDataset):
    """An mmseg data set whose samples each belong to one domain.

    Subclasses declare their facts in ``METAINFO`` (see the module
    docstring; a config may override them with ``metainfo``) and implement
    ``load_data_list`` with :meth:`domain_metas` for every sample; they set
    the attributes their ``load_data_list`` needs before calling this
    ``__init__``. Domains are given as 1-based indices into
    ``metainfo['domains']`` or as names; every sample of a loaded domain
    carries ``domain`` (name), ``domain_idx`` (1-based), ``seen`` (False
    for the held-out ``unseen_domains``) and ``case_id``.

    Args:
        data_root (str): The data set's folder.
        domains (Sequence[int | str], optional): Domains to load. Default:
            None (every domain of ``metainfo['domains']``).
        unseen_domains (Sequence[int | str]): Domains whose samples get
            ``seen=False`` (the held-out target). Default: ().
        pipeline (list[dict]): Transforms. Default: ().
        lazy_init (bool): Defer indexing the files, as mmengine's
            ``BaseDataset``. Default: False.
        **kwargs: Passed to :class:`mmseg.datasets.BaseSegDataset`.
    """

    METAINFO: dict = dict()
    # What a sample is read from: 'image' (2D files) or 'nifti' (slices of
    # volumes); a data set with a ``file_kind`` argument reads it from there.
    FILE_KIND = 'image'
    # A volume data set's cache of decoded volumes, handed to the slice
    # loader with every sample (see prepare_data).
    volume_cache = None

    def __init__(
        self,
        data_root: str,
        domains: Optional[Sequence[DomainSpec]] = None,
        unseen_domains: Sequence[DomainSpec] = (),
        pipeline: Sequence[dict] = (),
        lazy_init: bool = False,
        **kwargs,
    ) -> None:
        name = type(self).__name__
        # Lazily first: the domain names are in the merged metainfo, which
        # BaseSegDataset builds; indexing the files needs the domains.
        super().__init__(
            data_root=data_root,
            pipeline=list(pipeline),
            reduce_zero_label=False,
            lazy_init=True,
            **kwargs,
        )
        self._metainfo.update(check_dataset_facts(self._metainfo, name))
        names = self._metainfo['domains']
        self.domain_ids = resolve_domains(
            range(1, len(names) + 1) if domains is None else domains,
            names,
            'domains',
        )
        self.unseen_ids = resolve_domains(
            unseen_domains, names, 'unseen_domains'
        )
        if not osp.isdir(data_root):
            raise FileNotFoundError(
                f'{name}: data_root is not a folder: {data_root}'
            )
        if not lazy_init:
            self.full_init()

    @classmethod
    def _load_metainfo(cls, metainfo: Optional[dict] = None) -> dict:
        """mmengine's metainfo merge, with ``eval_mode`` kept as a string.

        mmengine reads every string value of ``metainfo`` as a file of names
        if such a file exists (and warns when it does not); ``'2d'`` is
        never a file.
        """
        metainfo = dict(metainfo or {})
        eval_mode = metainfo.pop('eval_mode', None)
        out = super()._load_metainfo(metainfo)
        if eval_mode is not None:
            out['eval_mode'] = eval_mode
        return out

    @classmethod
    def declared_facts(cls, metainfo: Optional[dict] = None) -> dict:
        """The checked facts of this data set type with a config's
        ``metainfo``, without building it (no files are read).

        Args:
            metainfo (dict, optional): The config's ``metainfo``.

        Returns:
            dict: See :func:`check_dataset_facts`.
        """
        meta = dict(cls.METAINFO)
        meta.update(metainfo or {})
        return check_dataset_facts(meta, cls.__name__)

    @classmethod
    def file_kind_of(cls, dataset_cfg: dict) -> str:
        """``'image'`` or ``'nifti'``: what a config's data set reads.

        Args:
            dataset_cfg (dict): The data set's config.

        Returns:
            str: The ``file_kind`` argument, else the type's ``FILE_KIND``.
        """
        return dataset_cfg.get('file_kind', None) or cls.FILE_KIND

    @property
    def domain_names(self) -> tuple:
        """tuple[str]: Every domain of the data set, domain ``i + 1`` at
        position ``i`` (``metainfo['domains']``)."""
        return self._metainfo['domains']

    @property
    def domains(self) -> List[str]:
        """list[str]: Names of the loaded domains, in the configured order."""
        return [self.domain_names[i - 1] for i in self.domain_ids]

    def domain_metas(self, domain_idx: int, case_id: str) -> Dict:
        """The domain metas of one sample of domain ``domain_idx``.

        Args:
            domain_idx (int): 1-based index of the sample's domain.
            case_id (str): Identifies the case within its domain (an image,
                or the volume a slice belongs to).

        Returns:
            dict: ``domain``, ``domain_idx``, ``seen`` and ``case_id``.
        """
        return dict(
            domain=self.domain_names[domain_idx - 1],
            domain_idx=domain_idx,
            seen=domain_idx not in self.unseen_ids,
            case_id=case_id,
        )

    def sample_info(
        self, img_path: str, seg_map_path: Optional[str], **metas
    ) -> dict:
        """A data info with mmseg's keys plus ``metas``.

        Args:
            img_path (str): The image (or volume) file.
            seg_map_path (str, optional): Its annotation file.
            **metas: Domain metas and any per-sample keys.

        Returns:
            dict: The data info.
        """
        return dict(
            img_path=img_path,
            seg_map_path=seg_map_path,
            label_map=self.label_map,
            reduce_zero_label=False,
            seg_fields=[],
            **metas,
        )

    def volume_slice_infos(
        self,
        domain_idx: int,
        stem: str,
        img_path: str,
        seg_path: str,
        **extra,
    ) -> List[dict]:
        """One data info per slice ``volume[:, :, k]`` of a case.

        Shapes, spacing and affine come from the NIfTI headers (no voxel is
        decoded here). Each header's voxel size must be positive and finite;
        a segmentation whose voxel size or affine differs from the image's
        (by more than 0.1%) is named in a warning (see
        :func:`~mmseg_dfq.datasets.nifti.check_same_voxel_size`).

        Args:
            domain_idx (int): 1-based domain of the case.
            stem (str): The case's file stem; ``case_id`` is
                ``'<domain>/<stem>'``.
            img_path (str): Its volume.
            seg_path (str): Its segmentation.
            **extra: More keys of every data info.

        Returns:
            list[dict]: With the domain metas, ``slice_index``,
            ``num_slices``, ``spacing`` (header zooms, mm) and ``affine``
            (4x4 nested tuples).
        """
        shape, spacing, affine = read_nifti_header(img_path)
        seg_shape, seg_spacing, seg_affine = read_nifti_header(seg_path)
        if len(shape) != 3:
            raise ValueError(
                f'image must be a 3D volume, got shape {shape}: {img_path}'
            )
        if seg_shape != shape:
            raise ValueError(
                f'segmentation shape {seg_shape} differs from image shape '
                f'{shape} ({img_path}): {seg_path}'
            )
        # The metric measures the labels in mm with the image's spacing.
        if check_same_voxel_size(
            img_path, spacing[:3], seg_path, seg_spacing[:3]
        ):
            check_same_affine(img_path, affine, seg_path, seg_affine)
        affine_t = tuple(tuple(float(v) for v in r) for r in affine)
        name = self.domain_names[domain_idx - 1]
        metas = self.domain_metas(domain_idx, f'{name}/{stem}')
        return [
            self.sample_info(
                img_path,
                seg_path,
                **metas,
                slice_index=k,
                num_slices=shape[2],
                spacing=tuple(spacing[:3]),
                affine=affine_t,
                **extra,
            )
            for k in range(shape[2])
        ]

    def prepare_data(self, idx: int) -> dict:
        """Run the pipeline on sample ``idx``, with the volume cache.

        Args:
            idx (int): Sample index.

        Returns:
            dict: The pipeline output.
        """
        data_info = self.get_data_info(idx)
        if self.volume_cache is not None:
            data_info['volume_cache'] = self.volume_cache
        return self.pipeline(data_info)


def natural_key(text: str) -> list:
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
    cases = sorted(cases, key=natural_key)
    n = len(cases)
    n_test = int(round(n * test_fraction))
    if test_fraction > 0 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    order = np.random.RandomState(seed).permutation(n)
    return sorted((cases[i] for i in order[:n_test]), key=natural_key)


def select_split(
    cases: Sequence[tuple],
    split: str,
    test_fraction: float,
    seed: int,
    where: str,
) -> List[tuple]:
    """The cases of one domain in ``split`` (``'all'``, ``'train'``,
    ``'test'``), by :func:`split_test_cases` on their first field.

    Args:
        cases (Sequence[tuple]): ``(stem, ...)`` per case.
        split (str): Which split.
        test_fraction (float): Fraction of cases in ``'test'``.
        seed (int): Seed of the case split.
        where (str): The domain folder, named in errors.

    Returns:
        list[tuple]: The selected cases, in the given order.
    """
    if split == 'all':
        return list(cases)
    test = set(split_test_cases([c[0] for c in cases], test_fraction, seed))
    chosen = [c for c in cases if (c[0] in test) == (split == 'test')]
    if not chosen:
        raise ValueError(
            f'{where}: no cases in split {split!r} '
            f'(test_fraction={test_fraction})'
        )
    return chosen


SPLITS = ('all', 'train', 'test')


def check_case_split(split: str, test_fraction: float) -> None:
    """Refuse an unknown split or a test fraction outside [0, 1)."""
    if split not in SPLITS:
        raise ValueError(f'split must be in {SPLITS}, got {split!r}')
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(
            f'test_fraction must be in [0, 1), got {test_fraction}'
        )


# Extensions of the 2D images and masks a domain folder may hold.
IMAGE_EXTS = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')

# Extensions of image and volume formats in general: a file of such a type
# that a layout does not read is refused by :func:`pair_case_files` (it is
# a case the user means to be read); other files are passed over with a
# warning that names them.
DATA_FILE_EXTS = (
    IMAGE_EXTS
    + NIFTI_EXTS
    + (
        '.jpe',
        '.jfif',
        '.jp2',
        '.j2k',
        '.webp',
        '.gif',
        '.pbm',
        '.pgm',
        '.ppm',
        '.pnm',
        '.exr',
        '.hdr',
        '.img',
        '.heic',
        '.avif',
        '.dcm',
        '.dicom',
        '.mha',
        '.mhd',
        '.nrrd',
        '.nhdr',
        '.npy',
        '.npz',
    )
)


def looks_like_data(filename: str) -> bool:
    """Whether a file name has an image or volume extension (any format).

    Args:
        filename (str): A file name or path.

    Returns:
        bool: True for e.g. ``.png``, ``.webp``, ``.gif``, ``.nii.gz``,
        ``.mha``, ``.dcm``, ``.npy`` (see ``DATA_FILE_EXTS``).
    """
    return str(filename).lower().endswith(DATA_FILE_EXTS)


def name_list(names: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` names for a message, with the count of the rest.

    Args:
        names (Sequence[str]): Names, in the order to show.
        limit (int): How many to show. Default: 5.

    Returns:
        str: E.g. ``'a.txt, b.txt'`` or ``'a, b, c, d, e and 3 more'``.
    """
    names = list(names)
    shown = ', '.join(names[:limit])
    if len(names) > limit:
        shown += f' and {len(names) - limit} more'
    return shown


def split_image_ext(filename: str) -> Optional[Tuple[str, str]]:
    """Split a 2D image file name into (stem, extension), or None.

    Args:
        filename (str): A file name (no folder).

    Returns:
        tuple[str, str] | None: E.g. ``('x', '.png')``; None for other
        extensions.
    """
    stem, ext = osp.splitext(filename)
    return (stem, ext) if ext.lower() in IMAGE_EXTS else None


def pair_case_files(
    folder: str,
    split_ext: Callable[[str], Optional[Tuple[str, str]]],
    img_dir: str = '',
    mask_dir: str = '',
    mask_suffix: str = '',
) -> List[tuple]:
    """Pair the images (or volumes) of a domain folder with their masks.

    A case ``<stem>`` is ``<folder>/<img_dir>/<stem><ext>`` with
    ``<folder>/<mask_dir>/<stem><mask_suffix><ext>`` (the extensions may
    differ, e.g. a JPEG image with a PNG mask). The SAML prostate layout is
    ``img_dir=mask_dir=''`` and ``mask_suffix='_segmentation'``. Every
    image needs its mask and every mask its image. Nothing is passed over
    silently:

    - a file of an image or volume type that ``split_ext`` does not read
      (e.g. ``case04.webp``, or a ``.png`` in a NIfTI layout; see
      :func:`looks_like_data`) is an error, as is a file in a mask folder
      of its own without ``mask_suffix``;
    - any other file (``README.txt``) or sub-folder (other than the image
      and mask folders) is passed over with a warning naming it.

    Args:
        folder (str): The domain folder.
        split_ext (callable): File name -> (stem, extension), or None for a
            file of another kind (:func:`split_image_ext`,
            :func:`~mmseg_dfq.datasets.nifti.split_nifti_ext`).
        img_dir (str): Sub-folder of the images. Default: ''.
        mask_dir (str): Sub-folder of the masks. Default: ''.
        mask_suffix (str): Suffix of a mask's stem. Default: ''.

    Returns:
        list[tuple]: ``(stem, image path, mask path)`` in natural order of
        the stems.
    """
    img_folder = osp.normpath(osp.join(folder, img_dir))
    mask_folder = osp.normpath(osp.join(folder, mask_dir))
    for f in (folder, img_folder, mask_folder):
        if not osp.isdir(f):
            raise FileNotFoundError(f'domain folder not found: {f}')
    shared = img_folder == mask_folder
    if shared and not mask_suffix:
        raise ValueError(
            f'{img_folder}: images and masks share a folder, so the masks '
            'need a stem suffix (mask_suffix, e.g. _segmentation)'
        )
    # Files and folders passed over (warned about), and files of an image
    # or volume type the layout does not read (refused); sets, as a shared
    # folder is scanned twice.
    ignored, unread = set(), set()

    def scan(path: str, masks: bool) -> Dict[str, str]:
        found = {}
        for fname in sorted(os.listdir(path)):
            full = osp.join(path, fname)
            if not osp.isfile(full):
                if osp.normpath(full) not in (img_folder, mask_folder):
                    ignored.add(full + os.sep)
                continue
            parts = split_ext(fname)
            if parts is None:
                (unread if looks_like_data(fname) else ignored).add(full)
                continue
            stem = parts[0]
            is_mask = bool(mask_suffix) and stem.endswith(mask_suffix)
            if masks:
                if mask_suffix and not is_mask:
                    if shared:
                        continue  # an image, found by the other scan
                    raise ValueError(
                        f'{full}: a file in the mask folder {path} whose '
                        f'stem lacks the mask suffix {mask_suffix!r}'
                    )
                stem = stem[: len(stem) - len(mask_suffix)]
            elif shared and is_mask:
                continue
            if stem in found:
                raise ValueError(
                    f'{path}: two files for one case {stem!r}: '
                    f'{osp.basename(found[stem])} and {fname}'
                )
            found[stem] = full
        return found

    images = scan(img_folder, False)
    masks = scan(mask_folder, True)
    if unread:
        reads = [e for e in DATA_FILE_EXTS if split_ext('x' + e) is not None]
        raise ValueError(
            f'{folder}: {len(unread)} file(s) of a type this data set does '
            f'not read (it reads {", ".join(reads)}): '
            f'{name_list(sorted(unread))}; convert them or move them out of '
            'the domain folder'
        )
    if ignored:
        print_log(
            f'{folder}: passing over {len(ignored)} file(s) / folder(s) '
            f'that are not images or masks: {name_list(sorted(ignored))}',
            logger='current',
            level=logging.WARNING,
        )
    for stem in masks:
        if stem not in images:
            raise FileNotFoundError(
                f'mask {masks[stem]} has no image {stem}.* in {img_folder}'
            )
    cases = []
    for stem in sorted(images, key=natural_key):
        if stem not in masks:
            raise FileNotFoundError(
                f'image {images[stem]} has no segmentation / mask '
                f'{stem}{mask_suffix}.* in {mask_folder}'
            )
        cases.append((stem, images[stem], masks[stem]))
    if not cases:
        raise ValueError(f'no image / mask pairs found in {img_folder}')
    return cases
