"""Infinite sampler that mixes source domains with fixed counts per batch."""

import itertools
from typing import Dict, Iterator, List, Sequence, Sized, Union

import torch
from mmengine.dist import get_dist_info, sync_random_seed
from mmseg.registry import DATA_SAMPLERS
from torch.utils.data import Sampler

DomainCounts = Union[Dict[Union[str, int], int], Sequence[int]]


@DATA_SAMPLERS.register_module()
class DomainMixSampler(Sampler):
    """Infinite sampler whose every chunk mixes domains with fixed counts.

    Built for ``IterBasedTrainLoop`` like mmengine's ``InfiniteSampler``.
    Each domain has its own endless stream of shuffled indices (a fresh
    permutation per pass); the sampler yields chunks of ``sum(counts)``
    indices made of ``counts[d]`` indices from the stream of each domain d,
    in the domain order of ``domain_counts``. With the dataloader's
    ``batch_size`` equal to :attr:`chunk_size` every batch therefore holds
    exactly the configured mix (see :func:`check_domain_mix_batch_size`).
    Under distributed training each rank draws its own streams (seed +
    rank), so every rank's batch has the mix and the global batch is
    ``world_size * chunk_size``.

    The domain of a sample is its ``domain`` data info (set by
    ``FundusDGDataset`` / ``ProstateDGDataset``).

    Args:
        dataset (Sized): Data set whose samples carry ``domain`` (and
            ``domain_idx``) in their data info.
        domain_counts (dict | Sequence[int]): Samples per chunk for each
            domain: a dict keyed by domain name (or 1-based ``domain_idx``),
            or a list aligned with ``dataset.domains``. Every domain of the
            data set needs a count (0 leaves it out on purpose).
        seed (int, optional): Base seed; None draws one shared by all ranks.
            Default: None.
        shuffle (bool): Shuffle each domain's indices. Default: True.
    """

    def __init__(
        self,
        dataset: Sized,
        domain_counts: DomainCounts,
        seed: int = None,
        shuffle: bool = True,
    ) -> None:
        rank, world_size = get_dist_info()
        self.rank = rank
        self.world_size = world_size
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = sync_random_seed() if seed is None else int(seed)

        by_domain: Dict[str, List[int]] = {}
        idx_to_name: Dict[int, str] = {}
        for i in range(len(dataset)):
            info = dataset.get_data_info(i)
            if 'domain' not in info:
                raise KeyError(
                    f'{type(dataset).__name__} sample {i} has no "domain" '
                    'data info; DomainMixSampler needs domain-split datasets'
                )
            by_domain.setdefault(info['domain'], []).append(i)
            if 'domain_idx' in info:
                idx_to_name[int(info['domain_idx'])] = info['domain']

        self.domain_counts = self._resolve_counts(
            domain_counts, by_domain, idx_to_name
        )
        self.domain_indices = {
            name: by_domain[name]
            for name, count in self.domain_counts.items()
            if count > 0
        }
        self.chunk_size = sum(self.domain_counts.values())
        self.size = len(dataset)

    def _resolve_counts(
        self,
        domain_counts: DomainCounts,
        by_domain: Dict[str, List[int]],
        idx_to_name: Dict[int, str],
    ) -> Dict[str, int]:
        """Check ``domain_counts`` against the data set's domains.

        Args:
            domain_counts (dict | Sequence[int]): As given by the user.
            by_domain (dict): Sample indices per domain name.
            idx_to_name (dict): Domain name of each 1-based domain index.

        Returns:
            dict[str, int]: Count per domain name, in the given order.
        """
        ds_name = type(self.dataset).__name__
        if isinstance(domain_counts, dict):
            counts = {}
            for key, count in domain_counts.items():
                name = (
                    idx_to_name.get(key, key) if isinstance(key, int) else key
                )
                if name not in by_domain:
                    raise ValueError(
                        f'DomainMixSampler: count given for domain {key!r}, '
                        f'which is not in the {ds_name} (its domains: '
                        f'{sorted(by_domain)})'
                    )
                if name in counts:
                    raise ValueError(
                        f'DomainMixSampler: domain {name!r} counted twice'
                    )
                counts[name] = count
        else:
            names = getattr(self.dataset, 'domains', None)
            if names is None:
                raise TypeError(
                    f'DomainMixSampler: {ds_name} has no `domains` list to '
                    'align a list of counts with; give a dict name -> count'
                )
            names = list(names)
            if len(domain_counts) != len(names):
                raise ValueError(
                    f'DomainMixSampler: {len(domain_counts)} counts for the '
                    f'{len(names)} domains {names} of the {ds_name}'
                )
            counts = dict(zip(names, domain_counts))
            for name in names:
                if name not in by_domain:
                    raise ValueError(
                        f'DomainMixSampler: domain {name!r} of the {ds_name} '
                        'has no samples'
                    )
        for name, count in counts.items():
            if isinstance(count, bool) or not isinstance(count, int):
                raise TypeError(
                    f'DomainMixSampler: count of {name!r} must be an int, '
                    f'got {count!r}'
                )
            if count < 0:
                raise ValueError(
                    f'DomainMixSampler: count of {name!r} is negative: {count}'
                )
        missing = [n for n in by_domain if n not in counts]
        if missing:
            raise ValueError(
                f'DomainMixSampler: no count for domains {missing} of the '
                f'{ds_name}; give 0 to leave a domain out on purpose'
            )
        if sum(counts.values()) <= 0:
            raise ValueError('DomainMixSampler: the counts sum to 0')
        return counts

    def _domain_stream(self, name: str, seed: int) -> Iterator[int]:
        """Endless shuffled passes over the indices of one domain.

        Args:
            name (str): Domain name.
            seed (int): Seed of this domain's generator.

        Returns:
            Iterator[int]: Data set indices.
        """
        indices = self.domain_indices[name]
        g = torch.Generator()
        g.manual_seed(seed)
        while True:
            if self.shuffle:
                order = torch.randperm(len(indices), generator=g).tolist()
                yield from (indices[i] for i in order)
            else:
                yield from indices

    def __iter__(self) -> Iterator[int]:
        """Yield chunks of ``chunk_size`` indices, forever.

        Returns:
            Iterator[int]: Data set indices.
        """
        base = self.seed + self.rank
        streams = {
            # Distinct, rank-dependent seeds for each domain's stream.
            name: self._domain_stream(name, base * 1000003 + j)
            for j, name in enumerate(self.domain_indices)
        }
        while True:
            for name, stream in streams.items():
                yield from itertools.islice(stream, self.domain_counts[name])

    def __len__(self) -> int:
        """Length of the data set (the sampler itself never ends)."""
        return self.size

    def set_epoch(self, epoch: int) -> None:
        """Not used by the iteration-based loop."""


def check_domain_mix_batch_size(dataloader_cfg: dict) -> None:
    """Check that a dataloader config's batch size matches its domain mix.

    Args:
        dataloader_cfg (dict): A ``train_dataloader`` config with
            ``batch_size`` and ``sampler=dict(type='DomainMixSampler',
            domain_counts=...)``.

    Raises:
        ValueError: If ``batch_size`` is not the sum of the counts.
    """
    sampler = dataloader_cfg.get('sampler', {})
    if sampler.get('type') not in ('DomainMixSampler', DomainMixSampler):
        return
    counts = sampler['domain_counts']
    values = counts.values() if isinstance(counts, dict) else counts
    total = sum(values)
    if dataloader_cfg.get('batch_size') != total:
        raise ValueError(
            f'DomainMixSampler counts {counts} sum to {total}, but the '
            f'dataloader batch_size is {dataloader_cfg.get("batch_size")}; '
            'they must be equal for every batch to hold the mix'
        )
