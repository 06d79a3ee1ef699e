"""The stack fixes of mmseg_dfq.compat, exercised through mmseg and mmengine.

- Without compiled mmcv ops, mmseg's whole model registry resolves and
  mmseg's own SegFormer / PSPNet / FCN configs build and run; the stand-in
  ops equal independent references; ops without a stand-in name themselves.
- The DFQ fundus demo's checkpoints round-trip through the mmengine Runner
  (``load_from``, ``resume``) with torch's ``weights_only=True`` default,
  and a checkpoint whose pickle runs a command is refused.
- ``torchrun`` with two CPU processes trains the demo (gloo).
"""

import glob
import os
import os.path as osp
import pickle
import re

import mmseg
import mmseg.models
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import CheckpointLoader, Runner, load_checkpoint
from mmseg.models.losses.focal_loss import py_sigmoid_focal_loss
from mmseg.registry import MODELS

from mmseg_dfq.compat import HAS_COMPILED_MMCV_OPS, adapt_cfg_to_device
from mmseg_dfq.config import load_config

from ..helpers import FUNDUS_CONFIG, REPO_ROOT, TRAIN_ITERS

needs_fallback = pytest.mark.skipif(
    HAS_COMPILED_MMCV_OPS,
    reason='mmcv._ext exists: the real mmcv.ops are used, not the fallback',
)
MMSEG_CONFIGS = osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs')


# --------------------------------------------------------------------------
# mmseg without compiled mmcv ops
# --------------------------------------------------------------------------
@needs_fallback
def test_every_registered_model_resolves():
    registered = dict(MODELS.module_dict)
    # mmseg's heads (PointHead imports point_sample), losses (FocalLoss
    # imports sigmoid_focal_loss), backbones, and the DFQ components.
    expected = {
        'PointHead',
        'FocalLoss',
        'SegformerHead',
        'PSPHead',
        'FCNHead',
        'ResNetV1c',
        'MixVisionTransformer',
        'EncoderDecoder',
        'DFQHead',
        'RDWTMixVisionTransformer',
        'RDWTLoss',
    }
    assert expected <= set(registered), expected - set(registered)
    assert len(registered) > 80, len(registered)
    for name, obj in registered.items():
        assert MODELS.get(name) is obj, name


def _no_pretrained(cfg):
    cfg.model.pretrained = None
    if cfg.model.backbone.get('init_cfg') is not None:
        cfg.model.backbone.init_cfg = None
    return adapt_cfg_to_device(cfg)


@needs_fallback
@pytest.mark.parametrize(
    'config',
    [
        'segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py',
        'pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py',
        'fcn/fcn_r18-d8_4xb2-80k_cityscapes-512x1024.py',
    ],
)
def test_mmseg_package_configs_build_and_run(config):
    cfg = _no_pretrained(Config.fromfile(osp.join(MMSEG_CONFIGS, config)))
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    num_classes = cfg.model.decode_head.num_classes
    with torch.no_grad():
        logits = model.encode_decode(
            torch.randn(1, 3, 64, 96), [dict(img_shape=(64, 96))]
        )
    assert logits.shape == (1, num_classes, 64, 96)
    assert torch.isfinite(logits).all()


@needs_fallback
def test_op_without_stand_in_names_itself():
    with pytest.raises(ModuleNotFoundError, match='CrissCrossAttention'):
        from mmcv.ops import CrissCrossAttention  # noqa: F401
    # The stand-ins themselves import.
    from mmcv.ops import point_sample, sigmoid_focal_loss  # noqa: F401


def _bilinear_reference(feat, points, align_corners):
    """Sample (C, H, W) at normalised (x, y) points, zeros outside."""
    channels, height, width = feat.shape
    out = np.zeros((channels, len(points)))
    for p, (x, y) in enumerate(points):
        if align_corners:
            px, py = x * (width - 1), y * (height - 1)
        else:
            px, py = x * width - 0.5, y * height - 0.5
        x0, y0 = int(np.floor(px)), int(np.floor(py))
        for yi in (y0, y0 + 1):
            for xi in (x0, x0 + 1):
                if 0 <= xi < width and 0 <= yi < height:
                    w = (1 - abs(px - xi)) * (1 - abs(py - yi))
                    out[:, p] += w * feat[:, yi, xi]
    return out


