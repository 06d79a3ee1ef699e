"""Every config under configs/ (except _base_) loads and builds.

Each config's model builds (without downloading pretrained weights), its
dataloaders name registered datasets, samplers, transforms and metrics, a
``DomainMixSampler`` batch holds exactly its per-domain counts, and every
leave-one-domain-out config keeps its target domain out of training and
evaluates it as the unseen one. The configs are found from this file's
location, so the test collects them from any working directory.
"""

import glob
import os
import os.path as osp
import re

import pytest
from mmengine.config import Config
from mmseg.registry import (
    DATA_SAMPLERS,
    DATASETS,
    HOOKS,
    LOOPS,
    METRICS,
    MODELS,
    TRANSFORMS,
)

from mmseg_dfq.datasets.samplers import check_domain_mix_batch_size
from mmseg_dfq.testing.synthetic import PROSTATE_SITES

from ..helpers import REPO_ROOT

CONFIG_DIR = osp.join(REPO_ROOT, 'configs')
CONFIGS = sorted(
    osp.relpath(path, REPO_ROOT)
    for path in glob.glob(osp.join(CONFIG_DIR, '**', '*.py'), recursive=True)
    if not osp.relpath(path, CONFIG_DIR).startswith('_base_' + os.sep)
)
LODO = re.compile(r'(fundus|prostate)_d(\d)\.py$')
# The CPU demos hold out domain 1 (fundus Domain1, prostate RUNMC).
DEMO_TARGETS = {
    'dfq_mit-tiny_demo_fundus.py': 1,
    'dfq_mit-tiny_demo_prostate.py': 1,
}


def test_configs_are_collected():
    # Counted independently of the glob above.
    found = [
        osp.join(root, name)
        for root, dirs, files in os.walk(CONFIG_DIR)
        if not osp.relpath(root, CONFIG_DIR).split(os.sep)[0] == '_base_'
        for name in files
        if name.endswith('.py')
    ]
    assert len(CONFIGS) > 0
    assert len(CONFIGS) == len(found), sorted(found)
    # The benchmark: 4 fundus + 6 prostate held-out splits of DFQ.
    assert sum(bool(LODO.search(c)) for c in CONFIGS if 'dfq/dfq_' in c) >= 10


def _domain_index(domain):
    """1-based index of a domain given as 1, 'Domain1' or 'RUNMC'."""
    if isinstance(domain, int):
        return domain
    if domain in PROSTATE_SITES:
        return PROSTATE_SITES.index(domain) + 1
    match = re.fullmatch(r'Domain(\d)', str(domain))
    assert match, f'unknown domain {domain!r}'
    return int(match.group(1))


def _check_dataloader(cfg, name):
    loader = cfg[name]
    for key in ('batch_size', 'num_workers', 'sampler', 'dataset'):
        assert key in loader, f'{name} has no {key}'
    assert DATA_SAMPLERS.get(loader.sampler.type) is not None, loader.sampler
    dataset = loader.dataset
    for key in ('type', 'data_root', 'domains', 'pipeline'):
        assert key in dataset, f'{name}.dataset has no {key}'
    assert DATASETS.get(dataset.type) is not None, dataset.type
    assert dataset.domains, f'{name} has no domains'
    for transform in dataset.pipeline:
        assert TRANSFORMS.get(transform.type) is not None, transform
    return loader


@pytest.mark.parametrize('config', CONFIGS)
def test_config_builds(config):
    cfg = Config.fromfile(osp.join(REPO_ROOT, config))
    assert cfg.get('default_scope') == 'mmseg'
    assert 'mmseg_dfq' in cfg.custom_imports['imports']
    for name in ('train_cfg', 'val_cfg', 'test_cfg', 'optim_wrapper'):
        assert name in cfg, f'{config} has no {name}'
    train = _check_dataloader(cfg, 'train_dataloader')
    val = _check_dataloader(cfg, 'val_dataloader')
    test = _check_dataloader(cfg, 'test_dataloader')
    for name in ('val_evaluator', 'test_evaluator'):
        assert METRICS.get(cfg[name].type) is not None, cfg[name]

    if train.sampler.type == 'DomainMixSampler':
        counts = train.sampler.domain_counts
        # Keyed by the training domains, exactly (no stale base key).
        assert sorted(counts) == sorted(train.dataset.domains), counts
        assert train.batch_size == sum(counts.values()), train.batch_size
        assert train.batch_sampler.type == 'DomainMixBatchSampler'
        check_domain_mix_batch_size(train)

    match = LODO.search(config)
    target = int(match.group(2)) if match else None
    target = DEMO_TARGETS.get(osp.basename(config), target)
    if target is not None:
        sources = {_domain_index(d) for d in train.dataset.domains}
        assert target not in sources, (config, sources)
        assert not train.dataset.get('unseen_domains')
        for loader in (val, test):
            domains = [_domain_index(d) for d in loader.dataset.domains]
            unseen = [_domain_index(d) for d in loader.dataset.unseen_domains]
            assert unseen == [target], (config, unseen)
            assert target in domains, (config, domains)
            # Every other tested domain is a source domain.
            assert set(domains) - {target} <= sources

    # No download: the test builds from scratch.
    cfg.model.pretrained = None
    if cfg.model.get('backbone', {}).get('init_cfg') is not None:
        cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    if hasattr(model, 'label_sets'):
        # The authors' two sigmoid channels (cup, disc) over labels 0-2.
        expected = len(model.label_sets)
    else:
        expected = 3 if 'fundus' in config else 2
    assert model.decode_head.num_classes == expected, config
    assert sum(p.numel() for p in model.parameters()) > 0


RELIABILITY_HOOKS = {'ExactResumeHook', 'PreemptionHook', 'NonFiniteLossHook'}


@pytest.mark.parametrize('config', CONFIGS)
def test_schedule_and_hooks(config):
    cfg = Config.fromfile(osp.join(REPO_ROOT, config))
    hooks = [h['type'] for h in cfg.get('custom_hooks', [])]
    for hook in hooks:
        assert HOOKS.get(hook) is not None, hook
    assert RELIABILITY_HOOKS <= set(hooks), (config, hooks)
    loop = cfg.train_cfg.type
    assert LOOPS.get(loop) is not None, loop
    if 'demo' in config or 'configs/benchmark/' in config:
        # The CPU demo (and the benchmark recipe built on it): a few
        # hundred iterations.
        assert loop == 'IterBasedTrainLoop'
        assert cfg.train_cfg.max_iters <= 300
        return
    # The authors' 200 epochs of the longest source loader, poly decay per
    # iteration over all of them.
    assert loop == 'EpochBasedTrainLoop'
    assert cfg.train_cfg.max_epochs == 200
    assert cfg.train_dataloader.sampler.type == 'DomainMixSampler'
    for scheduler in cfg.param_scheduler:
        assert scheduler.by_epoch and scheduler.convert_to_iter_based
        assert scheduler.end == cfg.train_cfg.max_epochs
    assert cfg.log_processor.by_epoch is False  # logs count iterations
