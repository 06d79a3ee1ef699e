"""load_config's checks: mistakes that would otherwise run silently."""

import glob
import os.path as osp

import pytest

from mmseg_dfq.config import load_config

REPO = osp.join(osp.dirname(__file__), '..', '..')
FUNDUS = osp.join(REPO, 'configs', 'dfq', 'dfq_mit-tiny_demo_fundus.py')
PROSTATE = osp.join(REPO, 'configs', 'dfq', 'dfq_mit-tiny_demo_prostate.py')
AUTHORS = osp.join(REPO, 'configs', 'dfq', 'dfq_mit-b2_fundus_d1_authors.py')


@pytest.mark.parametrize(
    'config',
    sorted(
        c
        for c in glob.glob(
            osp.join(REPO, 'configs', '**', '*.py'), recursive=True
        )
        if '_base_' not in c
    ),
)
def test_every_shipped_config_passes_the_checks(config):
    load_config(config)


def test_a_near_miss_of_a_runner_key_is_refused():
    with pytest.raises(
        ValueError,
        match='--cfg-options train_dataloder.batch_size.*did you mean '
        "'train_dataloader'",
    ):
        load_config(FUNDUS, {'train_dataloder.batch_size': 3})
    with pytest.raises(ValueError, match="did you mean 'val_evaluator'"):
        load_config(FUNDUS, {'val_evaluater': dict(type='DomainMetric')})
    # Longer names built on a Runner key are deliberate variables.
    load_config(FUNDUS, {'data_preprocessor_cfg': dict(), 'crop_sizes': 1})


def test_a_held_out_domain_that_is_also_trained_on_is_refused():
    everything = {
        'train_dataloader.dataset.domains': [1, 2, 3, 4],
        'train_dataloader.sampler.domain_counts': {
            '_delete_': True,
            **{f'Domain{i}': 1 for i in range(1, 5)},
        },
        'train_dataloader.batch_size': 4,
    }
    with pytest.raises(ValueError, match=r'1 \(Domain1\).*reported as unseen'):
        load_config(FUNDUS, everything)
    # By name too.
    with pytest.raises(ValueError, match='reported as unseen'):
        load_config(
            FUNDUS,
            {
                **everything,
                'val_dataloader.dataset.unseen_domains': ['Domain1'],
                'test_dataloader.dataset.unseen_domains': ['Domain1'],
            },
        )
    # Another data root is other data: not checked.
    load_config(
        FUNDUS,
        {
            **everything,
            'val_dataloader.dataset.data_root': '/elsewhere',
            'test_dataloader.dataset.data_root': '/elsewhere',
        },
    )


@pytest.mark.parametrize(
    'config, wrong, classes',
    [(FUNDUS, 2, 3), (FUNDUS, 4, 3), (PROSTATE, 3, 2)],
)
def test_num_classes_must_match_the_data_set(config, wrong, classes):
    with pytest.raises(
        ValueError, match=f'num_classes is {wrong}.*has {classes} classes'
    ):
        load_config(config, {'model.decode_head.num_classes': wrong})


def test_label_sets_must_name_labels_of_the_data_set():
    with pytest.raises(ValueError, match=r'label_sets name labels \[3\]'):
        load_config(AUTHORS, {'model.label_sets': [[2], [1, 3]]})


def test_narrowed_masks_need_the_batch_preprocessor():
    fast = osp.join(REPO, 'configs', 'dfq', 'dfq_mit-b2_fundus_d1_fast.py')
    cfg = load_config(fast)
    assert cfg.train_dataloader.collate_fn.mask_dtype == 'uint8'
    with pytest.raises(
        ValueError, match='model.data_preprocessor is SegDataPreProcessor'
    ):
        load_config(
            fast, {'model.data_preprocessor.type': 'SegDataPreProcessor'}
        )
    with pytest.raises(ValueError, match='SegDataPreProcessor'):
        load_config(
            fast,
            {
                'train_dataloader.collate_fn.type': 'mmseg.stack_seg_collate',
                'model.data_preprocessor.type': 'SegDataPreProcessor',
            },
        )
    with pytest.raises(ValueError, match='RAMSegDataPreProcessor'):
        load_config(
            fast, {'model.data_preprocessor.type': 'RAMSegDataPreProcessor'}
        )
    with pytest.raises(ValueError, match="val_dataloader.collate_fn.*'int4'"):
        load_config(fast, {'val_dataloader.collate_fn.mask_dtype': 'int4'})
    # Without mask_dtype, any data preprocessor reads the batches.
    load_config(
        fast,
        {
            'model.data_preprocessor.type': 'SegDataPreProcessor',
            'train_dataloader.collate_fn.mask_dtype': None,
            'val_dataloader.collate_fn.mask_dtype': None,
            'test_dataloader.collate_fn.mask_dtype': None,
        },
    )


@pytest.mark.parametrize(
    'option,suggestion',
    [
        ('train_cfg.max_iter', 'train_cfg.max_iters'),
        (
            'train_dataloader.dataset.dataroot',
            'train_dataloader.dataset.data_root',
        ),
        ('model.decode_head.chanels', 'model.decode_head.channels'),
        ('custom_hooks.2.actoin', 'custom_hooks.2.action'),
    ],
)
def test_a_near_miss_in_cfg_options_is_named(option, suggestion):
    # mmengine would add the key as given and a constructor would fail
    # with a TypeError that names no key path (or nothing would read it).
    with pytest.raises(
        ValueError,
        match=f"--cfg-options {option}.*did you mean '{suggestion}'",
    ):
        load_config(FUNDUS, {option: 2})


def test_new_keys_in_cfg_options_are_accepted():
    cfg = load_config(
        FUNDUS,
        {
            'default_hooks.checkpoint.save_best': 'mean_unseen/Dice_avg',
            'default_hooks.checkpoint.rule': 'greater',
            'optim_wrapper.optimizer.fused': False,
            'model.backbone.init_cfg': None,
            'train_cfg.max_iters': 3,
            'custom_hooks.0.priority': 'LOW',
            # Parameters the config leaves at their defaults, close to a
            # key it sets: accepted (the dict's type takes them).
            'default_hooks.checkpoint.save_last': False,
            'model.decode_head.loss_decode.0.class_weight': [1.0, 1.0, 1.0],
        },
    )
    assert cfg.default_hooks.checkpoint.save_best == 'mean_unseen/Dice_avg'


def test_two_sigmoid_models_refuse_mmseg_tta():
    with pytest.raises(ValueError, match='MultiLabelTTAModel'):
        load_config(AUTHORS, {'tta_model.type': 'SegTTAModel'})


def test_chunk_bn_refuses_a_distributed_launcher():
    with pytest.raises(ValueError, match="ChunkBN.*launcher='pytorch'"):
        load_config(AUTHORS, launcher='pytorch')
    cfg = load_config(
        AUTHORS,
        {'model.decode_head.norm_cfg.type': 'SyncBN'},
        launcher='pytorch',
    )
    assert cfg.model.decode_head.norm_cfg.type in ('SyncBN', 'BN')