@needs_fallback
@pytest.mark.parametrize('align_corners', [False, True])
def test_point_sample_matches_explicit_bilinear(align_corners):
    from mmcv.ops import point_sample

    gen = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    points = torch.rand(2, 20, 2, generator=gen, dtype=torch.float64)
    # Corners and edges, where zero padding matters.
    points[:, :4] = torch.tensor(
        [[0.0, 0.0], [1.0, 1.0], [0.02, 0.97], [0.5, 1.0]], dtype=torch.float64
    )
    out = point_sample(feat, points, align_corners=align_corners)
    assert out.shape == (2, 3, 20)
    for n in range(2):
        expected = _bilinear_reference(
            feat[n].numpy(), points[n].numpy(), align_corners
        )
        np.testing.assert_allclose(out[n].numpy(), expected, atol=1e-12)
    # A grid of points keeps its layout.
    grid = points.view(2, 4, 5, 2)
    out_grid = point_sample(feat, grid, align_corners=align_corners)
    assert out_grid.shape == (2, 3, 4, 5)
    torch.testing.assert_close(out_grid.flatten(2), out)


@needs_fallback
@pytest.mark.parametrize('gamma,alpha', [(2.0, 0.25), (1.5, 0.6)])
def test_sigmoid_focal_loss_matches_mmseg_python_version(gamma, alpha):
    from mmcv.ops import sigmoid_focal_loss

    gen = torch.Generator().manual_seed(1)
    num, classes = 32, 4
    pred = torch.randn(num, classes, generator=gen, dtype=torch.float64)
    # Index `classes` is background: every class is a negative.
    target = torch.randint(0, classes + 1, (num,), generator=gen)
    one_hot = torch.nn.functional.one_hot(target, classes + 1)[:, :classes]
    weight = torch.rand(num, generator=gen, dtype=torch.float64)

    ours = sigmoid_focal_loss(pred, target, gamma, alpha, None, 'none')
    ref = py_sigmoid_focal_loss(
        pred, one_hot, gamma=gamma, alpha=alpha, reduction='none'
    )
    torch.testing.assert_close(ours, ref)
    ours_sum = sigmoid_focal_loss(pred, target, gamma, alpha, weight, 'sum')
    ref_sum = py_sigmoid_focal_loss(
        pred, one_hot, weight=weight, gamma=gamma, alpha=alpha, reduction='sum'
    )
    torch.testing.assert_close(ours_sum, ref_sum)
    # mmcv's kernel averages over samples, not samples x classes.
    ours_mean = sigmoid_focal_loss(pred, target, gamma, alpha, None, 'mean')
    torch.testing.assert_close(ours_mean, ref.sum() / num)


# --------------------------------------------------------------------------
# Checkpoints of the DFQ demo through the mmengine Runner
# --------------------------------------------------------------------------
ROUND_TRIP_ITERS = 4


def _demo_cfg(work_dir, data_root, name, **extra):
    """The fundus demo config, 4 small iterations, checkpoint every 2."""
    options = {
        f'{loader}.dataset.data_root': data_root
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')
    }
    options.update(
        {
            'train_dataloader.batch_size': 3,
            'train_dataloader.sampler.domain_counts': [1, 1, 1],
            'train_cfg.max_iters': ROUND_TRIP_ITERS,
            'train_cfg.val_interval': 100,
            'default_hooks.checkpoint.interval': 2,
            'default_hooks.checkpoint.max_keep_ckpts': 10,
            'default_hooks.logger.interval': 1,
        }
    )
    cfg = load_config(FUNDUS_CONFIG, options, work_dir=str(work_dir))
    # mmengine keys its logger and message hub by experiment name.
    cfg.experiment_name = name
    cfg.update(extra)
    return cfg


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory, fundus_root):
    """Train the demo once in this process: (work_dir, final weights)."""
    work_dir = tmp_path_factory.mktemp('round_trip')
    runner = Runner.from_cfg(_demo_cfg(work_dir, fundus_root, 'rt_full'))
    runner.train()
    assert runner.iter == ROUND_TRIP_ITERS
    final = {k: v.clone() for k, v in runner.model.state_dict().items()}
    return str(work_dir), final


def test_checkpoint_loads_with_torch_default(demo_run):
    work_dir, final = demo_run
    path = osp.join(work_dir, f'iter_{ROUND_TRIP_ITERS}.pth')
    # torch's default is weights_only=True: the whole checkpoint (message
    # hub with HistoryBuffers, numpy values, optimizer, schedulers) passes
    # the allowlist.
    ckpt = torch.load(path)
    assert {
        'meta',
        'state_dict',
        'optimizer',
        'param_schedulers',
        'message_hub',
    } <= set(ckpt)
    assert ckpt['meta']['iter'] == ROUND_TRIP_ITERS
    assert set(ckpt['state_dict']) == set(final)
    for key, value in final.items():
        torch.testing.assert_close(ckpt['state_dict'][key], value)


