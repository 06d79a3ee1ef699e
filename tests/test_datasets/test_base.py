"""DomainSplitDataset: the facts every data set declares, domain metas."""

import pytest

from mmseg_dfq.datasets import (
    DomainSplitDataset,
    FundusDGDataset,
    MultiSiteDataset,
    ProstateDGDataset,
)
from mmseg_dfq.datasets.base import (
    DATASET_FACT_KEYS,
    check_dataset_facts,
    resolve_domains,
    split_test_cases,
)


def test_benchmarks_declare_their_facts():
    fundus = FundusDGDataset.METAINFO
    assert set(fundus) == set(DATASET_FACT_KEYS)
    assert fundus['domains'] == ('Domain1', 'Domain2', 'Domain3', 'Domain4')
    assert fundus['structures'] == dict(OD=(1, 2), OC=(2,))
    assert fundus['eval_mode'] == '2d'
    # The authors' fundus post-processing: largest 8-connected component,
    # holes filled.
    assert fundus['post_process'] == dict(
        largest_cc=True, fill_holes=True, connectivity=2
    )
    prostate = ProstateDGDataset.METAINFO
    assert set(prostate) == set(DATASET_FACT_KEYS)
    assert prostate['domains'] == (
        'RUNMC',
        'BMC',
        'I2CVB',
        'UCL',
        'BIDMC',
        'HK',
    )
    assert prostate['structures'] == dict(Prostate=(1,))
    assert prostate['eval_mode'] == '3d'
    # Largest 6-connected 3D component, no hole filling.
    assert prostate['post_process'] == dict(
        largest_cc=True, fill_holes=False, connectivity=1
    )
    for cls in (FundusDGDataset, ProstateDGDataset):
        assert issubclass(cls, DomainSplitDataset)
        assert cls.declared_facts()['structures'] == cls.METAINFO['structures']
    assert FundusDGDataset.FILE_KIND == 'image'
    assert ProstateDGDataset.FILE_KIND == 'nifti'
    assert MultiSiteDataset.file_kind_of(dict(file_kind='nifti')) == 'nifti'
    assert MultiSiteDataset.file_kind_of(dict()) == 'image'


def test_built_dataset_metainfo_has_the_facts(fundus_root, prostate_root):
    ds = FundusDGDataset(data_root=fundus_root, domains=[1])
    meta = ds.metainfo
    assert meta['structures'] == dict(OD=(1, 2), OC=(2,))
    assert meta['eval_mode'] == '2d'
    assert meta['post_process']['connectivity'] == 2
    ds = ProstateDGDataset(data_root=prostate_root, domains=['HK'])
    assert ds.metainfo['eval_mode'] == '3d'
    assert ds.domains == ['HK'] and ds.domain_ids == [6]
    info = ds.get_data_info(0)
    assert info['domain'] == 'HK' and info['domain_idx'] == 6
    assert info['case_id'].startswith('HK/')


FACTS = dict(
    classes=('background', 'a', 'b'),
    domains=['X', 'Y'],
    structures=dict(A=[1, 2], B=2),
    eval_mode='2d',
    post_process=dict(largest_cc=1, fill_holes=0, connectivity=2),
)


def test_facts_are_normalised():
    out = check_dataset_facts(dict(FACTS), 'here')
    assert out['domains'] == ('X', 'Y')
    assert out['structures'] == dict(A=(1, 2), B=(2,))
    assert out['post_process'] == dict(
        largest_cc=True, fill_holes=False, connectivity=2
    )


@pytest.mark.parametrize(
    'change, match',
    [
        (dict(structures=None), r"lacks \['structures'\]"),
        (dict(domains='XY'), 'domains must be a non-empty'),
        (dict(domains=['X', 'X']), 'repeat'),
        (dict(structures=dict(A=[3])), r'labels in 1\.\.2'),
        (dict(structures=dict(A=[0])), r'labels in 1\.\.2'),
        (dict(eval_mode='2.5d'), 'eval_mode'),
        (dict(post_process=dict(largest_cc=True)), 'exactly'),
        (
            dict(
                post_process=dict(largest_cc=1, fill_holes=0, connectivity=3)
            ),
            r"1\.\.2 in '2d'",
        ),
    ],
)
def test_bad_facts_are_refused(change, match):
    with pytest.raises(ValueError, match=match) as err:
        check_dataset_facts({**FACTS, **change}, 'MyDataset')
    assert 'MyDataset' in str(err.value)


def test_resolve_domains():
    names = ('A', 'B', 'C')
    assert resolve_domains([3, 'A'], names, 'domains') == [3, 1]
    assert resolve_domains('B', names, 'domains') == [2]
    with pytest.raises(ValueError, match='outside 1..3'):
        resolve_domains([4], names, 'domains')
    with pytest.raises(ValueError, match='given twice'):
        resolve_domains([1, 'A'], names, 'domains')
    with pytest.raises(TypeError, match='bool'):
        resolve_domains([True], names, 'domains')


def test_case_split_is_deterministic_and_seeded():
    cases = [f'Case{i}' for i in range(10)]
    test = split_test_cases(cases, 0.3, seed=0)
    assert len(test) == 3 and test == split_test_cases(cases, 0.3, seed=0)
    seeds = {tuple(split_test_cases(cases, 0.3, seed=s)) for s in range(5)}
    assert len(seeds) > 1
