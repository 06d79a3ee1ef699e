"""tools/train.py, tools/test.py and tools/dist_train.sh, end to end on CPU.

A tiny mmseg model (MiT with 8-dim embeddings and one layer per stage +
SegFormer head, ``SyncBN`` in the head as in mmseg's configs) trains for a
few iterations on generated 32x32 PNGs in mmseg's ``BaseSegDataset`` layout
(``img_dir/{train,val}``, ``ann_dir/{train,val}``), once with one process
and once with two (torchrun, gloo), then tools/test.py writes the metrics
JSON. The tools run as subprocesses, exactly as a user runs them.
"""

import glob
import importlib.util
import json
import math
import os
import os.path as osp
import re
import signal
import socket
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import mmseg_dfq  # noqa: F401  (allowlists mmengine checkpoint types)

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
MAX_ITERS = 4

CONFIG_TEMPLATE = """
_base_ = [
    {schedule!r},
    'mmseg::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmseg_dfq'], allow_failed_imports=False)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[127.5, 127.5, 127.5],
        std=[127.5, 127.5, 127.5],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=(32, 32),
    ),
    backbone=dict(
        type='MixVisionTransformer',
        in_channels=3,
        embed_dims=8,
        num_stages=4,
        num_layers=[1, 1, 1, 1],
        num_heads=[1, 2, 4, 8],
        patch_sizes=[7, 3, 3, 3],
        sr_ratios=[8, 4, 2, 1],
        out_indices=(0, 1, 2, 3),
        mlp_ratio=2,
    ),
    decode_head=dict(
        type='SegformerHead',
        in_channels=[8, 16, 32, 64],
        in_index=[0, 1, 2, 3],
        channels=16,
        num_classes=2,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'),
)
metainfo = dict(
    classes=('background', 'blob'), palette=[[0, 0, 0], [255, 255, 255]]
)
def _dataset(split, pipeline):
    return dict(
        type='BaseSegDataset',
        metainfo=metainfo,
        data_root={data_root!r},
        data_prefix=dict(
            img_path='img_dir/' + split, seg_map_path='ann_dir/' + split
        ),
        img_suffix='.png',
        seg_map_suffix='.png',
        pipeline=pipeline,
    )
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=_dataset('train', train_pipeline),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=_dataset('val', test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU', 'mDice'])
test_evaluator = val_evaluator
max_iters = {max_iters}
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(
        type='PolyLR',
        power=0.9,
        eta_min=0.0,
        begin=0,
        end=max_iters,
        by_epoch=False,
    )
]
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval=max_iters // 2, max_keep_ckpts=2),
)
"""


@pytest.fixture(scope='module')
def tiny_config(tmp_path_factory):
    """Write 4 train / 2 val PNG pairs and the config; return its path."""
    root = tmp_path_factory.mktemp('tiny_seg')
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    for split, count in (('train', 4), ('val', 2)):
        os.makedirs(root / 'img_dir' / split)
        os.makedirs(root / 'ann_dir' / split)
        for i in range(count):
            cy, cx, r = rng.integers(10, 22), rng.integers(10, 22), 7
            label = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
            img = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
            img[label == 1] += 150
            name = f'{split}_{i}.png'
            cv2.imwrite(str(root / 'img_dir' / split / name), img)
            cv2.imwrite(str(root / 'ann_dir' / split / name), label)
    schedule = osp.join(REPO, 'configs', '_base_', 'schedules')
    config = root / 'tiny_segformer.py'
    config.write_text(
        CONFIG_TEMPLATE.format(
            schedule=osp.join(schedule, 'schedule_demo.py'),
            data_root=str(root),
            max_iters=MAX_ITERS,
        )
    )
    return str(config)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _tail(text, size=4000):
    return text[-size:] if text else '<empty>'


