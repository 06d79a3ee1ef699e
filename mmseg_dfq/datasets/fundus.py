"""Fundus optic disc / cup data set split by domain (DoFE layout)."""

import logging
import os.path as osp
from collections import defaultdict
from typing import List, Sequence, Union

from mmengine.logging import print_log
from mmseg.registry import DATASETS

from .base import DomainSpec, DomainSplitDataset


@DATASETS.register_module()
class FundusDGDataset(DomainSplitDataset):
    """Fundus OD/OC data set of the DoFE release, split by domain.

    Reads ``Domain{k}_{split}.list`` from ``data_root``; each line is
    ``"<image path> <mask path>"`` relative to ``data_root``, e.g.
    ``Domain1/train/ROIs/image/x.png Domain1/train/ROIs/mask/x.png``.
    Labels: 0 background, 1 optic-disc rim, 2 optic cup (decoded by
    ``LoadFundusAnnotations``). Every sample carries the metas ``domain``
    (``'Domain{k}'``), ``domain_idx`` (k), ``seen`` and ``case_id`` (the
    image file stem; where two different images of one domain share a stem,
    e.g. ``a/x.png`` and ``b/x.png``, each gets its path relative to
    ``data_root`` without extension instead, and a warning says so, so that
    the metric never merges or double-counts them).

    Args:
        data_root (str): Folder holding the list files and domain folders.
        domains (Sequence[int | str]): Domains to load, as 1..4 or names
            ``'Domain1'``..``'Domain4'``. Default: (1, 2, 3, 4).
        split (str | Sequence[str]): ``'train'``, ``'test'`` or both (e.g.
            ``('train', 'test')`` for every image of a domain).
            Default: 'train'.
        unseen_domains (Sequence[int | str]): Domains whose samples get
            ``seen=False`` (the held-out target). Default: ().
        pipeline (list[dict]): Transforms. Default: ().
        **kwargs: Passed to :class:`mmseg.datasets.BaseSegDataset`.
    """

    METAINFO = dict(
        classes=('background', 'optic_disc_rim', 'optic_cup'),
        palette=[[0, 0, 0], [0, 128, 255], [255, 200, 0]],
        domains=('Domain1', 'Domain2', 'Domain3', 'Domain4'),
        # The optic disc is rim + cup.
        structures=dict(OD=(1, 2), OC=(2,)),
        eval_mode='2d',
        # The authors': largest 8-connected component, holes filled.
        post_process=dict(largest_cc=True, fill_holes=True, connectivity=2),
    )
    SPLITS = ('train', 'test')

    def __init__(
        self,
        data_root: str,
        domains: Sequence[DomainSpec] = (1, 2, 3, 4),
        split: Union[str, Sequence[str]] = 'train',
        unseen_domains: Sequence[DomainSpec] = (),
        pipeline: Sequence[dict] = (),
        **kwargs,
    ) -> None:
        self.splits = [split] if isinstance(split, str) else list(split)
        for s in self.splits:
            if s not in self.SPLITS:
                raise ValueError(f'split must be in {self.SPLITS}, got {s!r}')
        super().__init__(
            data_root=data_root,
            domains=domains,
            unseen_domains=unseen_domains,
            pipeline=pipeline,
            **kwargs,
        )

    def load_data_list(self) -> List[dict]:
        """Read the list files of the configured domains and splits.

        Returns:
            list[dict]: One data info per image with paths and domain metas.
        """
        data_list = []
        for d in self.domain_ids:
            name = self.domain_names[d - 1]
            for split in self.splits:
                list_file = osp.join(self.data_root, f'{name}_{split}.list')
                if not osp.isfile(list_file):
                    raise FileNotFoundError(
                        f'fundus list file not found: {list_file}'
                    )
                with open(list_file) as f:
                    lines = f.read().splitlines()
                n_before = len(data_list)
                for lineno, line in enumerate(lines, 1):
                    if not line.strip():
                        continue
                    parts = line.split()
                    if len(parts) != 2:
                        raise ValueError(
                            f'{list_file}:{lineno}: expected "<image> '
                            f'<mask>", got {line!r}'
                        )
                    img_path, seg_path = (
                        osp.join(self.data_root, p) for p in parts
                    )
                    for path, what in (
                        (img_path, 'image'),
                        (seg_path, 'mask'),
                    ):
                        if not osp.isfile(path):
                            raise FileNotFoundError(
                                f'{list_file}:{lineno}: listed {what} not '
                                f'found: {path}'
                            )
                    data_list.append(
                        self.sample_info(
                            img_path,
                            seg_path,
                            **self.domain_metas(
                                d, osp.splitext(osp.basename(img_path))[0]
                            ),
                        )
                    )
                if len(data_list) == n_before:
                    raise ValueError(f'fundus list file is empty: {list_file}')
        self._disambiguate_case_ids(data_list)
        return data_list

    def _disambiguate_case_ids(self, data_list: List[dict]) -> None:
        """Give images of one domain that share a file stem distinct ids.

        A case is identified by its domain and ``case_id``; two images with
        one stem would otherwise be reported as one case, twice.

        Args:
            data_list (list[dict]): Data infos, changed in place.
        """
        by_id = defaultdict(list)
        for info in data_list:
            by_id[(info['domain'], info['case_id'])].append(info)
        for (domain, stem), infos in by_id.items():
            paths = {info['img_path'] for info in infos}
            if len(paths) < 2:
                # One image (an image listed twice stays one case, which
                # DomainMetric refuses to count twice).
                continue
            for info in infos:
                rel = osp.relpath(info['img_path'], self.data_root)
                info['case_id'] = osp.splitext(rel)[0].replace(osp.sep, '/')
            print_log(
                f'FundusDGDataset: {len(paths)} images of {domain} share the '
                f'file stem {stem!r} ({sorted(paths)}); their case_id is '
                'their path relative to data_root without extension',
                logger='current',
                level=logging.WARNING,
            )
