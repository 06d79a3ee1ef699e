"""Each leave-one-domain-out split base holds its own split, and only it.

mmengine merges a split config into the benchmark base: values the split
does not override survive, so a base that kept the held-out-1 facts in
top-level variables (``source_domains``, ``target_domains``,
``domain_counts``) showed them in a dumped held-out-2 config, and a dict of
counts merged key by key would keep the base's domains. Here every split
is dumped and read back, and every domain fact in it must be its own.
"""

import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.runner import Runner

from mmseg_dfq.datasets import DomainMixBatchSampler

from ..helpers import REPO_ROOT

CONFIG_DIR = osp.join(REPO_ROOT, 'configs', '_base_', 'datasets')
# The authors' per-domain counts of a batch, by held-out domain, in source
# order (fundus: 16 images; prostate: 2 slices per site).
FUNDUS_COUNTS = {1: [3, 6, 7], 2: [2, 7, 7], 3: [2, 4, 10], 4: [2, 4, 10]}
SPLITS = [('fundus', k, 4) for k in FUNDUS_COUNTS] + [
    ('prostate', k, 6) for k in range(1, 7)
]
# Config keys that name domains; anything else holding them is stale.
DOMAIN_KEYS = {
    'domains',
    'unseen_domains',
    'domain_counts',
    'source_domains',
    'target_domains',
}


def _expected(benchmark, target, num_domains):
    """Paths of the domain facts of a split and their values."""
    sources = [d for d in range(1, num_domains + 1) if d != target]
    if benchmark == 'fundus':
        counts = dict(zip(sources, FUNDUS_COUNTS[target]))
        test_domains = list(range(1, num_domains + 1))
    else:
        counts = {d: 2 for d in sources}
        test_domains = [target]
    return {
        ('train_dataloader', 'dataset', 'domains'): sources,
        ('train_dataloader', 'sampler', 'domain_counts'): counts,
        ('val_dataloader', 'dataset', 'domains'): [target],
        ('val_dataloader', 'dataset', 'unseen_domains'): [target],
        ('test_dataloader', 'dataset', 'domains'): test_domains,
        ('test_dataloader', 'dataset', 'unseen_domains'): [target],
    }


def _domain_facts(node, path=()):
    """Every value under a domain key of a config tree, by path."""
    found = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if key in DOMAIN_KEYS:
                found[path + (key,)] = value
            else:
                found.update(_domain_facts(value, path + (key,)))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found.update(_domain_facts(value, path + (i,)))
    return found


def _plain(value):
    """ConfigDict / tuple -> dict / list, for comparisons."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@pytest.mark.parametrize('benchmark,target,num_domains', SPLITS)
def test_dumped_split_holds_only_its_own_domains(
    benchmark, target, num_domains, tmp_path
):
    cfg = Config.fromfile(osp.join(CONFIG_DIR, f'{benchmark}_dg_d{target}.py'))
    path = str(tmp_path / 'dumped.py')
    cfg.dump(path)
    dumped = Config.fromfile(path)
    expected = _expected(benchmark, target, num_domains)
    for which, config in (('loaded', cfg), ('dumped', dumped)):
        facts = {
            p: _plain(v) for p, v in _domain_facts(config.to_dict()).items()
        }
        # Exactly the split's facts: nothing top-level, nothing stale.
        assert facts == expected, (which, facts)
        counts = expected[('train_dataloader', 'sampler', 'domain_counts')]
        assert config.train_dataloader.batch_size == sum(counts.values())
    if target != 1:
        # Held-out 1's values (sources 2-4 or 2-6, target 1) are gone.
        assert 1 in cfg.train_dataloader.dataset.domains
        assert 1 not in cfg.val_dataloader.dataset.domains
    text = cfg.pretty_text
    for name in ('source_domains', 'target_domains'):
        assert name not in text


@pytest.mark.parametrize('benchmark,target,num_domains', SPLITS)
def test_split_dataloader_batches_hold_its_mix(
    benchmark, target, num_domains, request
):
    """The split's counts build on data (every key a loaded domain)."""
    root = request.getfixturevalue(f'{benchmark}_root')
    cfg = Config.fromfile(osp.join(CONFIG_DIR, f'{benchmark}_dg_d{target}.py'))
    loader_cfg = cfg.train_dataloader.to_dict()
    loader_cfg.update(num_workers=0, persistent_workers=False)
    loader_cfg['dataset'].update(data_root=root, pipeline=[])
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    assert isinstance(loader.batch_sampler, DomainMixBatchSampler)
    sampler = loader.batch_sampler.sampler
    names = loader.dataset.metainfo['domains']
    expected = _expected(benchmark, target, num_domains)
    counts = expected[('train_dataloader', 'sampler', 'domain_counts')]
    assert sampler.domain_counts == {
        names[d - 1]: c for d, c in counts.items()
    }
    batch = loader.batch_sampler.sampler.batch_indices(0)
    domains = [loader.dataset.get_data_info(i)['domain'] for i in batch]
    assert {n: domains.count(n) for n in set(domains)} == (
        sampler.domain_counts
    )
