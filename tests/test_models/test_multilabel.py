"""The authors' two-sigmoid fundus form: nested targets, losses, labels."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import ConfigDict
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import mmseg_dfq  # noqa: F401  (registers the plugin)
from mmseg_dfq.models.losses import MultiLabelBCELoss, MultiLabelDiceLoss

# The authors' channel order: cup, then disc = rim + cup.
SETS = [[2], [1, 2]]


def labels_and_logits(seed=0, b=2, h=12, w=10):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (b, h, w), generator=g)
    labels[0, 0, :4] = 255  # ignored (padding)
    logits = torch.randn(b, 2, h, w, generator=g) * 2
    return labels, logits


def numpy_targets(labels):
    lab = labels.numpy()
    valid = (lab != 255).astype(np.float64)
    disc = np.isin(lab, [1, 2]) * valid
    cup = (lab == 2) * valid
    return np.stack([cup, disc], 1), valid[:, None]


def test_bce_matches_numpy():
    labels, logits = labels_and_logits()
    t, valid = numpy_targets(labels)
    p = 1 / (1 + np.exp(-logits.double().numpy()))
    bce = -(t * np.log(p) + (1 - t) * np.log(1 - p)) * valid
    expected = bce.sum() / (valid.sum() * 2)
    ours = MultiLabelBCELoss(label_sets=SETS, loss_weight=2.0)(logits, labels)
    np.testing.assert_allclose(float(ours), 2 * expected, rtol=1e-5)


def test_pooled_dice_matches_numpy():
    labels, logits = labels_and_logits(1)
    t, valid = numpy_targets(labels)
    p = 1 / (1 + np.exp(-logits.double().numpy())) * valid
    dice = (2 * (p * t).sum() + 1e-5) / ((p * p).sum() + (t * t).sum() + 1e-5)
    ours = MultiLabelDiceLoss(label_sets=SETS)(logits, labels)
    np.testing.assert_allclose(float(ours), 1 - dice, rtol=1e-5)
    # Perfect, confident predictions give ~0.
    perfect = torch.from_numpy(t * 40 - 20).float()
    assert float(MultiLabelDiceLoss(label_sets=SETS)(perfect, labels)) < 1e-6


def test_losses_check_channels_and_sets():
    labels, logits = labels_and_logits()
    with pytest.raises(ValueError, match='3 label_sets'):
        MultiLabelBCELoss(label_sets=[[1], [2], [3]])(logits, labels)
    with pytest.raises(ValueError, match='label_sets'):
        MultiLabelDiceLoss(label_sets=[[]])


def build_segmentor(threshold=0.75, label_sets=SETS, **kwargs):
    init_default_scope('mmseg')
    kwargs.setdefault('test_cfg', ConfigDict(mode='whole'))
    return MODELS.build(
        dict(
            type='MultiLabelEncoderDecoder',
            label_sets=label_sets,
            threshold=threshold,
            **kwargs,
            backbone=dict(
                type='RDWTMixVisionTransformer',
                embed_dims=8,
                num_layers=[1, 1, 1, 1],
                num_heads=[1, 2, 4, 8],
            ),
            decode_head=dict(
                type='DFQHead',
                in_channels=[8, 16, 32, 64],
                in_index=[0, 1, 2, 3],
                num_heads=(1, 1, 1),
                channels=16,
                num_classes=2,
                out_channels=2,
                norm_cfg=dict(type='BN'),
                loss_decode=[
                    dict(type='MultiLabelBCELoss', label_sets=label_sets),
                    dict(type='MultiLabelDiceLoss', label_sets=label_sets),
                ],
            ),
        )
    ).eval()


def test_probabilities_are_resized_then_thresholded():
    model = build_segmentor()
    logits = torch.randn(1, 2, 16, 16) * 3
    sample = SegDataSample()
    sample.set_metainfo(
        dict(img_shape=(16, 16), ori_shape=(40, 30), pad_shape=(16, 16))
    )
    (out,) = model.postprocess_result(logits, [sample])
    # The authors: sigmoid, bilinear resize, then 0.75 per channel.
    probs = F.interpolate(
        logits.sigmoid(), (40, 30), mode='bilinear', align_corners=False
    )[0]
    cup, disc = (probs > 0.75).numpy()
    expected = np.where(cup, 2, np.where(disc, 1, 0))
    np.testing.assert_array_equal(out.pred_sem_seg.data[0].numpy(), expected)
    torch.testing.assert_close(out.seg_logits.data, probs)
    # A cup outside the disc stays cup (label 2): the authors' channels are
    # independent; OD = {1, 2} then counts it as disc too.
    assert ((cup & ~disc).sum() == 0) or (expected[cup & ~disc] == 2).all()


def test_segmentor_trains_and_checks_channels():
    model = build_segmentor().train()
    samples = []
    for _ in range(2):
        s = SegDataSample()
        s.set_metainfo(
            dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64))
        )
        s.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, 64, 64)))
        samples.append(s)
    losses = model.loss(torch.randn(2, 3, 64, 64), samples)
    assert {'decode.loss_bce', 'decode.loss_dice'} <= set(losses)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    with pytest.raises(ValueError, match='threshold'):
        build_segmentor(threshold=1.5)


def test_labels_do_not_depend_on_channel_order():
    # Every combination of (cup, disc) on/off, in both channel orders:
    # disc and cup -> 2 (cup), disc alone -> 1 (rim), cup alone -> 2,
    # neither -> 0. Writing the channels in their given order would turn
    # the authors' (cup, disc) into rim wherever both are on.
    cup = torch.tensor([[0.9, 0.9, 0.1, 0.1]])
    disc = torch.tensor([[0.9, 0.1, 0.9, 0.1]])
    expected = torch.tensor([[[2, 2, 1, 0]]])
    authors = build_segmentor(label_sets=[[2], [1, 2]])
    swapped = build_segmentor(label_sets=[[1, 2], [2]])
    assert torch.equal(
        authors.labels_from_probs(torch.stack([cup, disc])), expected
    )
    assert torch.equal(
        swapped.labels_from_probs(torch.stack([disc, cup])), expected
    )


@pytest.mark.parametrize('flip', [None, 'horizontal', 'vertical'])
def test_resize_once_is_the_authors_test_resize(flip):
    # Their test script: sigmoid of the head's output (1/4 of the input),
    # one bilinear resize to the original image, 0.75 per channel.
    torch.manual_seed(0)
    model = build_segmentor(resize_once=True)
    inputs = torch.randn(2, 3, 64, 64)
    samples = []
    for _ in range(2):
        s = SegDataSample()
        meta = dict(img_shape=(64, 64), ori_shape=(50, 70), pad_shape=(64, 64))
        if flip:
            meta.update(flip=True, flip_direction=flip)
        s.set_metainfo(meta)
        samples.append(s)
    with torch.no_grad():
        out = model.predict(inputs, samples)
        head = model.decode_head.forward(model.extract_feat(inputs))
    assert head.shape[-2:] == (16, 16)
    probs = F.interpolate(
        head.sigmoid(), (50, 70), mode='bilinear', align_corners=False
    )
    if flip:
        probs = probs.flip(3 if flip == 'horizontal' else 2)
    for i in range(2):
        torch.testing.assert_close(out[i].seg_logits.data, probs[i])
        cup, disc = (probs[i] > 0.75).numpy()
        expected = np.where(cup, 2, np.where(disc, 1, 0))
        np.testing.assert_array_equal(
            out[i].pred_sem_seg.data[0].numpy(), expected
        )
    # mmseg's default (two resizes) gives other probabilities.
    model.resize_once = False
    with torch.no_grad():
        default = model.predict(inputs, samples)
    assert not torch.allclose(default[0].seg_logits.data, probs[0])


def test_resize_once_padding_and_limits():
    torch.manual_seed(0)
    model = build_segmentor(resize_once=True)
    inputs = torch.randn(1, 3, 64, 64)
    # 8 px of padding on the right and bottom = 2 head pixels.
    sample = SegDataSample()
    sample.set_metainfo(
        dict(
            img_shape=(56, 56),
            ori_shape=(30, 30),
            pad_shape=(64, 64),
            padding_size=[0, 8, 0, 8],
        )
    )
    with torch.no_grad():
        (out,) = model.predict(inputs, [sample])
        head = model.decode_head.forward(model.extract_feat(inputs))
    probs = F.interpolate(
        head[:, :, :14, :14].sigmoid(),
        (30, 30),
        mode='bilinear',
        align_corners=False,
    )[0]
    torch.testing.assert_close(out.seg_logits.data, probs)
    # Padding that is not a whole head pixel cannot be cut exactly.
    sample.set_metainfo(dict(padding_size=[0, 6, 0, 6]))
    with pytest.raises(ValueError, match='whole number'):
        model.predict(inputs, [sample])
    # No samples: the input size stands for the original.
    with torch.no_grad():
        (bare,) = model.predict(inputs)
    assert bare.seg_logits.shape == (64, 64)
    with pytest.raises(ValueError, match='whole-image'):
        build_segmentor(resize_once=True, test_cfg=dict(mode='slide'))


def test_tta_averages_the_views_probabilities():
    # Two views (as is, flipped): mean of their probabilities, labels as
    # the segmentor composes them; not SegTTAModel's softmax arg-max.
    torch.manual_seed(0)
    model = build_segmentor(
        resize_once=True, data_preprocessor=dict(type='SegDataPreProcessor')
    )
    tta = MODELS.build(dict(type='MultiLabelTTAModel', module=model)).eval()
    image = torch.rand(3, 64, 64) * 255
    views, samples = [], []
    for flip in (False, True):
        s = SegDataSample()
        meta = dict(img_shape=(64, 64), ori_shape=(40, 50), pad_shape=(64, 64))
        meta.update(flip=flip, flip_direction='horizontal' if flip else None)
        meta['img_path'] = 'x.png'
        s.set_metainfo(meta)
        s.gt_sem_seg = PixelData(data=torch.zeros(1, 40, 50, dtype=torch.long))
        views.append(image.flip(-1) if flip else image)
        samples.append(s)
    data = dict(
        inputs=[[v] for v in views], data_samples=[[s] for s in samples]
    )
    with torch.no_grad():
        expected = [
            model.test_step(dict(inputs=[v], data_samples=[s.clone()]))[0]
            for v, s in zip(views, samples)
        ]
        (out,) = tta.test_step(data)
    probs = (expected[0].seg_logits.data + expected[1].seg_logits.data) / 2
    torch.testing.assert_close(out.seg_logits.data, probs)
    assert torch.equal(out.pred_sem_seg.data, model.labels_from_probs(probs))
    assert out.gt_sem_seg.data.shape == (1, 40, 50)
    tta.module = torch.nn.Linear(1, 1)  # not a two-sigmoid segmentor
    with pytest.raises(TypeError, match='MultiLabelEncoderDecoder'):
        tta.merge_preds([[]])
