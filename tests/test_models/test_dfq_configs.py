"""The DFQ model bases (configs/_base_/models) built through mmseg's
registry: losses by config, gradients, composition with other backbones.
"""

import pytest
import torch
from mmseg.registry import MODELS

from mmseg_dfq.models.backbones.mit_rdwt import RDWTMixVisionTransformer

from .dfq_parts import (
    BN,
    build_base,
    make_samples,
)

# Looked up, not imported: ``mmseg.models`` must load after ``mmseg_dfq``.
MixVisionTransformer = MODELS.get('MixVisionTransformer')


def test_dfq_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = build_base('dfq_mit-b0.py').train()
    losses = model.loss(torch.randn(2, 3, 64, 64), make_samples(2, 64, 64, 3))
    total = sum(v for k, v in losses.items() if 'loss' in k)
    total.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    missing = [n for n, p in params if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for _, p in params)


@pytest.mark.parametrize(
    'name,has_rdwt', [('dfq_mit-b0.py', True), ('dfqhead_mit-b0.py', False)]
)
def test_rdwt_loss_key_by_config(name, has_rdwt):
    model = build_base(name).train()
    losses = model.loss(torch.randn(2, 3, 64, 64), make_samples(2, 64, 64, 3))
    assert ('decode.loss_rdwt' in losses) is has_rdwt
    assert 'decode.loss_ce' in losses and 'decode.loss_dice' in losses
    if has_rdwt:
        assert float(losses['decode.loss_rdwt']) > 0


def test_resnet_rdwt_neck_dfq_head_from_config_dict():
    cfg = dict(
        type='EncoderDecoder',
        data_preprocessor=dict(
            type='SegDataPreProcessor',
            mean=[127.5] * 3,
            std=[127.5] * 3,
            pad_val=0,
            seg_pad_val=255,
        ),
        backbone=dict(
            type='ResNetV1c',
            depth=18,
            num_stages=4,
            out_indices=(0, 1, 2, 3),
            norm_cfg=BN,
        ),
        neck=dict(type='RDWTNeck'),
        decode_head=dict(
            type='DFQHead',
            in_channels=[64, 128, 256, 512],
            in_index=[0, 1, 2, 3],
            num_heads=(2, 4, 8),
            channels=64,
            num_classes=2,
            norm_cfg=BN,
            loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0),
            loss_rdwt=dict(type='RDWTLoss', loss_weight=1e-4),
        ),
        train_cfg=dict(),
        test_cfg=dict(mode='whole'),
    )
    model = MODELS.build(cfg)
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 96), mode='tensor')
    assert logits.shape == (1, 2, 16, 24)
    model.train()
    losses = model.loss(torch.randn(2, 3, 64, 64), make_samples(2, 64, 64, 2))
    assert {'decode.loss_ce', 'decode.loss_rdwt'} <= set(losses)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert all(
        p.grad is not None for p in model.parameters() if p.requires_grad
    )


@pytest.mark.parametrize(
    'name', ['segformer_mit-b0.py', 'dfqhead_mit-b0.py', 'dfq_mit-b0.py']
)
def test_b0_base_configs_build_and_run(name):
    model = build_base(name).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 96), mode='tensor')
    assert logits.shape == (1, 3, 16, 24)
    expected = 'DFQHead' if 'dfq' in name else 'SegformerHead'
    assert type(model.decode_head).__name__ == expected
    expected = (
        RDWTMixVisionTransformer
        if name.startswith('dfq_')
        else MixVisionTransformer
    )
    assert type(model.backbone) is expected
