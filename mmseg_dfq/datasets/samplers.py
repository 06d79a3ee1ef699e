"""Epoch-sized sampler that mixes source domains with fixed counts."""

import random
from typing import Dict, Iterator, List, Optional, Sequence, Sized, Union

import numpy as np
import torch
from mmengine.dist import get_dist_info, sync_random_seed
from mmseg.registry import DATA_SAMPLERS
from torch.utils.data import Sampler

DomainCounts = Union[Dict[Union[str, int], int], Sequence[int]]


class SeededIndex(int):
    """A data set index that carries the augmentation seed of its draw.

    :class:`DomainMixSampler` yields these; :class:`DrawSeededPrepare`
    seeds the data pipeline from :attr:`draw_seed`. Anything else sees an
    ordinary ``int``.
    """

    draw_seed: int

    def __new__(cls, index: int, draw_seed: int) -> 'SeededIndex':
        obj = super().__new__(cls, index)
        obj.draw_seed = int(draw_seed)
        return obj

    def __reduce__(self):
        # Indices travel to dataloader workers through a pickle.
        return (SeededIndex, (int(self), self.draw_seed))


class DrawSeededPrepare:
    """Run a data set's pipeline with RNGs seeded by the sample's draw.

    Installed as the data set's ``prepare_data`` by
    :class:`DomainMixSampler` (``seed_per_draw=True``). For a
    :class:`SeededIndex`, Python's ``random``, NumPy's global generator and
    torch's CPU generator are seeded from the draw before the pipeline runs
    and put back afterwards, so:

    - a sample's augmentation depends only on (seed, rank, batch, slot):
      not on the number of dataloader workers, on whether workers persist
      across epochs, nor on where a run was interrupted and resumed;
    - loading data never moves the training process's own RNG streams
      (dropout, drop path), which the resume hook saves in checkpoints.

    A plain ``int`` (e.g. a refetch after a pipeline returned None) runs
    the pipeline unchanged.

    Args:
        dataset (BaseDataset): The data set whose ``prepare_data`` to wrap.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __call__(self, idx):
        prepare = type(self.dataset).prepare_data
        seed = getattr(idx, 'draw_seed', None)
        if seed is None:
            return prepare(self.dataset, idx)
        py_state = random.getstate()
        np_state = np.random.get_state()
        torch_state = torch.random.get_rng_state()
        try:
            random.seed(seed)
            np.random.seed(seed)
            # The CPU generator only: torch.manual_seed would also reseed
            # every CUDA device of the training process.
            torch.random.default_generator.manual_seed(seed)
            return prepare(self.dataset, int(idx))
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.random.set_rng_state(torch_state)


def _hash_seed(*entropy: int) -> int:
    """A 32-bit seed mixed from non-negative integers (NumPy SeedSequence)."""
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


@DATA_SAMPLERS.register_module()
class DomainMixSampler(Sampler):
    """Sampler whose every batch mixes domains with fixed counts.

    Each batch of :attr:`chunk_size` = ``sum(counts)`` indices holds
    ``counts[d]`` samples of each domain d, in the domain order of
    ``domain_counts``; with the dataloader's ``batch_size`` equal to
    :attr:`chunk_size` (checked by :func:`check_domain_mix_batch_size` and
    by ``ExactResumeHook`` at the start of training) every batch holds
    exactly the configured mix.

    **Epoch.** As in the DFQ authors' code, an epoch is as long as the
    longest source-domain loader: ``max_d floor(N_d / counts[d])`` batches
    (their per-domain loaders drop the last partial batch), at least one.
    :meth:`__len__` is that number times :attr:`chunk_size`, so
    ``EpochBasedTrainLoop(max_epochs=200)`` runs the authors' iteration
    count for whatever data is on disk (fundus held-out Domain1..4 with
    the release's 50/99/320/320 training images: 53/45/32/32 batches per
    epoch, 10,600/9,000/6,400/6,400 iterations). Under distributed training
    the epoch's batches are shared among the ranks
    (``ceil(batches / world_size)`` each), so an epoch stays one pass of the
    longest domain. ``IterBasedTrainLoop`` works too: mmengine restarts a
    finished sampler with the next epoch.

    **Streams.** Each domain has its own endless stream of shuffled passes
    (a fresh permutation per pass) that runs on across epochs: shorter
    domains are reshuffled whenever they run out. The authors instead
    ``itertools.cycle`` the shorter loaders, which replays the batches of
    their first pass in the same order and with the same augmentation
    for the whole training; this sampler deliberately does not reproduce
    that. Under distributed training each rank draws its own streams.

    **Addressable.** Batch ``g`` (counted from the start of training) is a
    pure function of (seed, rank, g): the permutation of pass p of domain
    d is seeded by (seed, rank, d, p), and every draw carries a seed for
    its augmentation (see :class:`DrawSeededPrepare`). A resumed run
    therefore starts at the saved position with :meth:`skip_batches`
    without loading any skipped data, and sees the same batches, augmented
    the same way, as an uninterrupted run.

    The domain of a sample is its ``domain`` data info (set by
    ``FundusDGDataset`` / ``ProstateDGDataset``).

    Args:
        dataset (Sized): Data set whose samples carry ``domain`` (and
            ``domain_idx``) in their data info.
        domain_counts (dict | Sequence[int]): Samples per batch for each
            domain: a dict keyed by domain name (or 1-based ``domain_idx``),
            or a list aligned with ``dataset.domains``. Every domain of the
            data set needs a count (0 leaves it out on purpose).
        seed (int, optional): Base seed; None draws one shared by all ranks.
            Default: None.
        shuffle (bool): Shuffle each domain's indices. Default: True.
        seed_per_draw (bool): Seed the data pipeline of every sample from
            its draw (installs :class:`DrawSeededPrepare` as the data set's
            ``prepare_data``; data set wrappers without one, such as
            ``ConcatDataset``, are left alone and their augmentation then
            follows the workers' RNG streams). Default: True.
        infinite (bool): Go on past the end of the epoch with the next
            epochs' batches (the same batches, in the same order). For
            ``IterBasedTrainLoop``: mmengine restarts a finished sampler
            there with a 2 s sleep at every epoch end, which small data
            sets (the CPU demo: an epoch of 2 batches) pay every few
            iterations. Default: False.
    """

    def __init__(
        self,
        dataset: Sized,
        domain_counts: DomainCounts,
        seed: Optional[int] = None,
        shuffle: bool = True,
        seed_per_draw: bool = True,
        infinite: bool = False,
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
        longest = max(
            len(self.domain_indices[name]) // self.domain_counts[name]
            for name in self.domain_indices
        )
        # Per rank; at least one batch even when every domain is smaller
        # than its count (its stream then wraps within the batch).
        self.epoch_batches = max(1, -(-longest // world_size))
        self.epoch = 0
        self._skip = 0
        # Cached permutation of the current pass of each domain.
        self._passes: Dict[str, tuple] = {}
        self.seed_per_draw = seed_per_draw
        self.infinite = bool(infinite)
        if seed_per_draw and hasattr(type(dataset), 'prepare_data'):
            dataset.prepare_data = DrawSeededPrepare(dataset)

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

    def _pass_order(self, name: str, domain_pos: int, p: int) -> List[int]:
        """Data set indices of pass ``p`` over one domain.

        Args:
            name (str): Domain name.
            domain_pos (int): Position of the domain in ``domain_indices``.
            p (int): Pass number (0-based, since the start of training).

        Returns:
            list[int]: The domain's indices in the order of that pass.
        """
        cached = self._passes.get(name)
        if cached is not None and cached[0] == p:
            return cached[1]
        indices = self.domain_indices[name]
        if self.shuffle:
            rng = np.random.default_rng(
                np.random.SeedSequence(
                    [self.seed, self.rank, 0, domain_pos, p]
                )
            )
            order = [indices[i] for i in rng.permutation(len(indices))]
        else:
            order = list(indices)
        self._passes[name] = (p, order)
        return order

    def batch_indices(self, g: int) -> List[SeededIndex]:
        """The indices of batch ``g`` of this rank.

        Args:
            g (int): Batch number since the start of training (epoch
                ``g // epoch_batches``, batch ``g % epoch_batches`` in it).

        Returns:
            list[SeededIndex]: :attr:`chunk_size` indices, domain by domain.
        """
        out = []
        for pos, (name, indices) in enumerate(self.domain_indices.items()):
            count = self.domain_counts[name]
            n = len(indices)
            for j in range(count):
                k = g * count + j  # draw number within the domain's stream
                index = self._pass_order(name, pos, k // n)[k % n]
                seed = _hash_seed(self.seed, self.rank, 1, g, len(out))
                out.append(SeededIndex(index, seed))
        return out

    def __iter__(self) -> Iterator[int]:
        """Yield the batches of the current epoch, batch by batch.

        Returns:
            Iterator[int]: Data set indices (:class:`SeededIndex`).
        """
        skip, self._skip = self._skip, 0
        first = self.epoch * self.epoch_batches
        if self.infinite:
            # The same batches as epoch after epoch, without an end.
            b = skip
            while True:
                yield from self.batch_indices(first + b)
                b += 1
        for b in range(skip, self.epoch_batches):
            yield from self.batch_indices(first + b)

    def __len__(self) -> int:
        """Indices per epoch: :attr:`epoch_batches` x :attr:`chunk_size`."""
        return self.epoch_batches * self.chunk_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch that the next :meth:`__iter__` walks.

        Args:
            epoch (int): Epoch number (0-based).
        """
        self.epoch = int(epoch)

    def skip_batches(self, n: int) -> None:
        """Start the next :meth:`__iter__` at batch ``n`` of its epoch.

        Used on resume: the skipped batches are never loaded. Applies to
        one pass only.

        Args:
            n (int): Batches to skip, 0 <= n <= :attr:`epoch_batches`.
        """
        if not 0 <= n <= self.epoch_batches:
            raise ValueError(
                f'DomainMixSampler: cannot skip {n} batches of an epoch of '
                f'{self.epoch_batches}'
            )
        self._skip = int(n)

    def check_batch_size(self, batch_size: int) -> None:
        """Raise if a dataloader's batch size breaks the domain mix.

        Args:
            batch_size (int): The dataloader's ``batch_size``.

        Raises:
            ValueError: If it is not :attr:`chunk_size`.
        """
        if batch_size != self.chunk_size:
            raise ValueError(
                f'DomainMixSampler counts {self.domain_counts} sum to '
                f'{self.chunk_size}, but the dataloader batch_size is '
                f'{batch_size}; they must be equal for every batch to hold '
                'the mix'
            )


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
