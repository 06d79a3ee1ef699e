"""ClassDiceLoss (models/losses/dice_loss.py), against NumPy."""

import numpy as np
import pytest
import torch

from mmseg_dfq.models.losses import ClassDiceLoss


def numpy_dice(logits, target, ignore_index, include_background, smooth):
    """Per-sample, per-class soft Dice over the non-ignored pixels."""
    z = logits.double().numpy()
    prob = np.exp(z - z.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    t = target.numpy()
    losses = []
    for n in range(z.shape[0]):
        valid = t[n] != ignore_index
        for c in range(0 if include_background else 1, z.shape[1]):
            p = prob[n, c][valid]
            g = (t[n][valid] == c).astype(np.float64)
            dice = (2 * (p * g).sum() + smooth) / (p.sum() + g.sum() + smooth)
            losses.append(1 - dice)
    return np.mean(losses)


@pytest.mark.parametrize('include_background', [False, True])
def test_class_dice_matches_numpy_and_ignores(include_background):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 12, 16, generator=g) * 2
    target = torch.randint(0, 3, (2, 12, 16), generator=g)
    target[:, :4] = 255
    loss = ClassDiceLoss(include_background=include_background, smooth=1.0)
    value = float(loss(logits, target, ignore_index=255))
    expected = numpy_dice(logits, target, 255, include_background, 1.0)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    # Whatever is predicted on ignored pixels does not matter.
    other = logits.clone()
    other[:, :, :4] = torch.randn(2, 3, 4, 16, generator=g) * 10
    np.testing.assert_allclose(
        float(loss(other, target, ignore_index=255)), value, rtol=1e-6
    )
    # ...but it does elsewhere (the test can fail).
    other[:, :, 4:] += 5 * torch.randn(2, 3, 8, 16, generator=g)
    assert abs(float(loss(other, target, ignore_index=255)) - value) > 1e-3


def authors_prostate_dice(logits, target, num_classes):
    """The authors' prostate Dice as their code states it: softmax, then
    for each class but 0, sums over the whole batch with squared terms in
    the denominator, smooth 1e-5, averaged over those classes."""
    z = logits.double().numpy()
    prob = np.exp(z - z.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    t = target.numpy()
    losses = []
    for c in range(1, num_classes):
        g = (t == c).astype(np.float64)
        p = prob[:, c]
        dice = (2 * (p * g).sum() + 1e-5) / (
            (p * p).sum() + (g * g).sum() + 1e-5
        )
        losses.append(1 - dice)
    return np.mean(losses)


@pytest.mark.parametrize('num_classes', [2, 3])
def test_batch_pooled_squared_is_the_authors_prostate_dice(num_classes):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, num_classes, 10, 12, generator=g) * 2
    target = torch.randint(0, num_classes, (3, 10, 12), generator=g)
    target[0] = 0  # a slice without foreground: pooled, it still counts
    loss = ClassDiceLoss(batch_pooled=True, squared=True, smooth=1e-5)
    expected = authors_prostate_dice(logits, target, num_classes)
    np.testing.assert_allclose(
        float(loss(logits, target)), expected, rtol=1e-5
    )
    # Not the per-sample default.
    per_sample = ClassDiceLoss(smooth=1e-5)
    assert abs(float(per_sample(logits, target)) - expected) > 1e-3
