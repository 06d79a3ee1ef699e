"""TolerantTestLoop: what it reports as left out is what the metrics lack.

A batch that cannot be loaded (the DataLoader raises while fetching it,
with or without workers) or tested is reported and left out, and the loop
goes on; a hook that fails after the evaluator has processed a batch is
reported as that hook's failure, and the batch stays in the metrics.
"""

import json
import os.path as osp
import sys
import types

import pytest
from mmengine.hooks import Hook
from mmengine.structures import BaseDataElement
from torch.utils.data import DataLoader, Dataset

from mmseg_dfq.engine import TolerantTestLoop
from mmseg_dfq.engine.nonfinite_hook import batch_files
from mmseg_dfq.engine.tolerant_test_loop import error_text
from mmseg_dfq.testing.synthetic import make_fundus

from ..helpers import (
    FUNDUS_CONFIG,
    TEST,
    data_options,
    run_status,
    write_checkpoint,
)


def _sample(path, **meta):
    return BaseDataElement(metainfo=dict(img_path=path, **meta))


class _Metric:
    def __init__(self):
        self.results = []


class _Recorder(Hook):
    """Records the batches it saw; raises from ``after_test_iter`` if asked."""

    def __init__(self, fail=False):
        self.fail = fail
        self.seen = []

    def after_test_iter(self, runner, batch_idx, data_batch, outputs):
        self.seen.append(batch_idx)
        if self.fail:
            raise AttributeError("'tuple' object has no attribute 'shape'")


def _loop(hooks, process, dataloader=None):
    """A TolerantTestLoop around stand-ins of the runner and evaluator."""

    def call_hook(fn_name, **kwargs):
        for hook in hooks:
            getattr(hook, fn_name)(runner, **kwargs)

    runner = types.SimpleNamespace(
        hooks=hooks,
        call_hook=call_hook,
        model=types.SimpleNamespace(
            test_step=lambda batch: list(batch['data_samples'])
        ),
    )
    metric = _Metric()
    loop = TolerantTestLoop.__new__(TolerantTestLoop)
    loop._runner = runner
    loop.dataloader = dataloader
    loop.evaluator = types.SimpleNamespace(
        metrics=[metric],
        process=lambda data_samples, data_batch: process(metric, data_samples),
    )
    loop.fp16 = False
    loop.test_loss = {}
    loop.failures, loop.hook_failures = [], []
    loop._paths = None
    return loop, metric


def test_error_in_process_leaves_the_whole_batch_out():
    def process(metric, samples):
        for sample in samples:
            if sample.img_path.endswith('bad.png'):
                raise ValueError('bad prediction')
            metric.results.append(sample.img_path)

    hook = _Recorder()
    loop, metric = _loop([hook], process)
    loop.run_iter(0, dict(data_samples=[_sample('/d/a.png')]))
    # The first sample was processed before the second failed: dropped too.
    batch = dict(data_samples=[_sample('/d/b.png'), _sample('/d/bad.png')])
    loop.run_iter(1, batch)
    assert metric.results == ['/d/a.png']
    assert loop.failures == [
        (['/d/b.png', '/d/bad.png'], 'ValueError: bad prediction')
    ]
    assert hook.seen == [0] and not loop.hook_failures


def test_hook_error_after_process_keeps_the_batch():
    def process(metric, samples):
        metric.results.extend(s.img_path for s in samples)

    failing, after = _Recorder(fail=True), _Recorder()
    loop, metric = _loop([failing, after], process)
    for idx, name in enumerate(('a', 'b')):
        loop.run_iter(idx, dict(data_samples=[_sample(f'/d/{name}.png')]))
    # Both batches are in the metrics, not reported as left out.
    assert metric.results == ['/d/a.png', '/d/b.png']
    assert loop.failures == []
    assert [f[:2] for f in loop.hook_failures] == [
        ('_Recorder', ['/d/a.png']),
        ('_Recorder', ['/d/b.png']),
    ]
    assert 'no attribute' in loop.hook_failures[0][2]
    # The hooks after the failing one still ran.
    assert after.seen == [0, 1]


class _Images(Dataset):
    """Five samples; reading number 2 fails with an error naming its file."""

    def __len__(self):
        return 5

    def get_data_info(self, i):
        return dict(img_path=f'/data/img{i}.png', seg_map_path=f'/m/{i}.png')

    def __getitem__(self, i):
        if i == 2:
            raise ValueError('cannot decode image (corrupt?): /data/img2.png')
        return dict(data_samples=[_sample(f'/data/img{i}.png')])


