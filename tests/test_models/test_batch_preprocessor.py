"""BatchSegDataPreProcessor against mmseg's SegDataPreProcessor.

mmseg's own preprocessor is the reference: for every batch, stacked by
``stack_seg_collate`` or listed by ``pseudo_collate``, both must return the
same tensors bit for bit and the same metainfo, and leave the given batch
as it was.
"""

import copy
import functools
from unittest import mock

import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.structures import PixelData
from mmseg.models.data_preprocessor import SegDataPreProcessor
from mmseg.structures import SegDataSample

from mmseg_dfq.datasets import stack_seg_collate
from mmseg_dfq.datasets.collate import MASK_BATCH_KEY, MASK_DTYPE_KEY
from mmseg_dfq.models.data_preprocessors import BatchSegDataPreProcessor

MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def packed(sizes, with_gt=True, seed=0, mask_dtype=torch.uint8):
    """Packed samples as mmseg's PackSegInputs gives them."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for i, (h, w) in enumerate(sizes):
        sample = SegDataSample()
        sample.set_metainfo(
            dict(img_path=f'img_{i}.png', ori_shape=(h, w), img_shape=(h, w))
        )
        if with_gt:
            mask = torch.randint(
                0, 3, (1, h, w), generator=g, dtype=torch.uint8
            ).to(mask_dtype)
            mask[0, 0, : i + 1] = 255  # ignored pixels
            sample.gt_sem_seg = PixelData(data=mask)
        image = torch.randint(
            0, 256, (3, h, w), generator=g, dtype=torch.uint8
        )
        batch.append(dict(inputs=image, data_samples=sample))
    return batch


def both(**kwargs):
    return SegDataPreProcessor(**kwargs), BatchSegDataPreProcessor(**kwargs)


def assert_same(expected, got):
    assert torch.equal(expected['inputs'], got['inputs'])
    assert expected['inputs'].dtype == got['inputs'].dtype
    for a, b in zip(expected['data_samples'], got['data_samples']):
        assert a.metainfo.keys() == b.metainfo.keys()
        for key, value in a.metainfo.items():
            other = b.metainfo[key]
            assert type(other) is type(value) and other == value, key
            if isinstance(value, tuple):
                # padding_size: np.int64 where mmseg computes with NumPy
                assert [type(v) for v in value] == [type(v) for v in other]
        assert a.keys() == b.keys()
        if 'gt_sem_seg' in a:
            assert torch.equal(a.gt_sem_seg.data, b.gt_sem_seg.data)
            assert a.gt_sem_seg.data.dtype == b.gt_sem_seg.data.dtype


def run_both(batch, training, **kwargs):
    reference, batched = both(**kwargs)
    expected = reference(pseudo_collate(copy.deepcopy(batch)), training)
    results = []
    for collate in (pseudo_collate, stack_seg_collate):
        data = collate(copy.deepcopy(batch))
        before = copy.deepcopy(data)
        got = batched(data, training)
        assert_same(expected, got)
        # The batch handed in is unchanged (mmseg returns new samples).
        assert_unchanged(before, data)
        results.append(got)
    return results


def assert_unchanged(before, after):
    inputs = before['inputs']
    if isinstance(inputs, torch.Tensor):
        assert torch.equal(inputs, after['inputs'])
    else:
        assert all(torch.equal(a, b) for a, b in zip(inputs, after['inputs']))
    for a, b in zip(before['data_samples'], after['data_samples']):
        assert a.metainfo == b.metainfo
        if 'gt_sem_seg' in a:
            assert torch.equal(a.gt_sem_seg.data, b.gt_sem_seg.data)


@pytest.mark.parametrize('bgr_to_rgb', [True, False])
@pytest.mark.parametrize('size', [(32, 48), (16, 40)])
def test_training_batch_equals_mmseg(bgr_to_rgb, size):
    """Fixed crops: the batch path; (16, 40) < image: no padding either."""
    batch = packed([(32, 48)] * 4)
    run_both(batch, True, mean=MEAN, std=STD, bgr_to_rgb=bgr_to_rgb, size=size)


def test_size_divisor_and_no_normalisation():
    run_both(packed([(32, 48)] * 3), True, size_divisor=16)
    run_both(packed([(32, 48)] * 3), True, mean=None, std=None, size=(32, 48))


@pytest.mark.parametrize(
    'sizes,kwargs',
    [
        # padding needed: mmseg's path
        ([(32, 48)] * 2, dict(size=(40, 48))),
        ([(32, 48)] * 2, dict(size_divisor=20)),
        # sizes differ: mmseg's path
        ([(32, 48), (24, 48)], dict(size=(32, 48))),
    ],
)
def test_padded_or_mixed_training_batches_fall_back(sizes, kwargs):
    forward = SegDataPreProcessor.forward
    with mock.patch.object(
        SegDataPreProcessor, 'forward', autospec=True, side_effect=forward
    ) as spy:
        run_both(packed(sizes), True, mean=MEAN, std=STD, **kwargs)
    # Once for the reference, twice through the subclass's fallback.
    assert spy.call_count == 3


def test_eval_batches():
    # Validation: masks stay at their original size, images resized.
    batch = packed([(32, 48)] * 3)
    for item, (h, w) in zip(batch, [(50, 60), (50, 60), (70, 60)]):
        item['data_samples'].gt_sem_seg = PixelData(
            data=torch.zeros(1, h, w, dtype=torch.uint8)
        )
    reference, batched = both(mean=MEAN, std=STD, bgr_to_rgb=True)
    expected = reference(pseudo_collate(copy.deepcopy(batch)), False)
    got = batched(stack_seg_collate(copy.deepcopy(batch)), False)
    assert_same(expected, got)
    # Masks of one size, and no masks at all (inference).
    run_both(packed([(32, 48)] * 3), False, mean=MEAN, std=STD)
    run_both(packed([(32, 48)] * 3, with_gt=False), False, mean=MEAN, std=STD)
    # test_cfg padding stays mmseg's.
    run_both(
        packed([(32, 48)] * 2),
        False,
        mean=MEAN,
        std=STD,
        test_cfg=dict(size_divisor=32),
    )


def moves(pre, batch, training=True):
    """Run ``pre`` and return (output, the tensors it moved to a device)."""
    to, moved = torch.Tensor.to, []

    def counting_to(self, *args, **kwargs):
        if args and isinstance(args[0], (torch.device, str)):
            moved.append(self)
        return to(self, *args, **kwargs)

    with mock.patch.object(torch.Tensor, 'to', counting_to):
        out = pre(batch, training)
    return out, moved


def test_one_copy_per_batch():
    """The stacked batch reaches the device in one copy for the images and
    one for the masks (the collate's stacked masks, not stacked again);
    mmseg's path copies per image and per mask."""
    batch = stack_seg_collate(packed([(32, 48)] * 4))
    pre = BatchSegDataPreProcessor(mean=MEAN, std=STD, size=(32, 48))
    out, moved = moves(pre, batch)
    assert len(moved) == 2
    assert moved[0] is batch['inputs']
    assert moved[1] is batch[MASK_BATCH_KEY]
    masks = [s.gt_sem_seg.data for s in out['data_samples']]
    assert masks[0].untyped_storage().data_ptr() == (
        masks[1].untyped_storage().data_ptr()
    )
    # pseudo_collate lists: stacked on the host first, then one copy each.
    batch = pseudo_collate(packed([(32, 48)] * 4))
    _, moved = moves(pre, batch)
    assert [tuple(t.shape) for t in moved] == [(4, 3, 32, 48), (4, 1, 32, 48)]
    reference = SegDataPreProcessor(mean=MEAN, std=STD, size=(32, 48))
    _, moved = moves(reference, pseudo_collate(packed([(32, 48)] * 4)))
    assert len(moved) == 8


def test_returns_new_tensors():
    """Float images, no normalisation, no channel swap: still a new tensor,
    as mmseg's stack gives, and the given batch unchanged."""
    batch = stack_seg_collate(packed([(32, 48)] * 2))
    batch['inputs'] = batch['inputs'].float()
    before = batch['inputs'].clone()
    pre = BatchSegDataPreProcessor(size=(32, 48))
    out = pre(batch, True)
    assert out['inputs'] is not batch['inputs']
    out['inputs'].add_(1)
    assert torch.equal(batch['inputs'], before)


def test_extra_fields_and_batch_augments():
    # A sample field mmseg pads too (gt_edge_map): mmseg's path.
    batch = packed([(32, 48)] * 2)
    for item in batch:
        item['data_samples'].gt_edge_map = PixelData(
            data=torch.zeros(1, 32, 48, dtype=torch.uint8)
        )
    forward = SegDataPreProcessor.forward
    with mock.patch.object(
        SegDataPreProcessor, 'forward', autospec=True, side_effect=forward
    ) as spy:
        run_both(batch, True, mean=MEAN, std=STD, size=(32, 48))
    assert spy.call_count == 3

    # batch_augments run after the batch path, as after mmseg's.
    def augment(inputs, samples):
        for sample in samples:
            sample.set_metainfo(dict(augmented=True))
        return inputs.flip(-1), samples

    reference, batched = both(mean=MEAN, std=STD, size=(32, 48))
    reference.batch_augments = batched.batch_augments = augment
    batch = packed([(32, 48)] * 3)
    expected = reference(pseudo_collate(copy.deepcopy(batch)), True)
    got = batched(stack_seg_collate(copy.deepcopy(batch)), True)
    assert_same(expected, got)
    assert all(s.augmented for s in got['data_samples'])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_batch_equals_mmseg():
    batch = packed([(32, 48)] * 4, mask_dtype=torch.int64)
    reference, batched = both(
        mean=MEAN, std=STD, bgr_to_rgb=True, size=(32, 48)
    )
    reference, batched = reference.cuda(), batched.cuda()
    batched._non_blocking = True  # as FastPathHook sets it
    expected = reference(pseudo_collate(copy.deepcopy(batch)), True)
    narrow = functools.partial(stack_seg_collate, mask_dtype='uint8')
    for collate in (pseudo_collate, stack_seg_collate, narrow):
        got = batched(collate(copy.deepcopy(batch)), True)
        assert got['inputs'].is_cuda
        assert_same(expected, got)


@pytest.mark.parametrize(
    'sizes,kwargs,training',
    [
        ([(32, 48)] * 4, dict(size=(32, 48)), True),  # the batch path
        ([(32, 48)] * 2, dict(size=(40, 48)), True),  # padding: mmseg's
        ([(32, 48)] * 3, dict(), False),
    ],
)
def test_masks_narrowed_by_the_collate_come_back_in_their_dtype(
    sizes, kwargs, training
):
    # mmseg packs int64 masks; stack_seg_collate(mask_dtype='uint8') sends
    # them as uint8, and the result must still be mmseg's, int64 included.
    batch = packed(sizes, mask_dtype=torch.int64)
    reference, batched = both(mean=MEAN, std=STD, **kwargs)
    expected = reference(pseudo_collate(copy.deepcopy(batch)), training)
    assert expected['data_samples'][0].gt_sem_seg.data.dtype == torch.int64
    data = stack_seg_collate(copy.deepcopy(batch), mask_dtype='uint8')
    assert data[MASK_BATCH_KEY].dtype == torch.uint8
    assert data[MASK_DTYPE_KEY] == torch.int64
    before = copy.deepcopy(data)
    got = batched(data, training)
    assert_same(expected, got)
    assert_unchanged(before, data)
