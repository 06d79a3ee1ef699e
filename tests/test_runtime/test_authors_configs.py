"""The published-model configs (*_authors.py): build, train a few steps."""

import os.path as osp

import pytest
import torch
from mmengine.runner import Runner

from mmseg_dfq.config import load_config
from mmseg_dfq.models.backbones.mit_rdwt import RDWTMixVisionTransformer
from mmseg_dfq.models.segmentors import MultiLabelEncoderDecoder
from mmseg_dfq.testing.synthetic import make_fundus

REPO = osp.join(osp.dirname(__file__), '..', '..')
CONFIGS = osp.join(REPO, 'configs', 'dfq')


@pytest.mark.parametrize('benchmark', ['fundus', 'prostate'])
def test_authors_config_sets_the_published_options(benchmark):
    cfg = load_config(
        osp.join(CONFIGS, f'dfq_mit-b2_{benchmark}_d1_authors.py')
    )
    head = cfg.model.decode_head
    assert cfg.model.backbone.rdwt_layout == 'authors'
    assert head.loss_rdwt.layout == 'authors'
    assert head.loss_rdwt.reduction == 'mean'
    assert head.loss_rdwt.loss_weight == 1e-4
    assert tuple(head.pool_ratios) == (2, 4, 8)
    assert head.dropout_ratio == 0.0
    assert cfg.randomness.seed == 1337
    assert head.init_cfg is None
    assert cfg.model.backbone.embed_norm_eps == 1e-5
    assert head.norm_cfg == dict(
        type='ChunkBN', num_chunks=2, requires_grad=True
    )
    # Their test scripts: BatchNorm on each test batch of 8; the schedule's
    # reliability hooks kept.
    hooks = [h['type'] for h in cfg.custom_hooks]
    assert hooks[-1] == 'BatchStatsBNHook' and 'ExactResumeHook' in hooks
    assert cfg.test_dataloader.batch_size == 8
    assert cfg.train_dataloader.sampler.cycle_replay is True
    assert cfg.test_dataloader.batch_sampler.type == 'DomainBatchSampler'
    assert [p['type'] for p in cfg.param_scheduler] == ['LaggedPolyLR']
    assert cfg.param_scheduler[0]['end'] == cfg.train_cfg.max_epochs
    assert cfg.val_dataloader.batch_size == 1
    metric = cfg.test_evaluator
    if benchmark == 'fundus':
        # Their channel order: 0 cup, 1 disc (= rim + cup).
        assert cfg.model.label_sets == [[2], [1, 2]]
        assert metric.empty_distance == 100
        assert metric.dice_smooth == 1
        assert cfg.model.resize_once is True
        assert cfg.tta_model.type == 'MultiLabelTTAModel'
        assert head.resize_probabilities == 'sigmoid'
        for loader in ('train_dataloader', 'test_dataloader'):
            resizes = [
                t
                for t in cfg[loader].dataset.pipeline
                for t in [t, *t.get('transforms', [])]
                if 'Resize' in t['type']
            ]
            assert resizes and all(
                t['backend'] == 'pillow' for t in resizes
            ), loader
    else:
        dice = head.loss_decode[1]
        assert (dice.type, dice.batch_pooled, dice.squared, dice.smooth) == (
            'ClassDiceLoss',
            True,
            True,
            1e-5,
        )
        assert metric.restrict_to_gt_slices and not metric.use_spacing
        assert head.resize_probabilities == 'softmax'
        assert tuple(head.probability_losses) == ('loss_dice',)


