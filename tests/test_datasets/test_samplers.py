import itertools
from collections import Counter

import pytest
from mmengine.runner import Runner

from mmseg_dfq.datasets import (
    DomainMixSampler,
    FundusDGDataset,
    check_domain_mix_batch_size,
)
from mmseg_dfq.datasets import samplers as samplers_mod

from .conftest import load_base_config


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


def _chunks(sampler, n_chunks):
    it = iter(sampler)
    size = sampler.chunk_size
    return [list(itertools.islice(it, size)) for _ in range(n_chunks)]


def test_every_chunk_holds_the_mix():
    ds = _ToyDataset()
    sampler = DomainMixSampler(ds, domain_counts=[3, 6, 7], seed=1)
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
    again = DomainMixSampler(ds, domain_counts=[3, 6, 7], seed=1)
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
        sampler = DomainMixSampler(ds, domain_counts=[3, 6, 7], seed=7)
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
    with pytest.raises(ValueError, match='3 domains'):
        DomainMixSampler(ds, domain_counts=[1, 2])
    with pytest.raises(ValueError, match='sum to 0'):
        DomainMixSampler(ds, domain_counts=[0, 0, 0])
    with pytest.raises(ValueError, match='negative'):
        DomainMixSampler(ds, domain_counts=[1, -1, 2])
    empty = _ToyDataset()
    empty.domains = ['A', 'B', 'C', 'E']
    with pytest.raises(ValueError, match="'E'.*no samples"):
        DomainMixSampler(empty, domain_counts=[1, 1, 1, 1])


def test_batch_size_check():
    cfg = load_base_config('fundus_dg')
    check_domain_mix_batch_size(cfg.train_dataloader)
    check_domain_mix_batch_size(
        load_base_config('prostate_dg').train_dataloader
    )
    bad = dict(cfg.train_dataloader, batch_size=8)
    with pytest.raises(ValueError, match='sum to 16'):
        check_domain_mix_batch_size(bad)


def test_runner_dataloader_batches_hold_the_mix(fundus_root):
    cfg = load_base_config('fundus_dg')
    loader_cfg = cfg.train_dataloader.copy()
    loader_cfg.update(num_workers=0, persistent_workers=False)
    loader_cfg.dataset = dict(
        loader_cfg.dataset, data_root=fundus_root, pipeline=[]
    )
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    assert isinstance(loader.sampler, DomainMixSampler)
    for batch in itertools.islice(loader, 3):
        domains = Counter(batch['domain'])
        assert domains == {'Domain2': 3, 'Domain3': 6, 'Domain4': 7}
    ds = FundusDGDataset(data_root=fundus_root, domains=[2, 3, 4])
    assert len(DomainMixSampler(ds, [3, 6, 7], seed=0)) == len(ds)
