import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from mmengine.runner import Runner

from mmseg_dfq.datasets import (
    DomainMixBatchSampler,
    DomainMixSampler,
    FundusDGDataset,
    check_domain_mix_batch_size,
)
from mmseg_dfq.datasets import samplers as samplers_mod

from ..helpers import load_base_config


class _ToyDataset:
    """Samples carrying only domain metas: sizes 5, 11 and 30."""

    def __init__(self, sizes=(('A', 5), ('B', 11), ('C', 30))):
        self.domains = [name for name, _ in sizes]
        self.infos = [
            dict(domain=name, domain_idx=j + 1)
            for j, (name, n) in enumerate(sizes)
            for _ in range(n)
        ]

    def __len__(self):
        return len(self.infos)

    def get_data_info(self, i):
        return dict(self.infos[i])


# The authors' fundus mix of a 16-sample batch, keyed by domain index.
MIX = {1: 3, 2: 6, 3: 7}


def _chunks(sampler, n_chunks):
    """The first ``n_chunks`` batches, epoch after epoch, cut from the
    flat index stream (what torch's BatchSampler would do)."""
    size = sampler.chunk_size
    sampler.check_batch_size(size)
    out = []
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == len(sampler)
        out += [drawn[i : i + size] for i in range(0, len(drawn), size)]
        if len(out) >= n_chunks:
            return out[:n_chunks]


def test_every_chunk_holds_the_mix():
    ds = _ToyDataset()
    sampler = DomainMixSampler(ds, domain_counts=MIX, seed=1)
    assert sampler.chunk_size == 16
    chunks = _chunks(sampler, 25)
    for chunk in chunks:
        counts = Counter(ds.infos[i]['domain'] for i in chunk)
        assert counts == {'A': 3, 'B': 6, 'C': 7}
    # Each domain is walked in full shuffled passes: after 25 chunks domain
    # A (5 samples, 3 a chunk) has had 15 full passes.
    drawn_a = [i for c in chunks for i in c if ds.infos[i]['domain'] == 'A']
    for p in range(15):
        assert sorted(drawn_a[5 * p : 5 * p + 5]) == list(range(5))
    assert drawn_a[:5] != drawn_a[5:10]  # reshuffled between passes
    # Same seed, same stream.
    again = DomainMixSampler(ds, domain_counts=MIX, seed=1)
    assert _chunks(again, 25) == chunks


def test_dict_counts_and_zero():
    ds = _ToyDataset()
    sampler = DomainMixSampler(
        ds, domain_counts={'C': 2, 2: 1, 'A': 0}, seed=0
    )
    for chunk in _chunks(sampler, 10):
        assert Counter(ds.infos[i]['domain'] for i in chunk) == {
            'C': 2,
            'B': 1,
        }


def test_two_ranks_draw_different_streams(monkeypatch):
    ds = _ToyDataset()
    streams = []
    for rank in (0, 1):
        monkeypatch.setattr(
            samplers_mod, 'get_dist_info', lambda r=rank: (r, 2)
        )
        sampler = DomainMixSampler(ds, domain_counts=MIX, seed=7)
        assert sampler.rank == rank
        chunks = _chunks(sampler, 8)
        for chunk in chunks:
            counts = Counter(ds.infos[i]['domain'] for i in chunk)
            assert counts == {'A': 3, 'B': 6, 'C': 7}
        streams.append(chunks)
    assert streams[0] != streams[1]