def _first(batch):
    return batch[0]


@pytest.mark.parametrize('workers', [0, 1])
def test_error_while_fetching_a_batch_is_reported_and_skipped(workers):
    def process(metric, samples):
        metric.results.extend(s.img_path for s in samples)

    loader = DataLoader(
        _Images(), batch_size=1, num_workers=workers, collate_fn=_first
    )
    hook = _Recorder()
    loop, metric = _loop([hook], process, loader)
    for idx, batch in loop._batches():
        loop.run_iter(idx, batch)
    # torch's iterators go on after the failed batch, in the main process
    # and in a worker alike.
    assert metric.results == [f'/data/img{i}.png' for i in (0, 1, 3, 4)]
    assert hook.seen == [0, 1, 3, 4]
    ((files, message),) = loop.failures
    assert files == ['/data/img2.png']
    # A worker's error arrives with its traceback as its message.
    assert message == (
        'ValueError: cannot decode image (corrupt?): /data/img2.png'
    )


def test_error_text_of_a_worker_error():
    err = ValueError(
        'Caught ValueError in DataLoader worker process 0.\n'
        'Original Traceback (most recent call last):\n'
        '  File "x.py", line 1, in f\n'
        '    raise ValueError(msg)\n'
        'ValueError: cannot decode mask: /d/m.png\n'
        'second line\n'
    )
    assert error_text(err) == 'ValueError: cannot decode mask: /d/m.png'
    assert error_text(KeyError('k')) == "KeyError: 'k'"
    assert error_text(RuntimeError()) == 'RuntimeError'


def test_batch_files_of_a_tta_batch():
    views = [
        [_sample('/d/a.nii.gz', slice_index=3), _sample('/d/b.png')],
        [_sample('/d/a.nii.gz', slice_index=3), _sample('/d/b.png')],
    ]
    # TestTimeAug: one list of samples per view (tuples after collation).
    batch = dict(inputs=[(None, None)] * 2, data_samples=views)
    assert batch_files(batch) == ['/d/a.nii.gz (slice 3)', '/d/b.png']
    assert batch_files(dict(data_samples=views[0])) == batch_files(batch)


@pytest.fixture(scope='module')
def fundus_ckpt(tmp_path_factory):
    from mmseg_dfq.datasets import FundusDGDataset

    path = tmp_path_factory.mktemp('loop_ckpt') / 'fundus.pth'
    return write_checkpoint(FUNDUS_CONFIG, str(path), FundusDGDataset.METAINFO)


@pytest.mark.parametrize('workers', [0, 1])
def test_test_tool_goes_on_past_an_unreadable_image(
    workers, tmp_path, fundus_ckpt
):
    root = str(tmp_path / 'fundus')
    make_fundus(root, seed=0, cases=5, size=64)
    with open(osp.join(root, 'Domain1_test.list')) as f:
        bad = osp.join(root, f.readline().split()[0])
    with open(bad, 'wb') as f:
        f.write(b'not a PNG')
    work_dir = str(tmp_path / 'work')
    status, out = run_status(
        [
            sys.executable,
            TEST,
            FUNDUS_CONFIG,
            fundus_ckpt,
            '--work-dir',
            work_dir,
            '--cfg-options',
            *data_options(root),
            f'test_dataloader.num_workers={workers}',
        ]
    )
    assert status == 1, out[-3000:]
    assert 'Traceback' not in out, out[-3000:]
    # Reported with the loader's message, which names the file.
    (line,) = [
        x for x in out.splitlines() if 'could not be loaded and is left' in x
    ]
    assert f'({bad})' in line and f': {bad}' in line, line
    assert f'left out of the metrics: {bad}' in out
    with open(osp.join(work_dir, 'metrics.json')) as f:
        metrics = json.load(f)
    # Domain1 has 2 test images: the other one was evaluated, as were all
    # images of the other domains.
    assert metrics['Domain1/n_cases'] == 1
    assert metrics['Domain2/n_cases'] == 2


def test_a_distributed_test_cannot_leave_a_batch_out(monkeypatch):
    from mmseg_dfq.engine import tolerant_test_loop

    def process(metric, samples):
        raise ValueError('bad prediction')

    loop, metric = _loop([_Recorder()], process)
    monkeypatch.setattr(tolerant_test_loop, 'get_world_size', lambda: 2)
    batch = dict(data_samples=[_sample('/d/bad.png')])
    with pytest.raises(RuntimeError, match='distributed test cannot leave'):
        loop.run_iter(0, batch)
    assert not loop.failures and metric.results == []
