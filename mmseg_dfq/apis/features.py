"""Features of a trained model per domain, for the paper's analysis plots."""

from collections import defaultdict
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS

from ..datasets.base import DomainSplitDataset
from ..models.losses.rdwt_loss import channel_covariance, instance_norm


def build_analysis_dataset(
    cfg, data_root: Optional[str] = None, domains: Optional[Sequence] = None
):
    """The config's test dataset over the given (default: all) domains.

    Args:
        cfg (mmengine.Config): The model's config.
        data_root (str, optional): Overrides the dataset's data root.
        domains (Sequence, optional): Domains to load; default every domain
            the data set declares (``metainfo['domains']``).

    Returns:
        BaseSegDataset: Samples carry their ``domain`` meta.
    """
    init_default_scope('mmseg')
    ds_cfg = cfg.test_dataloader.dataset.copy()
    if data_root is not None:
        ds_cfg.data_root = data_root
    if domains is None:
        dataset_cls = DATASETS.get(ds_cfg.type)
        if not (
            isinstance(dataset_cls, type)
            and issubclass(dataset_cls, DomainSplitDataset)
        ):
            raise ValueError(
                f'the analysis needs a domain-split test data set, got '
                f'{ds_cfg.type!r}'
            )
        names = dataset_cls.declared_facts(ds_cfg.get('metainfo'))['domains']
        domains = list(range(1, len(names) + 1))
    ds_cfg.domains = list(domains)
    ds_cfg.unseen_domains = []
    return DATASETS.build(ds_cfg)


@torch.no_grad()
def domain_features(
    model, dataset, level: int = -1, per_domain: int = 16
) -> Dict[str, list]:
    """Backbone (+neck) features of up to ``per_domain`` samples per domain.

    Samples of a domain are taken evenly over its index range, so that
    prostate slices come from every volume.

    Args:
        model (EncoderDecoder): The model, in eval mode.
        dataset (BaseSegDataset): From :func:`build_analysis_dataset`.
        level (int): Which level of ``model.extract_feat``; -1 is the
            deepest, the one DFQHead uses as queries. Default: -1.
        per_domain (int): Samples per domain. Default: 16.

    Returns:
        dict[str, list[Tensor]]: Domain name -> features, each (C, h, w).
    """
    by_domain = defaultdict(list)
    for i in range(len(dataset)):
        by_domain[dataset.get_data_info(i)['domain']].append(i)
    feats = defaultdict(list)
    for domain, idx in by_domain.items():
        pick = np.linspace(0, len(idx) - 1, min(per_domain, len(idx)))
        for j in np.unique(pick.round().astype(int)):
            item = dataset[idx[j]]
            data = model.data_preprocessor(
                dict(
                    inputs=[item['inputs']],
                    data_samples=[item['data_samples']],
                ),
                False,
            )
            out = model.extract_feat(data['inputs'])
            if not -len(out) <= level < len(out):
                raise ValueError(
                    f'feature level {level} does not exist: the model '
                    f'gives {len(out)} levels (0..{len(out) - 1}, or -1 for '
                    'the deepest)'
                )
            feats[domain].append(out[level][0].float().cpu())
    if not feats:
        raise ValueError('the analysis dataset holds no samples')
    return dict(feats)


def mean_abs_covariance(features: Sequence[torch.Tensor]) -> np.ndarray:
    """Mean over samples of |S|, S the instance-normalised covariance.

    Args:
        features (Sequence[Tensor]): Each (C, h, w).

    Returns:
        np.ndarray: (C, C).
    """
    covs = [
        channel_covariance(instance_norm(f[None])).abs()[0] for f in features
    ]
    return torch.stack(covs).mean(0).numpy()


def off_diagonal_mean(matrix: np.ndarray) -> float:
    """Mean of the off-diagonal entries of a square matrix.

    Args:
        matrix (np.ndarray): (C, C), C >= 2.

    Returns:
        float: The mean over the C * (C - 1) entries off the diagonal.
    """
    c = matrix.shape[0]
    return float((matrix.sum() - np.trace(matrix)) / (c * (c - 1)))