def test_bad_counts_raise():
    ds = _ToyDataset()
    with pytest.raises(ValueError, match="'D'.*not in"):
        DomainMixSampler(ds, domain_counts={'A': 1, 'B': 1, 'C': 1, 'D': 1})
    with pytest.raises(ValueError, match='no count'):
        DomainMixSampler(ds, domain_counts={'A': 1, 'B': 1})
    with pytest.raises(ValueError, match='domain 4, which is not in'):
        DomainMixSampler(ds, domain_counts={1: 1, 2: 1, 3: 1, 4: 1})
    with pytest.raises(ValueError, match="'A' counted twice.*_delete_"):
        DomainMixSampler(ds, domain_counts={1: 1, 'A': 1, 2: 1, 3: 1})
    with pytest.raises(ValueError, match='sum to 0'):
        DomainMixSampler(ds, domain_counts={1: 0, 2: 0, 3: 0})
    with pytest.raises(ValueError, match='negative'):
        DomainMixSampler(ds, domain_counts={1: 1, 2: -1, 3: 2})
    with pytest.raises(TypeError, match="count of 'B' must be an int"):
        DomainMixSampler(ds, domain_counts={1: 1, 2: 1.5, 3: 2})
    with pytest.raises(TypeError, match='keys are domain names or 1-based'):
        DomainMixSampler(ds, domain_counts={1: 1, 2: 1, (3,): 2})
    with pytest.raises(TypeError, match='must be a dict'):
        DomainMixSampler(ds, domain_counts=5)
    with pytest.raises(ValueError, match='3 domains'):
        DomainMixSampler(ds, domain_counts=[1, 2])
    empty = _ToyDataset()
    empty.domains = ['A', 'B', 'C', 'E']
    with pytest.raises(ValueError, match="'E'.*no samples"):
        DomainMixSampler(empty, domain_counts=[1, 1, 1, 1])


def test_counts_keyed_by_domain_not_by_position():
    ds = _ToyDataset()
    by_index = DomainMixSampler(ds, domain_counts=MIX, seed=4)
    # Batches follow the data set's domain order, not the dict's (a dumped
    # config sorts keys): names, indices and any key order give one stream.
    for counts in (
        {'C': 7, 'A': 3, 'B': 6},
        {3: 7, 'B': 6, 1: 3},
        # Indices as --cfg-options gives them (...domain_counts.1=3).
        {'1': 3, '2': 6, '3': 7},
    ):
        other = DomainMixSampler(ds, domain_counts=counts, seed=4)
        assert other.domain_counts == {'A': 3, 'B': 6, 'C': 7}
        assert _chunks(other, 6) == _chunks(by_index, 6)
    # The deprecated positional list still works, warns, and says which dict
    # to write instead.
    with pytest.warns(
        FutureWarning, match=r'domain_counts=\{1: 3, 2: 6, 3: 7\}'
    ):
        listed = DomainMixSampler(ds, domain_counts=[3, 6, 7], seed=4)
    assert _chunks(listed, 6) == _chunks(by_index, 6)


def test_batch_size_check():
    cfg = load_base_config('fundus_dg')
    check_domain_mix_batch_size(cfg.train_dataloader)
    check_domain_mix_batch_size(
        load_base_config('prostate_dg').train_dataloader
    )
    bad = dict(cfg.train_dataloader, batch_size=8)
    with pytest.raises(ValueError, match='sum to 16'):
        check_domain_mix_batch_size(bad)
    unbatched = dict(cfg.train_dataloader)
    del unbatched['batch_sampler']
    with pytest.raises(ValueError, match='needs batch_sampler'):
        check_domain_mix_batch_size(unbatched)
    # A torch BatchSampler cuts batches of any size: refused as well.
    torch_batches = dict(
        cfg.train_dataloader, batch_sampler=dict(type='BatchSampler')
    )
    with pytest.raises(ValueError, match='needs batch_sampler'):
        check_domain_mix_batch_size(torch_batches)


