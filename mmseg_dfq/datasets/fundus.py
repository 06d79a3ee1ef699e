"""Fundus optic disc / cup data set split by domain (DoFE layout)."""

import logging
import os.path as osp
from collections import defaultdict
from typing import List, Sequence, Union

from mmengine.logging import print_log
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

DomainSpec = Union[int, str]


def _resolve_domains(
    domains: Sequence[DomainSpec], names: Sequence[str], what: str
) -> List[int]:
    """Turn domain indices (1-based) or names into 1-based indices.

    Args:
        domains (Sequence[int | str]): Domains as 1-based indices or names.
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
            idx = names.index(d) + 1
        else:
            raise ValueError(
                f'{what}: unknown domain {d!r}; use 1..{len(names)} or one '
                f'of {list(names)}'
            )
        if idx in out:
            raise ValueError(f'{what}: domain {d!r} given twice')
        out.append(idx)
    return out


@DATASETS.register_module()
class FundusDGDataset(BaseSegDataset):
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
    )
    DOMAIN_NAMES = ('Domain1', 'Domain2', 'Domain3', 'Domain4')
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
        self.domain_ids = _resolve_domains(
            domains, self.DOMAIN_NAMES, 'domains'
        )
        self.unseen_ids = _resolve_domains(
            unseen_domains, self.DOMAIN_NAMES, 'unseen_domains'
        )
        self.splits = [split] if isinstance(split, str) else list(split)
        for s in self.splits:
            if s not in self.SPLITS:
                raise ValueError(f'split must be in {self.SPLITS}, got {s!r}')
        if not osp.isdir(data_root):
            raise FileNotFoundError(
                f'fundus data_root is not a folder: {data_root}'
            )
        super().__init__(
            data_root=data_root,
            pipeline=list(pipeline),
            reduce_zero_label=False,
            **kwargs,
        )

    @property
    def domains(self) -> List[str]:
        """list[str]: Names of the loaded domains, in the configured order."""
        return [self.DOMAIN_NAMES[i - 1] for i in self.domain_ids]

    def load_data_list(self) -> List[dict]:
        """Read the list files of the configured domains and splits.

        Returns:
            list[dict]: One data info per image with paths and domain metas.
        """
        data_list = []
        for d in self.domain_ids:
            name = self.DOMAIN_NAMES[d - 1]
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
                        dict(
                            img_path=img_path,
                            seg_map_path=seg_path,
                            label_map=self.label_map,
                            reduce_zero_label=False,
                            seg_fields=[],
                            domain=name,
                            domain_idx=d,
                            seen=d not in self.unseen_ids,
                            case_id=osp.splitext(osp.basename(img_path))[0],
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
