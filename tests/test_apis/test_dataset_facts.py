"""The inferencer reads what to segment and how to post-process from the
test data set's declared facts, with the config's DomainMetric on top."""

import os.path as osp

from mmengine.config import Config

from mmseg_dfq.apis import dataset_facts_of, postprocess_settings

from ..helpers import FUNDUS_CONFIG, PROSTATE_CONFIG, REPO_ROOT


def test_benchmark_configs():
    fundus = Config.fromfile(FUNDUS_CONFIG)
    assert dataset_facts_of(fundus)['file_kind'] == 'image'
    assert postprocess_settings(fundus) == dict(
        structures=dict(OD=[1, 2], OC=[2]),
        largest_cc=True,
        fill_holes=True,
        connectivity=2,
    )
    prostate = Config.fromfile(PROSTATE_CONFIG)
    assert dataset_facts_of(prostate)['file_kind'] == 'nifti'
    assert postprocess_settings(prostate) == dict(
        structures=dict(Prostate=[1]),
        largest_cc=True,
        fill_holes=False,
        connectivity=1,
    )


def test_multisite_configs_declare_their_own():
    cfg = Config.fromfile(
        osp.join(
            REPO_ROOT, 'configs/multisite/dfq_mit-tiny_demo_multisite-nifti.py'
        )
    )
    facts = dataset_facts_of(cfg)
    assert facts['file_kind'] == 'nifti'
    assert facts['domains'] == ('HospitalA', 'HospitalB', 'HospitalC')
    assert postprocess_settings(cfg)['structures'] == dict(Prostate=[1])
    cfg = Config.fromfile(
        osp.join(
            REPO_ROOT, 'configs/multisite/dfq_mit-tiny_demo_multisite-2d.py'
        )
    )
    assert dataset_facts_of(cfg)['file_kind'] == 'image'
    assert postprocess_settings(cfg)['structures'] == dict(Disc=[1])


def test_metric_arguments_override_the_facts():
    cfg = Config.fromfile(FUNDUS_CONFIG)
    cfg.test_evaluator = dict(
        type='DomainMetric',
        structures=dict(OD=[1]),
        cc_connectivity=1,
        fill_holes=False,
        largest_cc=False,
    )
    assert postprocess_settings(cfg) == dict(
        structures=dict(OD=[1]),
        largest_cc=False,
        fill_holes=False,
        connectivity=1,
    )


def test_plain_mmseg_dataset_declares_nothing():
    cfg = Config(
        dict(test_dataloader=dict(dataset=dict(type='ADE20KDataset')))
    )
    assert dataset_facts_of(cfg) is None
    assert postprocess_settings(cfg) is None