def test_batch_sampler_enforces_the_mix():
    ds = _ToyDataset()
    sampler = DomainMixSampler(ds, domain_counts=MIX, seed=2)
    with pytest.raises(ValueError, match='sum to 16.*batch_size is 15'):
        DomainMixBatchSampler(sampler, batch_size=15)
    with pytest.raises(TypeError, match='sampler=dict.*DomainMixSampler'):
        DomainMixBatchSampler(range(16), batch_size=16)
    batches = DomainMixBatchSampler(sampler, batch_size=16)
    assert len(batches) == sampler.epoch_batches
    reference = DomainMixSampler(ds, domain_counts=MIX, seed=2)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        reference.set_epoch(epoch)
        drawn = list(batches)
        assert len(drawn) == len(batches)
        assert drawn == list(reference.batches())
        for batch in drawn:
            assert Counter(ds.infos[i]['domain'] for i in batch) == {
                'A': 3,
                'B': 6,
                'C': 7,
            }
    # Resume: the batch sampler starts where the sampler was told to.
    sampler.set_epoch(1)
    sampler.skip_batches(1)
    first = 1 * sampler.epoch_batches + 1
    assert next(iter(batches)) == reference.batch_indices(first)


def test_flat_iteration_needs_a_checked_batch_size():
    # torch's default BatchSampler iterates the sampler index by index and
    # cuts batches of its own size: refused until a batch size is checked.
    sampler = DomainMixSampler(_ToyDataset(), domain_counts=MIX, seed=0)
    with pytest.raises(RuntimeError, match='DomainMixBatchSampler'):
        iter(sampler)
    with pytest.raises(ValueError):
        sampler.check_batch_size(8)
    with pytest.raises(RuntimeError, match='DomainMixBatchSampler'):
        list(sampler)
    sampler.check_batch_size(16)
    assert len(list(sampler)) == len(sampler)


def test_runner_dataloader_batches_hold_the_mix(fundus_root):
    cfg = load_base_config('fundus_dg')
    loader_cfg = cfg.train_dataloader.copy()
    loader_cfg.update(num_workers=0, persistent_workers=False)
    loader_cfg.dataset = dict(
        loader_cfg.dataset, data_root=fundus_root, pipeline=[]
    )
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    assert isinstance(loader.batch_sampler, DomainMixBatchSampler)
    assert isinstance(loader.batch_sampler.sampler, DomainMixSampler)
    # 6 training images per domain: floor(6 / 3) = 2 batches is the
    # longest loader.
    assert len(loader) == 2
    for batch in itertools.islice(loader, 3):
        domains = Counter(batch['domain'])
        assert domains == {'Domain2': 3, 'Domain3': 6, 'Domain4': 7}
    ds = FundusDGDataset(data_root=fundus_root, domains=[2, 3, 4])
    assert len(DomainMixSampler(ds, {2: 3, 3: 6, 4: 7}, seed=0)) == 2 * 16
    # A wrong batch size stops the build of the dataloader...
    with pytest.raises(ValueError, match='sum to 16.*batch_size is 8'):
        Runner.build_dataloader(dict(loader_cfg, batch_size=8), seed=0)
    # ...and without the batch sampler, its first batch.
    unbatched = dict(loader_cfg)
    del unbatched['batch_sampler']
    loader = Runner.build_dataloader(unbatched, seed=0)
    with pytest.raises(RuntimeError, match='DomainMixBatchSampler'):
        next(iter(loader))