def run_tool(cmd, timeout, **env_extra):
    """Run a tool from the repo root; fail with the output's tail.

    Args:
        cmd (list[str]): The command.
        timeout (float): Seconds before the whole process group is killed.
        **env_extra: Extra environment variables.

    Returns:
        str: stdout + stderr.
    """
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (REPO, env.get('PYTHONPATH')) if p
    )
    # The tools' torchrun must be this interpreter's.
    env['PATH'] = os.pathsep.join(
        (osp.dirname(sys.executable), env.get('PATH', ''))
    )
    # One OpenMP thread per process: two torchrun workers with two threads
    # each on a 2-core machine oversubscribe it, and under that load the
    # gloo workers were seen to abort ('terminate called without an active
    # exception') now and then.
    env.setdefault('OMP_NUM_THREADS', '1')
    env.update(env_extra)
    # A session of its own, so a timeout also ends torchrun's workers.
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(
            f'{cmd} ran past {timeout} s\n--- stdout ---\n{_tail(out)}\n'
            f'--- stderr ---\n{_tail(err)}'
        )
    # stderr first: the traceback (torchrun's worker report) is there.
    assert proc.returncode == 0, (
        f'{cmd} exited with {proc.returncode}\n--- stderr ---\n'
        f'{_tail(err, 8000)}\n--- stdout ---\n{_tail(out, 2000)}'
    )
    return out + err