def test_no_weights_only_false_in_code():
    # Loading with weights_only=False would let a checkpoint run code.
    pattern = re.compile(r'weights_only\s*=\s*False')
    files = glob.glob(osp.join(REPO_ROOT, 'mmseg_dfq', '**', '*.py'))
    files += glob.glob(osp.join(REPO_ROOT, 'tools', '**', '*.py'))
    assert files
    offenders = [f for f in files if pattern.search(open(f).read())]
    assert not offenders, offenders


def test_load_from_restores_weights(demo_run, tmp_path, fundus_root):
    work_dir, final = demo_run
    cfg = _demo_cfg(
        tmp_path,
        fundus_root,
        'rt_load',
        load_from=osp.join(work_dir, f'iter_{ROUND_TRIP_ITERS}.pth'),
    )
    runner = Runner.from_cfg(cfg)
    runner.load_or_resume()
    state = runner.model.state_dict()
    assert set(state) == set(final)
    for key, value in final.items():
        torch.testing.assert_close(state[key], value)
    assert runner.iter == 0  # load_from without resume starts afresh


class _RecordStart(Hook):
    """Record the state the train loop starts from (after resuming)."""

    def before_train(self, runner):
        self.iter = runner.iter
        optimizer = runner.optim_wrapper.optimizer
        self.optimizer_state = {
            idx: {
                k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()
            }
            for idx, s in optimizer.state_dict()['state'].items()
        }
        self.lr = optimizer.param_groups[0]['lr']
        self.scheduler_state = [
            s.state_dict() for s in runner.param_schedulers
        ]


def test_resume_continues_from_checkpoint(demo_run, tmp_path, fundus_root):
    work_dir, _ = demo_run
    path = osp.join(work_dir, 'iter_2.pth')
    saved = torch.load(path)
    record = _RecordStart()
    cfg = _demo_cfg(
        tmp_path, fundus_root, 'rt_resume', load_from=path, resume=True
    )
    runner = Runner.from_cfg(cfg)
    runner.register_hook(record)
    runner.train()

    assert record.iter == 2
    assert runner.iter == ROUND_TRIP_ITERS
    assert osp.isfile(osp.join(tmp_path, f'iter_{ROUND_TRIP_ITERS}.pth'))
    # Adam's moments and step counts are the checkpoint's.
    saved_state = saved['optimizer']['state']
    assert saved_state and set(record.optimizer_state) == set(saved_state)
    for idx, state in saved_state.items():
        for name in ('exp_avg', 'exp_avg_sq', 'step'):
            torch.testing.assert_close(
                record.optimizer_state[idx][name], state[name]
            )
    assert record.lr == saved['optimizer']['param_groups'][0]['lr']
    assert record.scheduler_state == saved['param_schedulers']
    assert record.scheduler_state[0]['last_step'] == 2


class _Exploit:
    """Pickles as a call to os.system, as a malicious checkpoint would."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_checkpoint_is_refused(tmp_path):
    marker = tmp_path / 'marker'
    path = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': {'w': _Exploit(f'touch {marker}')}}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    with pytest.raises(RuntimeError, match=re.escape(repr(path))):
        CheckpointLoader.load_checkpoint(path)
    with pytest.raises(RuntimeError, match=re.escape(repr(path))):
        load_checkpoint(torch.nn.Linear(2, 2), path)
    assert not marker.exists()


# --------------------------------------------------------------------------
# Two CPU processes with torchrun
# --------------------------------------------------------------------------
def test_torchrun_two_processes_train(fundus_dist_run):
    work_dir, log = fundus_dist_run
    assert f'Iter(train) [{TRAIN_ITERS}/{TRAIN_ITERS}]' in log, log[-3000:]
    assert osp.isfile(osp.join(work_dir, f'iter_{TRAIN_ITERS}.pth'))
    ckpt = torch.load(osp.join(work_dir, f'iter_{TRAIN_ITERS}.pth'))
    assert ckpt['meta']['iter'] == TRAIN_ITERS
    # DDP wrapped the model; the checkpoint holds the plain module's keys.
    assert not any(k.startswith('module.') for k in ckpt['state_dict'])
    # mmengine's environment report: two processes, gloo-backed DDP.
    assert 'Distributed training: True' in log, log[:3000]
    assert 'GPU number: 2' in log, log[:3000]
    assert 'MMDistributedDataParallel' in log
