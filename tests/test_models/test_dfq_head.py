"""DFQHead (models/decode_heads/dfq_head.py).

The reference of the level-resolution fusion is the plain
resize-then-fuse path.
"""

import numpy as np
import pytest
import torch

from mmseg_dfq.models.decode_heads.dfq_head import DFQHead

from .dfq_parts import (
    B0,
    B2,
    BN,
    feats_for,
    make_samples,
    numpy_rdwt,
)


def make_head(channels=B0, num_heads=(2, 5, 8), **kwargs):
    kwargs.setdefault('in_index', list(range(len(channels))))
    return DFQHead(
        in_channels=list(channels),
        channels=64,
        num_classes=3,
        num_heads=num_heads,
        norm_cfg=BN,
        **kwargs,
    )


@pytest.mark.parametrize('channels', [B0, B2], ids=['b0', 'b2'])
def test_head_output_shape(channels):
    head = make_head(channels).eval()
    with torch.no_grad():
        out = head(feats_for(channels))
    assert out.shape == (2, 3, 16, 24)


@pytest.mark.parametrize(
    'channels,num_heads',
    [(B0[:2], (2,)), (B0[:3], (2, 5))],
    ids=['2-levels', '3-levels'],
)
def test_head_fewer_levels(channels, num_heads):
    head = make_head(channels, num_heads).eval()
    with torch.no_grad():
        out = head(feats_for(channels))
    assert out.shape == (2, 3, 16, 24)
    assert len(head.blocks) == len(channels) - 1


def test_head_bad_arguments():
    with pytest.raises(ValueError, match='num_heads'):
        make_head(B0, num_heads=(2, 5))
    with pytest.raises(ValueError, match='do not divide'):
        make_head(B0, num_heads=(3, 5, 8))
    with pytest.raises(ValueError, match='at least two levels'):
        make_head([32], num_heads=())


def test_head_bad_inputs():
    head = make_head(B0)
    with pytest.raises(ValueError, match='channels'):
        head(feats_for(B2))
    head = make_head(B0, in_index=[0, 1, 2, 5])
    with pytest.raises(ValueError, match='in_index'):
        head(feats_for(B0))


def test_head_rdwt_in_index_selects_levels():
    feats = feats_for(B0, h=32, w=48)
    head = make_head(
        B0,
        loss_rdwt=dict(type='RDWTLoss', loss_weight=1.0),
        rdwt_in_index=[0, 2],
    ).train()
    losses = head.loss(feats, make_samples(2, 32, 48, 3), dict())
    expected = numpy_rdwt([feats[0], feats[2]], [1, 1], 1.0)
    np.testing.assert_allclose(float(losses['loss_rdwt']), expected, rtol=1e-5)


@pytest.mark.parametrize('size', [(64, 96), (72, 104)])
def test_head_level_resolution_fusion_equals_plain(size):
    torch.manual_seed(0)
    head = make_head(B0).eval()
    bn = head.fusion_conv.norm
    # Non-trivial running statistics so the norm is part of the check.
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    feats = feats_for(B0, *size)
    with torch.no_grad():
        fast = head(feats)
        head.fuse_at_level_resolution = False
        plain = head(feats)
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-4)


def _head_and_batch(
    resize, loss_decode, num_classes, out_channels=None, **kwargs
):
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    from ..helpers import tiny_dfq_head

    init_default_scope('mmseg')
    torch.manual_seed(0)
    head = MODELS.build(
        tiny_dfq_head(
            num_classes=num_classes,
            out_channels=out_channels or num_classes,
            loss_decode=loss_decode,
            resize_probabilities=resize,
            **kwargs,
        )
    ).train()
    feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)]
    samples = []
    for _ in range(2):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, 64, 64)))
        samples.append(s)
    labels = torch.cat([s.gt_sem_seg.data for s in samples])
    return head, feats, samples, labels


def test_resize_probabilities_softmax_is_the_authors_ce():
    # Theirs (prostate): softmax, resize the probabilities, then the loss.
    head, feats, samples, labels = _head_and_batch(
        'softmax', dict(type='CrossEntropyLoss'), 3
    )
    logits = head.forward(feats)
    probs = torch.nn.functional.interpolate(
        logits.softmax(1), (64, 64), mode='bilinear', align_corners=False
    )
    expected = torch.nn.functional.nll_loss(probs.log(), labels)
    losses = head.loss_by_feat(logits, samples)
    torch.testing.assert_close(
        losses['loss_ce'], expected, rtol=1e-5, atol=1e-6
    )
    # mmseg's order (logits resized) gives another value.
    head.resize_probabilities = None
    assert not torch.allclose(
        head.loss_by_feat(logits, samples)['loss_ce'], expected
    )
    with pytest.raises(ValueError, match='resize_probabilities'):
        _head_and_batch('tanh', dict(type='CrossEntropyLoss'), 3)


def test_resize_probabilities_sigmoid_is_the_authors_bce():
    # Theirs (fundus): sigmoid, resize the probabilities, then BCELoss.
    sets = [[2], [1, 2]]
    head, feats, samples, labels = _head_and_batch(
        'sigmoid', dict(type='MultiLabelBCELoss', label_sets=sets), 2
    )
    logits = head.forward(feats)
    probs = torch.nn.functional.interpolate(
        logits.sigmoid(), (64, 64), mode='bilinear', align_corners=False
    )
    targets = torch.stack([labels == 2, (labels == 1) | (labels == 2)], 1)
    expected = torch.nn.functional.binary_cross_entropy(probs, targets.float())
    losses = head.loss_by_feat(logits, samples)
    torch.testing.assert_close(
        losses['loss_bce'], expected, rtol=1e-5, atol=1e-6
    )


def test_probability_losses_pick_the_terms():
    # Their prostate loss: CE on the resized logits, Dice on the resized
    # softmax probabilities.
    from mmseg_dfq.models.losses import ClassDiceLoss

    dice_cfg = dict(
        type='ClassDiceLoss', batch_pooled=True, squared=True, smooth=1e-5
    )
    head, feats, samples, labels = _head_and_batch(
        'softmax', [dict(type='CrossEntropyLoss'), dice_cfg], 3
    )
    head.probability_losses = ('loss_dice',)
    logits = head.forward(feats)
    resized = torch.nn.functional.interpolate(
        logits, (64, 64), mode='bilinear', align_corners=False
    )
    probs = torch.nn.functional.interpolate(
        logits.softmax(1), (64, 64), mode='bilinear', align_corners=False
    )
    losses = head.loss_by_feat(logits, samples)
    torch.testing.assert_close(
        losses['loss_ce'], torch.nn.functional.cross_entropy(resized, labels)
    )
    dice = ClassDiceLoss(batch_pooled=True, squared=True, smooth=1e-5)
    torch.testing.assert_close(
        losses['loss_dice'], dice(probs.log(), labels), rtol=1e-5, atol=1e-6
    )
    assert not torch.allclose(losses['loss_dice'], dice(resized, labels))
    # Names are checked when the head is built.
    with pytest.raises(ValueError, match='name no loss term'):
        _head_and_batch(
            'softmax',
            dict(type='CrossEntropyLoss'),
            3,
            probability_losses=['loss_dcie'],
        )
    with pytest.raises(ValueError, match='give resize_probabilities'):
        _head_and_batch(
            None, dict(type='CrossEntropyLoss'), 3, probability_losses=['x']
        )
