"""The functions of tools/train.py and tools/test.py, in process (fast).

Argument handling and the config edits the tools make before a run; the
tools themselves run end to end (one process, two with dist_train.sh /
dist_test.sh) in tests/test_runtime/test_end_to_end.py and
tests/test_runtime/test_compat.py.
"""

import importlib.util
import json
import math
import os
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config

from ..helpers import FUNDUS_CONFIG, REPO_ROOT


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(
        f'_tool_{name}', osp.join(REPO_ROOT, 'tools', f'{name}.py')
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_files_are_named(tmp_path):
    train, test = _load_tool('train'), _load_tool('test')
    missing = str(tmp_path / 'no_such_config.py')
    with pytest.raises(FileNotFoundError, match='no_such_config.py'):
        train.main([missing])
    with pytest.raises(FileNotFoundError, match='no_such.pth'):
        test.main([FUNDUS_CONFIG, str(tmp_path / 'no_such.pth')])


def test_config_mistakes_end_in_one_line(tmp_path):
    # load_config's checks: a message, not a traceback.
    train, test = _load_tool('train'), _load_tool('test')
    checkpoint = tmp_path / 'x.pth'
    checkpoint.write_bytes(b'')
    option = ['--cfg-options', 'train_cfg.max_iter=2']
    with pytest.raises(
        SystemExit,
        match="error: --cfg-options train_cfg.max_iter.*'train_cfg.max_iters'",
    ):
        train.main([FUNDUS_CONFIG, *option])
    with pytest.raises(SystemExit, match='error: --cfg-options'):
        test.main([FUNDUS_CONFIG, str(checkpoint), *option])


def test_local_rank_spellings(monkeypatch):
    train = _load_tool('train')
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    assert train.parse_args(['c.py', '--local-rank', '1']).local_rank == 1
    assert os.environ['LOCAL_RANK'] == '1'
    assert train.parse_args(['c.py', '--local_rank', '3']).local_rank == 3
    # torchrun's LOCAL_RANK wins over the argument.
    assert os.environ['LOCAL_RANK'] == '1'


@pytest.mark.skipif(torch.cuda.is_available(), reason='AMP works on CUDA')
def test_amp_without_accelerator_is_refused(tmp_path):
    train = _load_tool('train')
    with pytest.raises(SystemExit, match='--amp needs one of'):
        train.main([FUNDUS_CONFIG, '--amp', '--work-dir', str(tmp_path)])


def _iou_config():
    """The fundus demo config tested with mmseg's IoUMetric."""
    cfg = Config.fromfile(FUNDUS_CONFIG)
    cfg.test_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
    return cfg


def test_out_needs_an_evaluator_with_output_dir():
    test = _load_tool('test')
    cfg = _iou_config()
    test.set_prediction_dir(cfg, 'preds')
    assert cfg.test_evaluator['output_dir'] == 'preds'
    cfg.test_evaluator = dict(type='DomainMetric')
    test.set_prediction_dir(cfg, 'preds')
    assert cfg.test_evaluator['output_dir'] == 'preds'
    # A metric without the argument (mmengine's DumpResults) is refused.
    cfg.test_evaluator = dict(type='DumpResults', out_file_path='r.pkl')
    with pytest.raises(SystemExit, match='DumpResults has none'):
        test.set_prediction_dir(cfg, 'preds')


def test_per_case_needs_a_domain_metric():
    test = _load_tool('test')
    cfg = _iou_config()
    # IoUMetric would swallow the argument silently.
    with pytest.raises(SystemExit, match="'IoUMetric'"):
        test.set_per_case_file(cfg, 'cases.csv')
    cfg.test_evaluator = [
        dict(type='IoUMetric'),
        dict(type='DomainMetric', mode='2d'),
    ]
    test.set_per_case_file(cfg, 'cases.csv')
    assert cfg.test_evaluator[1]['per_case_file'] == 'cases.csv'
    assert 'per_case_file' not in cfg.test_evaluator[0]


def test_metrics_json_values(tmp_path):
    test = _load_tool('test')
    path = test.dump_metrics(
        {
            'a': np.float32(1.5),
            'b': float('nan'),
            'c': torch.tensor(2.0),
            'd': math.inf,
            'e': 'n/a',
        },
        str(tmp_path / 'sub' / 'm.json'),
    )
    with open(path) as f:
        text = f.read()
    assert 'NaN' not in text and 'Infinity' not in text  # strict JSON
    assert json.loads(text) == {
        'a': 1.5,
        'b': None,
        'c': 2.0,
        'd': None,
        'e': 'n/a',
    }


def test_failure_message_names_files_then_hooks():
    test = _load_tool('test')
    assert test.failure_message([], []) is None
    left_out = [(['a.png'], 'ValueError: x'), (['v.nii.gz (slice 3)'], 'e')]
    hooks = [('DomainVisualizationHook', ['b.png'], 'AttributeError: y')] * 2
    message = test.failure_message(left_out, hooks)
    assert message.startswith('error: 2 test batch(es) failed')
    assert 'a.png' in message and 'v.nii.gz' in message
    assert 'DomainVisualizationHook (2 batches)' in message
    message = test.failure_message([], hooks)
    assert message.startswith('error: hooks failed after 2 tested')
    assert 'DomainVisualizationHook (2 batches)' in message
