"""The configs that share recipe bases give the models they gave before.

The fundus demos (DFQ, SegFormer) share ``_base_/demo_fundus.py`` and the
two configs that compose DFQ into mmseg's models share
``_base_/models/dfq_head_only.py``. The expected models below are written
out as the configs spelled them before they shared anything, so a change
of a shared base shows up here.
"""

import copy
import os.path as osp

import pytest
from mmengine.config import Config

from ..helpers import REPO_ROOT

CONFIGS = osp.join(REPO_ROOT, 'configs')
LOSSES = [
    dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    dict(type='ClassDiceLoss', loss_weight=1.0),
]
MIT_B0 = dict(
    type='MixVisionTransformer',
    in_channels=3,
    embed_dims=32,
    num_stages=4,
    num_layers=[2, 2, 2, 2],
    num_heads=[1, 2, 5, 8],
    patch_sizes=[7, 3, 3, 3],
    sr_ratios=[8, 4, 2, 1],
    out_indices=(0, 1, 2, 3),
    mlp_ratio=4,
    qkv_bias=True,
    drop_rate=0.0,
    attn_drop_rate=0.0,
    drop_path_rate=0.1,
    init_cfg=None,
)
SYNC_BN = dict(type='SyncBN', requires_grad=True)
# What configs/ablation/segformer_mit-tiny_demo_fundus.py restated.
SEGFORMER_DEMO = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[127.5, 127.5, 127.5],
        std=[127.5, 127.5, 127.5],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=(64, 64),
    ),
    backbone=MIT_B0,
    decode_head=dict(
        type='SegformerHead',
        in_channels=[32, 64, 160, 256],
        in_index=[0, 1, 2, 3],
        channels=128,
        dropout_ratio=0.1,
        num_classes=3,
        norm_cfg=SYNC_BN,
        align_corners=False,
        loss_decode=LOSSES,
    ),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'),
)


def _dfq_demo():
    """The DFQ demo: the SegFormer demo with RDWT on MiT and DFQHead."""
    model = copy.deepcopy(SEGFORMER_DEMO)
    model['backbone'].update(
        type='RDWTMixVisionTransformer',
        rdwt_stages=(0, 1, 2, 3),
        rdwt_layout='channels',
    )
    model['decode_head'].update(
        type='DFQHead',
        dropout_ratio=0.0,
        num_heads=(2, 5, 8),
        drop_path_rate=0.1,
        loss_rdwt=dict(
            type='RDWTLoss',
            loss_weight=1e-4,
            reduction='mean',
            layout='channels',
            normalize=False,
        ),
    )
    return model


def _model(config):
    return Config.fromfile(osp.join(CONFIGS, config)).model.to_dict()


@pytest.mark.parametrize(
    'config, expected',
    [
        ('ablation/segformer_mit-tiny_demo_fundus.py', SEGFORMER_DEMO),
        ('dfq/dfq_mit-tiny_demo_fundus.py', _dfq_demo()),
        # tools/benchmark_dg.py's variants: the demos' models.
        ('benchmark/dg-shift_segformer_mit-b0_fundus.py', SEGFORMER_DEMO),
        ('benchmark/dg-shift_dfq_mit-b0_fundus.py', _dfq_demo()),
    ],
)
def test_demo_models_are_unchanged(config, expected):
    assert _model(config) == expected


def test_demo_recipe_is_shared():
    # Everything but the model is the recipe's, in both demos.
    dfq = Config.fromfile(osp.join(CONFIGS, 'dfq/dfq_mit-tiny_demo_fundus.py'))
    segformer = Config.fromfile(
        osp.join(CONFIGS, 'ablation/segformer_mit-tiny_demo_fundus.py')
    )
    for key in ('train_dataloader', 'test_dataloader', 'train_cfg'):
        assert dfq[key].to_dict() == segformer[key].to_dict(), key
    assert dfq.train_dataloader.dataset.data_root == 'demo_data/fundus'
    assert dfq.train_cfg.max_iters == 300


# The DFQ head both composition examples restated, sizes apart.
DFQ_HEAD = dict(
    type='DFQHead',
    in_index=[0, 1, 2, 3],
    drop_path_rate=0.1,
    # The authors' head has no dropout (0.1 before; dfq_mit-b0.py had 0).
    dropout_ratio=0.0,
    num_classes=3,
    norm_cfg=SYNC_BN,
    align_corners=False,
    loss_rdwt=dict(type='RDWTLoss', loss_weight=1e-4, normalize=False),
    loss_decode=LOSSES,
)


@pytest.mark.parametrize(
    'config, sizes',
    [
        (
            'dfq/dfq_r50-rdwt-neck_fundus_d1.py',
            dict(in_channels=[256, 512, 1024, 2048], channels=256,
                 num_heads=(2, 4, 8)),
        ),
        (
            'dfq/dfq_mit-b0_from-mmseg-segformer_fundus_d1.py',
            dict(in_channels=[32, 64, 160, 256], channels=768,
                 num_heads=(2, 5, 8)),
        ),
    ],
)  # fmt: skip
def test_composed_dfq_heads_are_unchanged(config, sizes):
    model = _model(config)
    # The other model's head is gone, not merged into DFQHead.
    assert model['decode_head'] == dict(DFQ_HEAD, **sizes)
    assert (
        'mmseg_dfq'
        in Config.fromfile(osp.join(CONFIGS, config)).custom_imports['imports']
    )
