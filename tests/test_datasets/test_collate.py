"""stack_seg_collate: pseudo_collate's batch, stacked where shapes agree."""

import copy
import io
import pickle
from multiprocessing.reduction import ForkingPickler

import pytest
import torch
import torch.multiprocessing  # noqa: F401  (registers the tensor reducers)
from mmengine.dataset import pseudo_collate
from mmengine.registry import FUNCTIONS
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample
from torch.utils.data import DataLoader

from mmseg_dfq.datasets import stack_seg_collate
from mmseg_dfq.datasets.collate import MASK_BATCH_KEY, MASK_DTYPE_KEY


def item(h, w, mask_hw=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    sample = SegDataSample()
    sample.set_metainfo(dict(img_path=f'{seed}.png', img_shape=(h, w)))
    mh, mw = mask_hw or (h, w)
    sample.gt_sem_seg = PixelData(
        data=torch.randint(0, 3, (1, mh, mw), generator=g, dtype=torch.uint8)
    )
    image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    return dict(inputs=image, data_samples=sample)


def test_registered_for_configs():
    assert FUNCTIONS.get('stack_seg_collate') is stack_seg_collate


def test_stacks_images_and_masks():
    items = [item(16, 24, seed=i) for i in range(3)]
    given = [d['data_samples'] for d in items]
    expected = pseudo_collate([dict(d) for d in items])
    images = [x.clone() for x in expected['inputs']]
    masks = [s.gt_sem_seg.data.clone() for s in expected['data_samples']]
    got = stack_seg_collate(items)
    assert got.keys() == {'inputs', 'data_samples', MASK_BATCH_KEY}
    assert got['inputs'].shape == (3, 3, 16, 24)
    assert torch.equal(got[MASK_BATCH_KEY], torch.stack(masks))
    # New sample objects: the given ones (a data set's, a cache's) keep
    # their own masks.
    assert all(a is not b for a, b in zip(given, got['data_samples']))
    assert all(
        s.gt_sem_seg.data.untyped_storage().data_ptr()
        != got[MASK_BATCH_KEY].untyped_storage().data_ptr()
        for s in given
    )
    assert all(torch.equal(a, b) for a, b in zip(got['inputs'], images))
    views = [s.gt_sem_seg.data for s in got['data_samples']]
    assert all(torch.equal(a, b) for a, b in zip(views, masks))
    # One storage: one shared-memory transfer from a worker.
    storages = {v.untyped_storage().data_ptr() for v in views}
    assert storages == {got[MASK_BATCH_KEY].untyped_storage().data_ptr()}
    assert [s.img_path for s in got['data_samples']] == [
        '0.png',
        '1.png',
        '2.png',
    ]


def test_shapes_that_differ_stay_lists():
    items = [item(16, 24, seed=0), item(20, 24, seed=1)]
    got = stack_seg_collate(items)
    assert isinstance(got['inputs'], list) and len(got['inputs']) == 2
    # Same images, masks of other sizes (validation): masks stay apart.
    items = [item(16, 24, (40, 50), seed=0), item(16, 24, (30, 50), seed=1)]
    got = stack_seg_collate(items)
    assert got['inputs'].shape == (2, 3, 16, 24)
    a, b = (s.gt_sem_seg.data for s in got['data_samples'])
    assert a.shape == (1, 40, 50) and b.shape == (1, 30, 50)
    assert a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()
    assert MASK_BATCH_KEY not in got


def test_other_batches_are_pseudo_collated():
    assert stack_seg_collate([1, 2]) == pseudo_collate([1, 2])
    items = [dict(inputs='a'), dict(inputs='b')]
    assert stack_seg_collate(items) == {'inputs': ['a', 'b']}


class _Items(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return item(16, 24, seed=i)


@pytest.mark.parametrize('collate', [pseudo_collate, stack_seg_collate])
def test_through_worker_processes(collate):
    """A worker pickles the batch to the main process: same values."""
    loader = DataLoader(
        _Items(), batch_size=4, num_workers=1, collate_fn=collate
    )
    batches = list(loader)
    assert len(batches) == 2
    for k, batch in enumerate(batches):
        if collate is stack_seg_collate:
            # A SegBatch arrives: images and masks in one storage, and
            # each sample's mask is its slice of the stacked masks.
            assert type(batch).__name__ == 'SegBatch'
            masks = batch[MASK_BATCH_KEY]
            assert (
                batch['inputs'].untyped_storage().data_ptr()
                == masks.untyped_storage().data_ptr()
            )
            views = [s.gt_sem_seg.data for s in batch['data_samples']]
            assert [v.data_ptr() for v in views] == [
                m.data_ptr() for m in masks
            ]
        for i in range(4):
            ref = item(16, 24, seed=4 * k + i)
            assert torch.equal(batch['inputs'][i], ref['inputs'])
            assert torch.equal(
                batch['data_samples'][i].gt_sem_seg.data,
                ref['data_samples'].gt_sem_seg.data,
            )


def _pickled_tensors(obj):
    """The tensors a DataLoader worker would send for ``obj``."""

    seen = []

    class Counting(ForkingPickler):
        def persistent_id(self, o):
            if isinstance(o, torch.Tensor):
                seen.append(o)
            return None

    Counting(io.BytesIO(), 2).dump(obj)
    return seen


def test_one_buffer_for_images_and_masks():
    """Images and masks of any dtypes are views of one aligned storage."""
    for image_dtype, mask_dtype in [
        (torch.uint8, torch.int64),
        (torch.float32, torch.uint8),
        (torch.float64, torch.int32),
    ]:
        items = []
        for i in range(3):
            d = item(5, 7, seed=i)
            d['inputs'] = d['inputs'].to(image_dtype)
            d['data_samples'].gt_sem_seg.data = d[
                'data_samples'
            ].gt_sem_seg.data.to(mask_dtype)
            items.append(d)
        images = torch.stack([d['inputs'] for d in items])
        masks = torch.stack([d['data_samples'].gt_sem_seg.data for d in items])
        got = stack_seg_collate(items)
        assert torch.equal(got['inputs'], images)
        assert torch.equal(got[MASK_BATCH_KEY], masks)
        assert got['inputs'].dtype == image_dtype
        assert got[MASK_BATCH_KEY].dtype == mask_dtype
        assert got['inputs'].is_contiguous()
        assert got[MASK_BATCH_KEY].is_contiguous()
        storage = got['inputs'].untyped_storage()
        assert (
            got[MASK_BATCH_KEY].untyped_storage().data_ptr()
            == storage.data_ptr()
        )
        # Aligned, and no overlap with the images.
        start = got[MASK_BATCH_KEY].data_ptr() - storage.data_ptr()
        assert start % 64 == 0
        assert start >= images.numel() * images.element_size()


def test_a_worker_sends_two_tensors_and_the_samples_get_their_views():
    items = [item(6, 8, seed=i) for i in range(5)]
    batch = stack_seg_collate(items)
    plain = dict(batch)
    # A plain dict would send the images, the masks and a view per sample.
    assert len(_pickled_tensors(plain)) == 2 + 5
    assert len(_pickled_tensors(batch)) == 2

    got = pickle.loads(ForkingPickler.dumps(batch))
    assert type(got).__name__ == 'SegBatch'
    assert list(got.keys()) == list(batch.keys())
    assert torch.equal(got['inputs'], batch['inputs'])
    assert torch.equal(got[MASK_BATCH_KEY], batch[MASK_BATCH_KEY])
    for i, (a, b) in enumerate(
        zip(got['data_samples'], batch['data_samples'])
    ):
        assert a.metainfo == b.metainfo
        assert torch.equal(a.gt_sem_seg.data, b.gt_sem_seg.data)
        assert (
            a.gt_sem_seg.data.data_ptr() == got[MASK_BATCH_KEY][i].data_ptr()
        )
    # The batch it was pickled from keeps its masks.
    assert all('gt_sem_seg' in s for s in batch['data_samples'])
    # torch's pin_memory clones a mapping with copy.copy: a shallow copy.
    clone = copy.copy(batch)
    assert type(clone) is type(batch) and clone == batch
    assert clone['data_samples'] is batch['data_samples']


def test_samples_changed_after_collation_are_sent_whole():

    batch = stack_seg_collate([item(6, 8, seed=i) for i in range(3)])
    other = torch.full((1, 6, 8), 7, dtype=torch.uint8)
    batch['data_samples'][1].gt_sem_seg = PixelData(data=other)
    assert len(_pickled_tensors(batch)) == 2 + 3
    got = pickle.loads(ForkingPickler.dumps(batch))
    assert torch.equal(got['data_samples'][1].gt_sem_seg.data, other)
    assert torch.equal(
        got['data_samples'][0].gt_sem_seg.data, batch[MASK_BATCH_KEY][0]
    )
    # A field with metainfo of its own is not a bare view either.
    batch = stack_seg_collate([item(6, 8, seed=i) for i in range(2)])
    batch['data_samples'][0].gt_sem_seg.set_metainfo(dict(note='kept'))
    got = pickle.loads(ForkingPickler.dumps(batch))
    assert got['data_samples'][0].gt_sem_seg.metainfo == dict(note='kept')


def test_bool_masks_and_a_batch_of_one():
    items = [item(4, 6, seed=0)]
    items[0]['data_samples'].gt_sem_seg.data = (
        items[0]['data_samples'].gt_sem_seg.data > 0
    )
    expected = items[0]['data_samples'].gt_sem_seg.data.clone()
    batch = stack_seg_collate(items)
    assert batch[MASK_BATCH_KEY].dtype == torch.bool
    got = pickle.loads(ForkingPickler.dumps(batch))
    assert len(_pickled_tensors(batch)) == 2
    assert torch.equal(got['data_samples'][0].gt_sem_seg.data, expected)
    assert torch.equal(got['inputs'][0], items[0]['inputs'])


class _Field(PixelData):
    """A PixelData subclass (module level: pickled by name)."""


@pytest.mark.parametrize(
    'change',
    ['subclass', 'extra field', 'other slice', 'strides', 'dtype'],
)
def test_masks_that_are_not_their_plain_slice_travel_whole(change):
    # Square masks: a transposed slice has the slice's shape and offset.
    batch = stack_seg_collate([item(6, 6, seed=i) for i in range(3)])
    masks = batch[MASK_BATCH_KEY]
    sample = batch['data_samples'][0]
    if change == 'subclass':
        sample.gt_sem_seg = _Field(data=masks[0])
    elif change == 'extra field':
        sample.gt_sem_seg.weights = torch.ones(1, 6, 6)
    elif change == 'other slice':
        sample.gt_sem_seg = PixelData(data=masks[1])
    elif change == 'strides':
        sample.gt_sem_seg = PixelData(data=masks[0].transpose(1, 2))
    else:
        sample.gt_sem_seg = PixelData(data=masks[0].view(torch.int8))
    assert len(_pickled_tensors(batch)) > 2
    got = pickle.loads(ForkingPickler.dumps(batch))
    a, b = got['data_samples'][0].gt_sem_seg, sample.gt_sem_seg
    assert type(a) is type(b)
    # BaseDataElement keeps its field names in a set: order is hash order.
    assert sorted(a.keys()) == sorted(b.keys())
    assert all(torch.equal(a.get(k), b.get(k)) for k in b.keys())
    assert a.data.stride() == b.data.stride()
    # The other samples are still their slices.
    assert torch.equal(got['data_samples'][1].gt_sem_seg.data, masks[1])


def test_torch_pin_memory_keeps_a_seg_batch(monkeypatch):
    """The pin-memory thread's pin_memory, with pinning stubbed on CPU."""
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned = []

    def fake_pin(tensor, *args, **kwargs):
        pinned.append(tensor)
        return tensor.clone()

    monkeypatch.setattr(torch.Tensor, 'pin_memory', fake_pin)
    batch = stack_seg_collate([item(6, 8, seed=i) for i in range(3)])
    got = pin_memory(batch)
    assert type(got) is type(batch)
    assert list(got.keys()) == list(batch.keys())
    # The two batch tensors are pinned; the samples are the same objects.
    assert len(pinned) == 2
    assert torch.equal(got['inputs'], batch['inputs'])
    assert torch.equal(got[MASK_BATCH_KEY], batch[MASK_BATCH_KEY])
    assert all(
        a is b for a, b in zip(got['data_samples'], batch['data_samples'])
    )


def test_compact_false_stacks_apart_in_a_plain_dict():
    items = [item(6, 8, seed=i) for i in range(3)]
    batch = stack_seg_collate(items, compact=False)
    assert type(batch) is dict
    assert (
        batch['inputs'].untyped_storage().data_ptr()
        != batch[MASK_BATCH_KEY].untyped_storage().data_ptr()
    )
    assert len(_pickled_tensors(batch)) == 2 + 3
    compact = stack_seg_collate([item(6, 8, seed=i) for i in range(3)])
    assert torch.equal(batch['inputs'], compact['inputs'])
    assert torch.equal(batch[MASK_BATCH_KEY], compact[MASK_BATCH_KEY])


def int64_items(n=4, values=(0, 1, 2, 255)):
    items = []
    for i in range(n):
        d = item(6, 8, seed=i)
        g = torch.Generator().manual_seed(10 + i)
        pick = torch.randint(0, len(values), (1, 6, 8), generator=g)
        d['data_samples'].gt_sem_seg.data = torch.tensor(values)[pick]
        items.append(d)
    return items


def test_mask_dtype_narrows_the_masks_for_the_trip():
    items = int64_items()
    masks = torch.stack([d['data_samples'].gt_sem_seg.data for d in items])
    assert masks.dtype == torch.int64 and int(masks.max()) == 255
    for compact in (True, False):
        got = stack_seg_collate(
            copy.deepcopy(items), compact=compact, mask_dtype='uint8'
        )
        assert got[MASK_DTYPE_KEY] == torch.int64
        assert got[MASK_BATCH_KEY].dtype == torch.uint8
        assert torch.equal(got[MASK_BATCH_KEY].long(), masks)
        for i, sample in enumerate(got['data_samples']):
            assert sample.gt_sem_seg.data.dtype == torch.uint8
            assert torch.equal(sample.gt_sem_seg.data.long(), masks[i])
    # Through a worker: two tensors, the masks 1 byte a pixel.
    got = pickle.loads(
        ForkingPickler.dumps(stack_seg_collate(items, mask_dtype=torch.uint8))
    )
    assert type(got).__name__ == 'SegBatch'
    assert got[MASK_DTYPE_KEY] == torch.int64
    assert got[MASK_BATCH_KEY].element_size() == 1
    assert torch.equal(got[MASK_BATCH_KEY].long(), masks)
    assert (
        got['data_samples'][2].gt_sem_seg.data.data_ptr()
        == got[MASK_BATCH_KEY][2].data_ptr()
    )


def test_mask_dtype_leaves_what_does_not_fit_or_gains_nothing():
    # A label of 300 does not fit in uint8: sent as it is, nothing to undo.
    got = stack_seg_collate(
        int64_items(values=(0, 1, 300)), mask_dtype='uint8'
    )
    assert got[MASK_BATCH_KEY].dtype == torch.int64
    assert MASK_DTYPE_KEY not in got
    # bool masks (1 byte already) stay as they are.
    bools = int64_items(2, values=(0, 1))
    for d in bools:
        d['data_samples'].gt_sem_seg.data = d[
            'data_samples'
        ].gt_sem_seg.data.bool()
    got = stack_seg_collate(bools, mask_dtype='uint8')
    assert (
        got[MASK_BATCH_KEY].dtype == torch.bool and MASK_DTYPE_KEY not in got
    )
    # uint8 masks already stay as they are.
    got = stack_seg_collate(
        [item(4, 4, seed=i) for i in range(2)], mask_dtype='uint8'
    )
    assert (
        got[MASK_BATCH_KEY].dtype == torch.uint8 and MASK_DTYPE_KEY not in got
    )
    # No masks: nothing to narrow.
    bare = [dict(inputs=d['inputs']) for d in int64_items(2)]
    assert MASK_DTYPE_KEY not in stack_seg_collate(bare, mask_dtype='uint8')
    for bad in ('float16', 'uint9', torch.bool, 3):
        with pytest.raises(ValueError, match='mask_dtype'):
            stack_seg_collate(int64_items(2), mask_dtype=bad)
