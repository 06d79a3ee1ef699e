"""Samplers whose every batch mixes source domains with fixed counts."""

import random
import warnings
from collections.abc import Mapping
from typing import Dict, Iterator, List, Optional, Sequence, Sized, Union

import numpy as np
import torch
from mmengine.dist import get_dist_info, sync_random_seed
from mmseg.registry import DATA_SAMPLERS
from torch.utils.data import Sampler

# Samples per batch of each domain, keyed by domain name or 1-based index
# (a positional list is deprecated).
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


def config_type_name(cfg_type) -> str:
    """Registry name of a config ``type``: a class or function (its name),
    or a string, scoped or not (``'mmseg.X'`` -> ``'X'``)."""
    name = getattr(cfg_type, '__name__', None)
    return name if isinstance(name, str) else str(cfg_type).split('.')[-1]


@DATA_SAMPLERS.register_module()
class DomainMixSampler(Sampler):
    """Sampler whose every batch mixes domains with fixed counts.

    Each batch of :attr:`chunk_size` = ``sum(counts)`` indices holds
    ``domain_counts[d]`` samples of each domain d, domain after domain in
    the data set's domain order (``dataset.domains``), whatever order the
    counts are written in: a dumped config sorts dict keys, and the batches
    of a run must not depend on that.

    **Enforced mix.** A train dataloader pairs it with
    ``batch_sampler=dict(type='DomainMixBatchSampler')``: mmengine's
    ``Runner.build_dataloader`` hands that batch sampler the dataloader's
    ``batch_size``, and it refuses one other than :attr:`chunk_size`. The
    check therefore runs wherever training starts (our tools, mmseg's
    ``tools/train.py``, ``mim train mmseg``, a Runner built in Python).
    Iterating the sampler by itself, as torch's default ``BatchSampler``
    does when no batch sampler is configured, raises until a batch size has
    been checked (:meth:`check_batch_size`): torch would cut the stream
    into batches of any size and silently break the mix.

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
    ``itertools.cycle`` every loader but the longest, which replays the
    batches of their first pass in the same order and with the same
    augmentation for the whole training. ``cycle_replay=True`` reproduces
    that (see the argument). Under distributed training each rank draws
    its own streams.

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
        domain_counts (dict): Samples per batch of each domain, keyed by
            domain name or 1-based ``domain_idx``, e.g. ``{2: 3, 3: 6,
            4: 7}`` (the indices a config's ``domains`` uses) or
            ``{'Domain2': 3, ...}``. Every domain of the data set needs a
            count (0 leaves it out on purpose). A list aligned with
            ``dataset.domains`` still works but warns (``FutureWarning``):
            it silently follows any reordering of ``domains``.
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
        cycle_replay (bool): The DFQ authors' loaders (``train_feed.py``):
            the longest domain (the first of equals, in the data set's
            domain order) is reshuffled every epoch and drops its last
            partial batch; every other domain replays the batches of its
            first pass (floor(N_d / count) batches) over and over, with the
            same samples and the same augmentation (the same draw seeds),
            as ``itertools.cycle`` over a DataLoader does; and at each
            epoch's end, the replayed domains placed before the longest
            one lose a batch (``zip`` has taken it before the longest
            loader ran out). One process only. Default: False.
    """

    def __init__(
        self,
        dataset: Sized,
        domain_counts: DomainCounts,
        seed: Optional[int] = None,
        shuffle: bool = True,
        seed_per_draw: bool = True,
        infinite: bool = False,
        cycle_replay: bool = False,
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
        # The dataloader batch size checked against chunk_size (None: not
        # checked yet, and iterating the flat stream is refused).
        self.batch_size: Optional[int] = None
        # Cached permutation of the current pass of each domain.
        self._passes: Dict[str, tuple] = {}
        self.seed_per_draw = seed_per_draw
        self.infinite = bool(infinite)
        self.cycle_replay = bool(cycle_replay)
        if self.cycle_replay:
            self._check_cycle_replay()
        if seed_per_draw and hasattr(type(dataset), 'prepare_data'):
            dataset.prepare_data = DrawSeededPrepare(dataset)

    def _check_cycle_replay(self) -> None:
        """The authors' loaders: one process, a full batch per domain."""
        if self.world_size > 1:
            raise ValueError(
                "DomainMixSampler: cycle_replay reproduces the authors' "
                f'one-process loaders; got {self.world_size} processes'
            )
        self._pass_batches = {
            name: len(indices) // self.domain_counts[name]
            for name, indices in self.domain_indices.items()
        }
        short = [n for n, b in self._pass_batches.items() if b == 0]
        if short:
            raise ValueError(
                f'DomainMixSampler: cycle_replay needs every domain to fill '
                f'one batch of its count; {short} has fewer samples'
            )
        # The first of the longest, as their strict '<' search finds it.
        names = list(self._pass_batches)
        batches = [self._pass_batches[n] for n in names]
        self._longest_pos = batches.index(max(batches))
        if not self.shuffle:
            raise ValueError(
                'DomainMixSampler: cycle_replay reproduces shuffled loaders '
                '(shuffle=True)'
            )

    def _domain_order(self, by_domain: Dict[str, List[int]]) -> List[str]:
        """Domain names in the data set's order (``dataset.domains``)."""
        names = getattr(self.dataset, 'domains', None)
        if names is None:
            return list(by_domain)  # order of first appearance
        names = list(names)
        return names + [n for n in by_domain if n not in names]

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
            dict[str, int]: Count per domain name, in the data set's domain
            order.
        """
        ds_name = type(self.dataset).__name__
        order = self._domain_order(by_domain)
        known = {
            idx: name for idx, name in idx_to_name.items() if name in order
        }
        if isinstance(domain_counts, Mapping):
            given = {}
            for key, count in domain_counts.items():
                if isinstance(key, bool) or not isinstance(key, (int, str)):
                    raise TypeError(
                        f'DomainMixSampler: domain_counts keys are domain '
                        f'names or 1-based indices, got {key!r}'
                    )
                if (
                    isinstance(key, str)
                    and key not in by_domain
                    and key.isdigit()
                ):
                    # '2' from --cfg-options ...domain_counts.2=5
                    key = int(key)
                name = (
                    idx_to_name.get(key, key) if isinstance(key, int) else key
                )
                if name not in by_domain:
                    raise ValueError(
                        f'DomainMixSampler: count given for domain {key!r}, '
                        f'which is not in the {ds_name} (its domains: '
                        f'{order}, by index {known})'
                    )
                if name in given:
                    raise ValueError(
                        f'DomainMixSampler: domain {name!r} counted twice '
                        f'in domain_counts {dict(domain_counts)} (with '
                        '--cfg-options, counts are merged into the '
                        "config's: give train_dataloader.sampler."
                        'domain_counts._delete_=True to replace them)'
                    )
                given[name] = count
        elif isinstance(domain_counts, Sequence) and not isinstance(
            domain_counts, str
        ):
            given = self._counts_from_list(list(domain_counts), by_domain)
        else:
            raise TypeError(
                'DomainMixSampler: domain_counts must be a dict domain -> '
                f'count, e.g. {{2: 3, 3: 6, 4: 7}}; got {domain_counts!r}'
            )
        for name, count in given.items():
            if isinstance(count, bool) or not isinstance(count, int):
                raise TypeError(
                    f'DomainMixSampler: count of {name!r} must be an int, '
                    f'got {count!r}'
                )
            if count < 0:
                raise ValueError(
                    f'DomainMixSampler: count of {name!r} is negative: {count}'
                )
        missing = [n for n in order if n in by_domain and n not in given]
        if missing:
            raise ValueError(
                f'DomainMixSampler: no count for domains {missing} of the '
                f'{ds_name}; give 0 to leave a domain out on purpose'
            )
        if sum(given.values()) <= 0:
            raise ValueError('DomainMixSampler: the counts sum to 0')
        return {name: given[name] for name in order if name in given}

    def _counts_from_list(
        self, counts: List[int], by_domain: Dict[str, List[int]]
    ) -> Dict[str, int]:
        """Counts given by position (deprecated): align them, and warn."""
        ds_name = type(self.dataset).__name__
        names = getattr(self.dataset, 'domains', None)
        if names is None:
            raise TypeError(
                f'DomainMixSampler: {ds_name} has no `domains` list to '
                'align a list of counts with; give a dict domain -> count'
            )
        names = list(names)
        if len(counts) != len(names):
            raise ValueError(
                f'DomainMixSampler: {len(counts)} counts for the '
                f'{len(names)} domains {names} of the {ds_name}'
            )
        for name in names:
            if name not in by_domain:
                raise ValueError(
                    f'DomainMixSampler: domain {name!r} of the {ds_name} '
                    'has no samples'
                )
        keys = [self._index_of(name, by_domain) for name in names]
        suggestion = (
            '{'
            + ', '.join(f'{k!r}: {c!r}' for k, c in zip(keys, counts))
            + '}'
        )
        warnings.warn(
            f'DomainMixSampler: domain_counts={counts} is matched to the '
            f'{ds_name} domains {names} by position, which silently follows '
            f'any reordering of `domains`; write domain_counts={suggestion} '
            '(keyed by domain index or name) instead. Lists will stop '
            'working in a future release.',
            FutureWarning,
            stacklevel=4,
        )
        return dict(zip(names, counts))

    def _index_of(self, name: str, by_domain: Dict[str, List[int]]):
        """The 1-based ``domain_idx`` of a domain (its name if unknown)."""
        info = self.dataset.get_data_info(by_domain[name][0])
        return int(info['domain_idx']) if 'domain_idx' in info else name

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
        # One 32-bit seed per draw of the batch, all from one SeedSequence
        # (the main process computes them for every batch: one call, not
        # one per sample).
        seeds = np.random.SeedSequence(
            [self.seed, self.rank, 1, g]
        ).generate_state(self.chunk_size)
        if self.cycle_replay:
            return self._cycled_batch(g, seeds)
        out = []
        for pos, (name, indices) in enumerate(self.domain_indices.items()):
            count = self.domain_counts[name]
            n = len(indices)
            for j in range(count):
                k = g * count + j  # draw number within the domain's stream
                index = self._pass_order(name, pos, k // n)[k % n]
                out.append(SeededIndex(index, int(seeds[len(out)])))
        return out

    def _cycled_batch(self, g: int, seeds) -> List[SeededIndex]:
        """Batch ``g`` as the authors' cycled loaders give it."""
        epoch_length = self._pass_batches[
            list(self.domain_indices)[self._longest_pos]
        ]
        out = []
        for pos, name in enumerate(self.domain_indices):
            count = self.domain_counts[name]
            if pos == self._longest_pos:
                # A new shuffled pass every epoch, last partial batch
                # dropped; fresh augmentation.
                epoch, b = divmod(g, epoch_length)
                order = self._pass_order(name, pos, epoch)
                for j in range(count):
                    out.append(
                        SeededIndex(order[b * count + j], int(seeds[len(out)]))
                    )
                continue
            # Batches taken so far from this cycle, one lost per finished
            # epoch if it comes before the longest loader in zip's order.
            taken = g + (g // epoch_length if pos < self._longest_pos else 0)
            i = taken % self._pass_batches[name]
            order = self._pass_order(name, pos, 0)
            # The first pass's draw seeds: the same augmentation each replay.
            frozen = np.random.SeedSequence(
                [self.seed, self.rank, 3, pos, i]
            ).generate_state(count)
            for j in range(count):
                out.append(SeededIndex(order[i * count + j], int(frozen[j])))
        return out

    def batches(self) -> Iterator[List[SeededIndex]]:
        """Yield the batches of the current epoch (what a step trains on).

        Starts at the batch set by :meth:`skip_batches` (once), and with
        ``infinite`` runs on into the next epochs' batches.

        Returns:
            Iterator[list[SeededIndex]]: Lists of :attr:`chunk_size`
            indices.
        """
        skip, self._skip = self._skip, 0
        first = self.epoch * self.epoch_batches
        b = skip
        while self.infinite or b < self.epoch_batches:
            yield self.batch_indices(first + b)
            b += 1

    def __iter__(self) -> Iterator[int]:
        """Yield the indices of :meth:`batches`, one after the other.

        Raises:
            RuntimeError: If no batch size has been checked against the
                counts (no ``DomainMixBatchSampler``, no
                :meth:`check_batch_size`).

        Returns:
            Iterator[int]: Data set indices (:class:`SeededIndex`).
        """
        if self.batch_size is None:
            raise RuntimeError(
                f'DomainMixSampler (counts {self.domain_counts}, batches of '
                f'{self.chunk_size}) is iterated without a batch size '
                'checked against its counts, so batches need not hold the '
                "mix: give the dataloader batch_sampler=dict(type='"
                "DomainMixBatchSampler') (mmengine passes it batch_size, "
                'which it checks), or call check_batch_size(batch_size) '
                'first'
            )
        return (index for batch in self.batches() for index in batch)

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

        On success the sampler may be iterated index by index.

        Args:
            batch_size (int): The dataloader's ``batch_size``.

        Raises:
            ValueError: If it is not :attr:`chunk_size`.
        """
        if isinstance(batch_size, bool) or batch_size != self.chunk_size:
            raise ValueError(
                f'DomainMixSampler counts {self.domain_counts} sum to '
                f'{self.chunk_size}, but the dataloader batch_size is '
                f'{batch_size}; they must be equal for every batch to hold '
                'the mix (set train_dataloader.batch_size='
                f'{self.chunk_size}, or change the counts)'
            )
        self.batch_size = int(batch_size)


@DATA_SAMPLERS.register_module()
class DomainMixBatchSampler(Sampler):
    """Batch sampler that makes every batch one :class:`DomainMixSampler` mix.

    mmengine's ``Runner.build_dataloader`` builds a configured
    ``batch_sampler`` with the dataloader's ``sampler`` and ``batch_size``;
    this one refuses a ``batch_size`` other than the sum of the sampler's
    counts, so a wrong batch size stops the run when its dataloader is
    built, under whatever launcher started it. Its batches are the
    sampler's :meth:`DomainMixSampler.batches` (so ``set_epoch``,
    ``skip_batches`` and ``infinite`` work as on the sampler; mmengine's
    ``DistSamplerSeedHook`` and loops find the sampler as
    ``batch_sampler.sampler``). Usage::

        train_dataloader = dict(
            batch_size=16,
            sampler=dict(type='DomainMixSampler',
                         domain_counts={2: 3, 3: 6, 4: 7}),
            batch_sampler=dict(type='DomainMixBatchSampler'),
            dataset=...)

    Args:
        sampler (DomainMixSampler): The dataloader's sampler.
        batch_size (int): The dataloader's ``batch_size``.

    Raises:
        TypeError: If ``sampler`` is not a :class:`DomainMixSampler`.
        ValueError: If ``batch_size`` is not the sum of its counts.
    """

    def __init__(self, sampler: DomainMixSampler, batch_size: int) -> None:
        if not isinstance(sampler, DomainMixSampler):
            raise TypeError(
                'DomainMixBatchSampler composes batches of a '
                "DomainMixSampler: set the dataloader's sampler=dict(type="
                "'DomainMixSampler', domain_counts=...), got "
                f'{type(sampler).__name__}'
            )
        sampler.check_batch_size(batch_size)
        self.sampler = sampler
        self.batch_size = int(batch_size)

    def __iter__(self) -> Iterator[List[int]]:
        """Yield the sampler's batches of the current epoch."""
        return self.sampler.batches()

    def __len__(self) -> int:
        """Batches per epoch of this rank."""
        return self.sampler.epoch_batches


@DATA_SAMPLERS.register_module()
class DomainBatchSampler(Sampler):
    """Batches of consecutive samples that never span two domains or volumes.

    For evaluation where a batch's composition matters (BatchNorm on each
    test batch's own statistics, ``BatchStatsBNHook``, as the DFQ authors'
    test scripts do): their scripts test one domain at a time, so a batch
    never mixes domains. Here the sampler's indices are cut into batches of
    ``batch_size`` that also end wherever the domain changes, and for
    volume slices (samples with a ``slice_index``) wherever the volume
    changes; the last batch of each run may be shorter. Usage::

        test_dataloader = dict(
            batch_size=8,
            batch_sampler=dict(type='DomainBatchSampler'),
            sampler=dict(type='DefaultSampler', shuffle=False),
            dataset=...)

    Args:
        sampler (Sampler): The dataloader's sampler; its ``dataset`` gives
            each index's ``domain`` (and ``case_id`` / ``slice_index``).
        batch_size (int): The most samples in a batch.
    """

    def __init__(self, sampler: Sampler, batch_size: int) -> None:
        dataset = getattr(sampler, 'dataset', None)
        if dataset is None or not hasattr(dataset, 'get_data_info'):
            raise TypeError(
                'DomainBatchSampler needs a sampler with the dataset '
                f"(mmengine's DefaultSampler), got {type(sampler).__name__}"
            )
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(
                'DomainBatchSampler: batch_size must be >= 1, got '
                f'{batch_size}'
            )
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self._groups = []
        for i in range(len(dataset)):
            info = dataset.get_data_info(i)
            if 'domain' not in info:
                raise KeyError(
                    f'DomainBatchSampler: sample {i} of '
                    f'{type(dataset).__name__} has no domain'
                )
            volume = info.get('case_id') if 'slice_index' in info else None
            self._groups.append((info['domain'], volume))

    def __iter__(self) -> Iterator[List[int]]:
        """Yield the batches of the sampler's current order."""
        batch, group = [], None
        for index in self.sampler:
            key = self._groups[index]
            if batch and (key != group or len(batch) == self.batch_size):
                yield batch
                batch = []
            batch.append(index)
            group = key
        if batch:
            yield batch

    def __len__(self) -> int:
        """Batches of the sampler's current order."""
        return sum(1 for _ in self)


def _untrained_count_hint(counts, dataloader_cfg: dict) -> str:
    """A hint when the counts name domains the data set does not train on.

    The usual cause: a split config whose ``domain_counts`` dict was merged
    key by key into its base's, so the base's held-out domain stayed.
    """
    if not isinstance(counts, Mapping):
        return ''
    # --cfg-options ...domain_counts.2=5 adds the string key '2' next to 2.
    keys = [
        int(k) if isinstance(k, str) and k.isdigit() else k for k in counts
    ]
    twice = sorted({k for k in keys if keys.count(k) > 1}, key=str)
    if twice:
        return (
            f'. Domain(s) {twice} are counted twice (with --cfg-options, '
            "counts are merged into the config's: give "
            'train_dataloader.sampler.domain_counts._delete_=True to replace '
            'them)'
        )
    domains = (dataloader_cfg.get('dataset') or {}).get('domains')
    if not domains:
        return ''
    same_kind = all(isinstance(k, int) for k in keys + list(domains)) or all(
        isinstance(k, str) for k in keys + list(domains)
    )
    extra = [k for k in keys if k not in domains]
    if not same_kind or not extra:
        return ''
    return (
        f'. The counts name {extra}, which the data set does not train on '
        f'(domains={list(domains)}): a dict of counts merges into the base '
        "config's key by key; replace it with "
        'domain_counts=dict(_delete_=True, ...)'
    )


def check_domain_mix_batch_size(dataloader_cfg: dict) -> None:
    """Check a dataloader config's domain mix before anything is built.

    The same checks as :class:`DomainMixBatchSampler` at build time, on the
    config alone, so a tool can stop before it trains (or, in a sweep,
    before any run of the sweep trains).

    Args:
        dataloader_cfg (dict): A ``train_dataloader`` config with
            ``batch_size``, ``sampler=dict(type='DomainMixSampler',
            domain_counts=...)`` and ``batch_sampler=dict(type=
            'DomainMixBatchSampler')``.

    Raises:
        ValueError: If the batch sampler is missing or ``batch_size`` is
            not the sum of the counts.
    """
    sampler = dataloader_cfg.get('sampler') or {}
    if config_type_name(sampler.get('type')) != 'DomainMixSampler':
        return
    batch_sampler = dataloader_cfg.get('batch_sampler') or {}
    if config_type_name(batch_sampler.get('type')) != 'DomainMixBatchSampler':
        raise ValueError(
            'a DomainMixSampler train_dataloader needs '
            "batch_sampler=dict(type='DomainMixBatchSampler'), which checks "
            'that batch_size is the sum of the counts; got batch_sampler='
            f'{dataloader_cfg.get("batch_sampler")!r}'
        )
    counts = sampler.get('domain_counts')
    values = counts.values() if isinstance(counts, Mapping) else counts
    total = sum(values)
    if dataloader_cfg.get('batch_size') != total:
        raise ValueError(
            f'DomainMixSampler counts {counts} sum to {total}, but the '
            f'dataloader batch_size is {dataloader_cfg.get("batch_size")}; '
            'they must be equal for every batch to hold the mix'
            + _untrained_count_hint(counts, dataloader_cfg)
        )
