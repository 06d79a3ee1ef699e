"""Sync-free pixel accuracy and DFQHead's loss_by_feat against mmseg's."""

import pytest
import torch
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.models.losses import accuracy
from mmseg.registry import MODELS

from mmseg_dfq.models.utils import pixel_accuracy


@pytest.mark.parametrize('ignore_index', [None, 255])
def test_pixel_accuracy_matches_mmseg(ignore_index):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 9, 7, generator=g)
    labels = torch.randint(0, 4, (3, 9, 7), generator=g)
    if ignore_index is not None:
        labels[torch.rand(3, 9, 7, generator=g) < 0.3] = ignore_index
    ours = pixel_accuracy(logits, labels, ignore_index)
    ref = accuracy(logits, labels, ignore_index=ignore_index)
    assert ours.shape == (1,)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)


def test_pixel_accuracy_all_ignored_and_shape_errors():
    logits = torch.randn(1, 2, 3, 3)
    labels = torch.full((1, 3, 3), 255)
    # As mmseg's: (0 + eps) * 100 / (0 + eps).
    ref = accuracy(logits, labels, ignore_index=255)
    assert pixel_accuracy(logits, labels, 255).item() == 100.0
    assert abs(ref.item() - 100.0) < 1e-3
    with pytest.raises(ValueError, match='logits'):
        pixel_accuracy(logits, labels[0], 255)


def test_dfq_head_loss_by_feat_equals_mmseg():
    """Same losses as BaseDecodeHead.loss_by_feat with two loss terms."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    head = MODELS.build(
        dict(
            type='DFQHead',
            in_channels=[8, 16, 24, 32],
            in_index=[0, 1, 2, 3],
            channels=16,
            num_classes=3,
            num_heads=(1, 2, 4),
            norm_cfg=dict(type='BN', requires_grad=True),
            loss_decode=[
                dict(type='CrossEntropyLoss', loss_weight=1.0),
                dict(type='CrossEntropyLoss', loss_weight=0.5),
                dict(type='DiceLoss', loss_weight=0.3),
            ],
        )
    )
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    samples = []
    for _ in range(2):
        label = torch.randint(0, 3, (1, 32, 32), generator=g)
        label[:, :4] = 255
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    ours = head.loss_by_feat(logits, samples)
    ref = BaseDecodeHead.loss_by_feat(head, logits, samples)
    assert set(ours) == set(ref) == {'loss_ce', 'loss_dice', 'acc_seg'}
    for key in ref:
        torch.testing.assert_close(ours[key], ref[key], rtol=1e-5, atol=1e-4)