@pytest.mark.parametrize(
    'sizes, counts, iters',
    [
        # The release's fundus training sets (Domain1..4: 50/99/320/320
        # images) with the authors' counts; held-out Domain1..4 in turn.
        ((99, 320, 320), [3, 6, 7], 10600),
        ((50, 320, 320), [2, 7, 7], 9000),
        ((50, 99, 320), [2, 4, 10], 6400),
        ((50, 99, 320), [2, 4, 10], 6400),
    ],
)
def test_epoch_is_the_longest_source_loader(sizes, counts, iters):
    ds = _ToyDataset(tuple(zip('ABC', sizes)))
    sampler = DomainMixSampler(
        ds, domain_counts=dict(zip('ABC', counts)), seed=0
    )
    # Independent statement: max_d floor(N_d / b_d) batches per epoch.
    batches = max(n // b for n, b in zip(sizes, counts))
    assert sampler.epoch_batches == batches
    assert len(sampler) == batches * sum(counts)
    assert 200 * batches == iters


def test_epoch_length_edge_cases(monkeypatch):
    # Every domain smaller than its count: still one batch per epoch.
    ds = _ToyDataset((('A', 2), ('B', 3)))
    sampler = DomainMixSampler(ds, domain_counts={'A': 4, 'B': 5}, seed=0)
    assert sampler.epoch_batches == 1
    (chunk,) = _chunks(sampler, 1)
    assert Counter(ds.infos[i]['domain'] for i in chunk) == {'A': 4, 'B': 5}
    # Two ranks share an epoch: ceil(53 / 2) = 27 batches each.
    monkeypatch.setattr(samplers_mod, 'get_dist_info', lambda: (1, 2))
    ds = _ToyDataset((('A', 99), ('B', 320), ('C', 320)))
    assert DomainMixSampler(ds, MIX, seed=0).epoch_batches == 27


def test_streams_are_addressable_and_skip_loads_nothing():
    ds = _ToyDataset()
    sampler = DomainMixSampler(ds, domain_counts=MIX, seed=3)
    full = _chunks(sampler, 3 * sampler.epoch_batches)
    # Batch g is a function of g: computed directly, or by iterating.
    assert [sampler.batch_indices(g) for g in range(len(full))] == full
    # Starting epoch 2 at its batch 1 yields the rest of that epoch only.
    fresh = DomainMixSampler(ds, domain_counts=MIX, seed=3)
    fresh.check_batch_size(16)
    fresh.set_epoch(2)
    fresh.skip_batches(1)
    rest = list(fresh)
    first = 2 * fresh.epoch_batches + 1
    assert rest == [
        i for c in full[first : 3 * fresh.epoch_batches] for i in c
    ]
    # The skip applies once.
    assert len(list(fresh)) == len(fresh)
    with pytest.raises(ValueError, match='cannot skip'):
        fresh.skip_batches(fresh.epoch_batches + 1)


def test_infinite_sampler_yields_the_epochs_in_a_row():
    ds = _ToyDataset()
    finite = DomainMixSampler(ds, domain_counts=MIX, seed=3)
    full = _chunks(finite, 3 * finite.epoch_batches)
    flat = [i for c in full for i in c]
    endless = DomainMixSampler(ds, domain_counts=MIX, seed=3, infinite=True)
    endless.check_batch_size(16)
    assert list(itertools.islice(endless, len(flat))) == flat
    # A resumed iteration-based run: position 5 = epoch 5 // E, batch 5 % E.
    resumed = DomainMixSampler(ds, domain_counts=MIX, seed=3, infinite=True)
    resumed.check_batch_size(16)
    epoch, skip = divmod(5, resumed.epoch_batches)
    resumed.set_epoch(epoch)
    resumed.skip_batches(skip)
    size = resumed.chunk_size
    assert (
        list(itertools.islice(resumed, len(flat) - 5 * size))
        == flat[5 * size :]
    )


def test_check_batch_size_at_build_time():
    sampler = DomainMixSampler(_ToyDataset(), domain_counts=MIX)
    with pytest.raises(ValueError, match='sum to 16.*batch_size is 8'):
        sampler.check_batch_size(8)
    sampler.check_batch_size(16)
    assert sampler.batch_size == 16


class _RandomDataset(_ToyDataset):
    """prepare_data returns random numbers drawn from the global RNGs."""

    def prepare_data(self, idx):
        return dict(
            idx=int(idx),
            np=float(np.random.rand()),
            torch=float(torch.rand(1)),
        )

    def __getitem__(self, idx):
        return self.prepare_data(idx)


def test_per_draw_seeds_leave_the_global_rng_alone():
    ds = _RandomDataset()
    sampler = DomainMixSampler(ds, domain_counts=MIX, seed=0)
    sampler.check_batch_size(16)
    np.random.seed(5)
    torch.manual_seed(5)
    drawn = [ds[i] for i in list(sampler)]
    # The global streams did not move.
    expected_np = np.random.RandomState(5).rand()
    assert np.random.rand() == expected_np
    assert float(torch.rand(1)) == float(
        torch.rand(1, generator=torch.Generator().manual_seed(5))
    )
    # Same draw -> same augmentation numbers, whatever the global state.
    np.random.seed(9)
    assert [ds[i] for i in list(sampler)] == drawn
    # Different draws of the same sample get different numbers.
    by_sample = {}
    for d in drawn:
        by_sample.setdefault(d['idx'], set()).add(d['np'])
    assert any(len(v) > 1 for v in by_sample.values())
    # Plain ints bypass the seeding.
    a, b = ds[0]['np'], ds[0]['np']
    assert a != b


def test_same_batches_with_and_without_workers(fundus_root):
    # The pipeline is random (scale, crop, flip); with per-draw seeds the
    # batches do not depend on the number of workers (checked to fail
    # with seed_per_draw=False).
    cfg = load_base_config('fundus_dg')
    batches = []
    for workers in (0, 2):
        loader_cfg = cfg.train_dataloader.copy()
        loader_cfg.update(num_workers=workers, persistent_workers=False)
        loader_cfg.dataset = dict(loader_cfg.dataset, data_root=fundus_root)
        loader = Runner.build_dataloader(loader_cfg, seed=0)
        batches.append([b['inputs'] for b in loader])
    assert len(batches[0]) == 2
    for a, b in zip(*batches):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_counts_merged_into_a_base_are_named():
    # A split config (domain 2 held out) whose counts dict merged key by
    # key into its base's (domain 1 held out): domain 2 stayed in them.
    loader = dict(
        batch_size=16,
        sampler=dict(
            type='DomainMixSampler', domain_counts={2: 3, 3: 7, 4: 7, 1: 2}
        ),
        batch_sampler=dict(type='DomainMixBatchSampler'),
        dataset=dict(domains=[1, 3, 4]),
    )
    with pytest.raises(ValueError, match=r'name \[2\].*_delete_=True'):
        check_domain_mix_batch_size(loader)
    # Counts of the trained domains that are simply wrong: no such hint.
    loader['sampler']['domain_counts'] = {1: 2, 3: 7, 4: 8}
    with pytest.raises(ValueError, match='sum to 17') as err:
        check_domain_mix_batch_size(loader)
    assert '_delete_' not in str(err.value)


@pytest.mark.parametrize('kind', ['fundus', 'prostate'])
def test_domain_batches_never_span_two_domains_or_volumes(
    kind, fundus_root, prostate_root
):
    from mmengine.dataset import DefaultSampler

    from mmseg_dfq.datasets import (
        DomainBatchSampler,
        FundusDGDataset,
        ProstateDGDataset,
    )

    if kind == 'fundus':
        ds = FundusDGDataset(data_root=fundus_root, split='test')
    else:
        ds = ProstateDGDataset(data_root=prostate_root, domains=[1, 2])
    order = list(DefaultSampler(ds, shuffle=False))
    batches = list(
        DomainBatchSampler(DefaultSampler(ds, shuffle=False), batch_size=3)
    )
    # Every index once, in the sampler's order.
    assert [i for b in batches for i in b] == order
    assert len(DomainBatchSampler(DefaultSampler(ds, False), 3)) == len(
        batches
    )

    def group(i):
        info = ds.get_data_info(i)
        return info['domain'], info.get(
            'case_id'
        ) if kind == 'prostate' else None

    for k, batch in enumerate(batches):
        assert 1 <= len(batch) <= 3
        assert len({group(i) for i in batch}) == 1
        # A short batch ends a run: the next batch starts another group.
        if len(batch) < 3 and k + 1 < len(batches):
            assert group(batches[k + 1][0]) != group(batch[-1])
    # The groups really change along the order (the test means something).
    assert len({group(i) for i in order}) > 1
    # Plain batches of 3 would mix groups.
    plain = [order[i : i + 3] for i in range(0, len(order), 3)]
    assert any(len({group(i) for i in b}) > 1 for b in plain)
    with pytest.raises(TypeError, match='dataset'):
        DomainBatchSampler(range(3), 4)


@pytest.mark.parametrize(
    'sizes,counts',
    [
        # The longest first, then last, then between two equal ones.
        ((('A', 14), ('B', 12), ('C', 9)), {1: 2, 2: 3, 3: 2}),
        ((('A', 9), ('B', 12), ('C', 21)), {1: 2, 2: 3, 3: 3}),
        ((('A', 8), ('B', 21), ('C', 21)), {1: 2, 2: 3, 3: 3}),
    ],
)
def test_cycle_replay_is_the_authors_cycle_and_zip(sizes, counts):
    # Their train_feed.py: one DataLoader per domain (shuffle, drop_last),
    # every one but the first longest wrapped in itertools.cycle, an epoch
    # = zip(*loaders). Emulated here with symbolic batches: ('pass', p, b)
    # for the longest loader (pass p = epoch), ('first', i) for batch i of
    # a cycled loader's first pass, which cycle replays.
    ds = _ToyDataset(sizes)
    sampler = DomainMixSampler(ds, counts, seed=5, cycle_replay=True)
    names = [n for n, _ in sizes]
    per = [
        len(sampler.domain_indices[n]) // sampler.domain_counts[n]
        for n in names
    ]
    longest = per.index(max(per))

    def loader(d, p):
        for b in range(per[d]):
            yield ('pass', p, b) if d == longest else ('first', b)

    cycles = [
        None if d == longest else itertools.cycle(loader(d, 0))
        for d in range(len(names))
    ]
    expected = []
    for epoch in range(5):
        iters = [
            loader(d, epoch) if d == longest else cycles[d]
            for d in range(len(names))
        ]
        expected.extend(zip(*iters))
    assert sampler.epoch_batches == per[longest]
    got = [sampler.batch_indices(g) for g in range(len(expected))]
    first_pass = {}
    for g, (batch, tokens) in enumerate(zip(got, expected)):
        start = 0
        for d, name in enumerate(names):
            count = sampler.domain_counts[name]
            draws = batch[start : start + count]
            start += count
            token = tokens[d]
            if token[0] == 'pass':
                order = sampler._pass_order(name, d, token[1])
                b = token[2]
                assert [int(x) for x in draws] == order[
                    b * count : (b + 1) * count
                ]
            else:
                # The same samples and draw seeds (augmentation) whenever
                # first-pass batch i comes round again.
                key = (name, token[1])
                seen = [(int(x), x.draw_seed) for x in draws]
                assert first_pass.setdefault(key, seen) == seen, (g, key)
    # Every first-pass batch of a cycled domain is distinct data.
    for d, name in enumerate(names):
        if d != longest:
            samples = [
                s
                for (n, _), v in first_pass.items()
                if n == name
                for s, _ in v
            ]
            assert (
                len(samples)
                == len(set(samples))
                == per[d] * sampler.domain_counts[name]
            )
    # The longest domain's augmentation is fresh every epoch.
    name = names[longest]
    seeds = [
        x.draw_seed
        for b in got
        for x in b
        if int(x) in sampler.domain_indices[name]
    ]
    assert len(set(seeds)) == len(seeds)
    with pytest.raises(ValueError, match='fewer samples'):
        DomainMixSampler(
            _ToyDataset((('A', 1), ('B', 4))),
            {1: 2, 2: 2},
            seed=0,
            cycle_replay=True,
        )