def test_train_then_test_one_process(tiny_config, tmp_path):
    work_dir = str(tmp_path / 'work')
    log = run_tool(
        [
            sys.executable,
            'tools/train.py',
            tiny_config,
            '--work-dir',
            work_dir,
        ],
        timeout=120,
    )
    assert f'Iter(train) [{MAX_ITERS}/{MAX_ITERS}]' in log, _tail(log)
    # The validation at the end ran over both images.
    assert re.search(r'Iter\(val\) \[2/2\].*mIoU: ', log), _tail(log)
    for it in (MAX_ITERS // 2, MAX_ITERS):
        assert osp.isfile(osp.join(work_dir, f'iter_{it}.pth'))
    checkpoint = osp.join(work_dir, f'iter_{MAX_ITERS}.pth')
    # The weights load with torch's weights_only default.
    state = torch.load(checkpoint)['state_dict']
    assert 'decode_head.fusion_conv.bn.running_mean' in state

    test_dir = str(tmp_path / 'test')
    pred_dir = str(tmp_path / 'preds')
    show_dir = str(tmp_path / 'show')
    log = run_tool(
        [
            sys.executable,
            'tools/test.py',
            tiny_config,
            checkpoint,
            '--work-dir',
            test_dir,
            '--out',
            pred_dir,
            '--show-dir',
            show_dir,
        ],
        timeout=120,
    )
    metrics_file = osp.join(test_dir, 'metrics.json')
    assert f'Metrics written to {metrics_file}' in log, _tail(log)
    with open(metrics_file) as f:
        metrics = json.load(f)
    assert set(metrics) == {'aAcc', 'mIoU', 'mAcc', 'mDice'}
    for value in metrics.values():
        assert isinstance(value, float) and 0 <= value <= 100
    # --out keeps mmseg's meaning: IoUMetric writes the predicted masks.
    assert sorted(os.listdir(pred_dir)) == ['val_0.png', 'val_1.png']
    # --show-dir paints every test image (DomainVisualizationHook).
    painted = glob.glob(osp.join(show_dir, '**', '*.png'), recursive=True)
    assert len(painted) == 2, painted


def test_two_processes_with_dist_train_and_test_sh(tiny_config, tmp_path):
    if not osp.isfile(osp.join(osp.dirname(sys.executable), 'torchrun')):
        pytest.skip('no torchrun next to this interpreter')
    work_dir = str(tmp_path / 'work')
    log = run_tool(
        [
            'bash',
            'tools/dist_train.sh',
            tiny_config,
            '2',
            '--work-dir',
            work_dir,
        ],
        timeout=150,
        PORT=str(_free_port()),
    )
    assert 'Distributed training: True' in log, _tail(log)
    assert 'GPU number: 2' in log, _tail(log)
    # gloo and DDP without device ids (mmseg_dfq.compat on a CPU host).
    assert "dist_cfg: {'backend': 'gloo'}" in log, _tail(log)
    assert 'device_ids=None' in log, _tail(log)
    # SyncBN (needs GPUs) became BN in the config the Runner logs.
    assert "norm_cfg=dict(requires_grad=True, type='BN')" in log, _tail(log)
    assert "type='SyncBN'" not in log, _tail(log)
    assert f'Iter(train) [{MAX_ITERS}/{MAX_ITERS}]' in log, _tail(log)
    # Each of the two ranks validated one of the two images.
    assert re.search(r'Iter\(val\) \[1/1\].*mIoU: ', log), _tail(log)
    checkpoint = osp.join(work_dir, f'iter_{MAX_ITERS}.pth')
    assert osp.isfile(checkpoint)

    metrics_file = str(tmp_path / 'dist_metrics.json')
    log = run_tool(
        [
            'bash',
            'tools/dist_test.sh',
            tiny_config,
            checkpoint,
            '2',
            '--work-dir',
            str(tmp_path / 'test'),
            '--metrics-json',
            metrics_file,
        ],
        timeout=150,
        PORT=str(_free_port()),
    )
    # Only the main process writes, with the metrics of both ranks.
    assert log.count('Metrics written to') == 1, _tail(log)
    assert re.search(r'Iter\(test\) \[1/1\].*mIoU: ', log), _tail(log)
    with open(metrics_file) as f:
        assert set(json.load(f)) == {'aAcc', 'mIoU', 'mAcc', 'mDice'}


# --------------------------------------------------------------------------
# The tools' functions, in process (fast)
# --------------------------------------------------------------------------
def _load_tool(name):
    spec = importlib.util.spec_from_file_location(
        f'_tool_{name}', osp.join(REPO, 'tools', f'{name}.py')
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_files_are_named(tmp_path, tiny_config):
    train, test = _load_tool('train'), _load_tool('test')
    missing = str(tmp_path / 'no_such_config.py')
    with pytest.raises(FileNotFoundError, match='no_such_config.py'):
        train.main([missing])
    with pytest.raises(FileNotFoundError, match='no_such.pth'):
        test.main([tiny_config, str(tmp_path / 'no_such.pth')])


def test_local_rank_spellings(monkeypatch):
    train = _load_tool('train')
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    assert train.parse_args(['c.py', '--local-rank', '1']).local_rank == 1
    assert os.environ['LOCAL_RANK'] == '1'
    assert train.parse_args(['c.py', '--local_rank', '3']).local_rank == 3
    # torchrun's LOCAL_RANK wins over the argument.
    assert os.environ['LOCAL_RANK'] == '1'


@pytest.mark.skipif(torch.cuda.is_available(), reason='AMP works on CUDA')
def test_amp_without_accelerator_is_refused(tiny_config, tmp_path):
    train = _load_tool('train')
    with pytest.raises(SystemExit, match='--amp needs one of'):
        train.main([tiny_config, '--amp', '--work-dir', str(tmp_path)])


def test_out_needs_an_evaluator_with_output_dir(tiny_config):
    from mmengine.config import Config

    test = _load_tool('test')
    cfg = Config.fromfile(tiny_config)
    test.set_prediction_dir(cfg, 'preds')
    assert cfg.test_evaluator['output_dir'] == 'preds'
    cfg.test_evaluator = dict(type='DomainMetric')
    with pytest.raises(SystemExit, match='DomainMetric has none'):
        test.set_prediction_dir(cfg, 'preds')


def test_per_case_needs_a_domain_metric(tiny_config):
    from mmengine.config import Config

    test = _load_tool('test')
    cfg = Config.fromfile(tiny_config)
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