def test_authors_fundus_config_trains_on_cpu(tmp_path):
    data_root = str(tmp_path / 'fundus')
    make_fundus(data_root, seed=0, cases=4, size=64)
    cfg = load_config(
        osp.join(CONFIGS, 'dfq_mit-b2_fundus_d1_authors.py'),
        cfg_options={
            'model.backbone.init_cfg': None,
            'train_dataloader.dataset.data_root': data_root,
            'train_dataloader.num_workers': 0,
            'train_dataloader.persistent_workers': False,
            'train_dataloader.batch_size': 3,
            'train_dataloader.sampler.domain_counts': {
                '_delete_': True,
                2: 1,
                3: 1,
                4: 1,
            },
            'test_dataloader.dataset.data_root': data_root,
            'test_dataloader.num_workers': 0,
            'test_dataloader.persistent_workers': False,
            'test_dataloader.batch_size': 2,
        },
        work_dir=str(tmp_path / 'work'),
    )
    # Two iterations and a test, no validation or checkpoints: this checks
    # that the published model runs, not what it learns.
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2)
    cfg.param_scheduler = []
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.log_level = 'WARNING'
    cfg.custom_hooks = [dict(type='BatchStatsBNHook')]
    runner = Runner.from_cfg(cfg)
    model = runner.model
    assert isinstance(model, MultiLabelEncoderDecoder)
    assert model.threshold == 0.75
    assert isinstance(model.backbone, RDWTMixVisionTransformer)
    assert model.backbone.rdwt_layout == 'authors'
    assert (
        type(model.decode_head.fusion_conv.bn).__name__ == 'ChunkBatchNorm2d'
    )
    runner.train()
    logged = runner.message_hub.log_scalars
    rdwt = logged['train/decode.loss_rdwt'].current()
    bce = logged['train/decode.loss_bce'].current()
    dice = logged['train/decode.loss_dice'].current()
    assert torch.isfinite(torch.tensor([rdwt, bce, dice])).all()
    # Their value includes the diagonal: at least one per group and stage.
    assert rdwt > 1e-4 * 64
    # The test: their single resize of the head's 1/4-scale probabilities.
    assert model.resize_once
    results = runner.test()
    assert 0 <= results['Domain1/OD_Dice'] <= 100
    # The hook put BatchNorm back to the running statistics.
    assert all(
        m.track_running_stats and not m.training
        for m in model.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    )


def test_authors_habits_compose_with_an_mmseg_segformer(tmp_path, fundus_root):
    # ChunkBN, LaggedPolyLR, BatchStatsBNHook and DomainBatchSampler on a
    # stock SegFormer (mmseg's head, no DFQ part), through the Runner.
    config = osp.join(
        REPO, 'configs', 'ablation', 'segformer_mit-tiny_demo_fundus.py'
    )
    cfg = load_config(
        config,
        cfg_options={
            **{
                f'{loader}.dataset.data_root': fundus_root
                for loader in ('train_dataloader', 'test_dataloader')
            },
            'model.decode_head.norm_cfg': dict(type='ChunkBN', num_chunks=2),
            'train_dataloader.num_workers': 0,
            'train_dataloader.persistent_workers': False,
            'test_dataloader.num_workers': 0,
            'test_dataloader.persistent_workers': False,
            'test_dataloader.batch_size': 2,
            'test_dataloader.batch_sampler': dict(type='DomainBatchSampler'),
        },
        work_dir=str(tmp_path / 'work'),
    )
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=3)
    cfg.param_scheduler = [
        dict(type='LaggedPolyLR', power=0.9, begin=0, end=3, by_epoch=False)
    ]
    cfg.custom_hooks = [dict(type='BatchStatsBNHook')]
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.log_level = 'WARNING'
    runner = Runner.from_cfg(cfg)
    bn = runner.model.decode_head.fusion_conv.bn
    assert type(bn).__name__ == 'ChunkBatchNorm2d' and bn.num_chunks == 2
    runner.train()
    base = cfg.optim_wrapper.optimizer.lr
    lrs = runner.message_hub.get_scalar('train/lr').data[0]
    # The authors' schedule: iterations 0 and 1 at the base rate, then
    # base * (1 - 1 / 3) ** 0.9.
    assert list(lrs) == pytest.approx([base, base, base * (2 / 3) ** 0.9])
    results = runner.test()
    assert 0 <= results['mean/OD_Dice'] <= 100
    assert bn.track_running_stats and not bn.training
