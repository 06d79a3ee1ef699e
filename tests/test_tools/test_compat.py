"""The stack fixes of mmseg_dfq.compat, checked against mmseg and mmengine.

- mmseg's models import and build without compiled mmcv ops; the stand-in
  ops equal independent references (explicit bilinear sampling, mmseg's own
  ``py_sigmoid_focal_loss``); an op without a stand-in names itself.
- mmengine checkpoints round-trip through the Runner (``load_from`` and
  ``resume``) with torch's ``weights_only=True`` default, and a checkpoint
  whose pickle runs code is refused with an error naming the file.
"""

import importlib
import os
import os.path as osp
import pickle
import pkgutil
import re

import mmseg
import mmseg.models
import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from mmengine.structures import PixelData
from mmseg.models.losses import focal_loss as mmseg_focal
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from torch.utils.data import Dataset

import mmseg_dfq  # noqa: F401  (conftest.py imports it before mmseg)
from mmseg_dfq.compat import HAS_COMPILED_MMCV_OPS, adapt_cfg_to_device

needs_fallback = pytest.mark.skipif(
    HAS_COMPILED_MMCV_OPS,
    reason='mmcv._ext is present: the real mmcv.ops are used, no fallback',
)
MMSEG_MODEL_CONFIGS = osp.join(
    osp.dirname(mmseg.__file__), '.mim', 'configs', '_base_', 'models'
)


# --------------------------------------------------------------------------
# mmseg without compiled mmcv ops
# --------------------------------------------------------------------------
def test_every_mmseg_model_module_imports():
    failed = {}
    names = [
        info.name
        for info in pkgutil.walk_packages(
            mmseg.models.__path__, prefix='mmseg.models.'
        )
    ]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:  # report every failing module at once
            failed[name] = repr(err)
    assert len(names) > 50, names
    assert not failed, failed
    # Every registered type resolves to a class or function.
    registered = dict(MODELS.module_dict)
    assert len(registered) > 80
    assert {'PointHead', 'FocalLoss', 'SegformerHead', 'PSPHead'} <= set(
        registered
    )
    for name, obj in registered.items():
        assert MODELS.get(name) is obj, name


def _segformer_b0(cfg):
    return cfg


def _pspnet_r18(cfg):
    # mmseg's pspnet_r18-d8 settings: a ResNet-18 keeps the test fast.
    cfg.model.backbone.depth = 18
    cfg.model.decode_head.update(in_channels=512, channels=32)
    cfg.model.auxiliary_head.update(in_channels=256, channels=16)
    return cfg


def _pointrend_r18(cfg):
    cfg.model.backbone.depth = 18
    cfg.model.neck.update(in_channels=[64, 128, 256, 512], out_channels=32)
    cfg.model.decode_head[0].update(in_channels=[32] * 4, channels=32)
    cfg.model.decode_head[1].update(in_channels=[32], channels=32)
    return cfg


@pytest.mark.parametrize(
    'config, shrink, head_types',
    [
        ('segformer_mit-b0.py', _segformer_b0, ['SegformerHead']),
        ('pspnet_r50-d8.py', _pspnet_r18, ['PSPHead']),
        # PointHead samples features with mmcv.ops.point_sample.
        ('pointrend_r50.py', _pointrend_r18, ['FPNHead', 'PointHead']),
    ],
)
def test_mmseg_models_build_train_and_predict(config, shrink, head_types):
    cfg = Config.fromfile(osp.join(MMSEG_MODEL_CONFIGS, config))
    cfg = adapt_cfg_to_device(shrink(cfg))
    model = MODELS.build(cfg.model)
    heads = model.decode_head
    heads = list(heads) if isinstance(heads, nn.ModuleList) else [heads]
    assert [type(h).__name__ for h in heads] == head_types

    torch.manual_seed(0)
    inputs = torch.randn(2, 3, 64, 48)
    samples = []
    for _ in range(2):
        sample = SegDataSample(
            metainfo=dict(
                img_shape=(64, 48), ori_shape=(64, 48), pad_shape=(64, 48)
            )
        )
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, 64, 48)))
        samples.append(sample)
    model.train()
    losses = model.loss(inputs, samples)
    total = sum(v for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        preds = model.predict(inputs, samples)
    assert preds[0].pred_sem_seg.data.shape == (1, 64, 48)


@needs_fallback
def test_op_without_fallback_names_itself():
    with pytest.raises(ModuleNotFoundError, match='CrissCrossAttention'):
        from mmcv.ops import CrissCrossAttention  # noqa: F401
    with pytest.raises(ModuleNotFoundError, match='mmcv-lite'):
        import mmcv.ops

        mmcv.ops.DeformConv2d  # noqa: B018
    # mmseg's own guard turns the missing op into its message at build time.
    with pytest.raises(RuntimeError, match='CrissCrossAttention'):
        MODELS.build(
            dict(type='CCHead', in_channels=8, channels=4, num_classes=2)
        )


def _bilinear_reference(feat, points, align_corners):
    """Explicit bilinear sampling with zero padding, in NumPy.

    Args:
        feat (np.ndarray): Shape (N, C, H, W).
        points (np.ndarray): Normalised (x, y) in [0, 1], shape (N, P, 2).
        align_corners (bool): Whether 0 and 1 are pixel centres (True) or
            pixel edges (False).

    Returns:
        np.ndarray: Shape (N, C, P).
    """
    n, c, h, w = feat.shape
    out = np.zeros((n, c, points.shape[1]))
    for b in range(n):
        for p, (x, y) in enumerate(points[b]):
            if align_corners:
                px, py = x * (w - 1), y * (h - 1)
            else:
                px, py = x * w - 0.5, y * h - 0.5
            x0, y0 = int(np.floor(px)), int(np.floor(py))
            for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
                for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
                    if 0 <= yy < h and 0 <= xx < w:
                        out[b, :, p] += wy * wx * feat[b, :, yy, xx]
    return out


@pytest.mark.parametrize('align_corners', [False, True])
def test_point_sample_matches_explicit_bilinear(align_corners):
    from mmcv.ops import point_sample

    rng = np.random.default_rng(0)
    feat = rng.standard_normal((2, 3, 5, 7))
    # Points inside, on the border and slightly outside the map.
    points = rng.uniform(-0.1, 1.1, size=(2, 40, 2))
    points[:, :4] = [[0, 0], [1, 1], [0, 1], [0.5, 0.5]]
    expected = _bilinear_reference(feat, points, align_corners)
    got = point_sample(
        torch.from_numpy(feat),
        torch.from_numpy(points),
        align_corners=align_corners,
    )
    assert got.shape == (2, 3, 40)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-10)
    # The grid form (N, Hg, Wg, 2) gives (N, C, Hg, Wg), same values.
    grid = point_sample(
        torch.from_numpy(feat),
        torch.from_numpy(points).view(2, 5, 8, 2),
        align_corners=align_corners,
    )
    np.testing.assert_allclose(
        grid.numpy().reshape(2, 3, 40), expected, atol=1e-10
    )


@needs_fallback
@pytest.mark.parametrize(
    'alpha, weight, class_weight, reduction',
    [
        (0.25, False, None, 'mean'),
        (0.5, True, [1.0, 2.0, 0.5, 1.5], 'sum'),
        ([0.2, 0.4, 0.6, 0.8], True, None, 'mean'),
        (0.75, False, None, 'none'),
    ],
)
def test_sigmoid_focal_loss_matches_mmseg_python_version(
    alpha, weight, class_weight, reduction
):
    # mmseg's sigmoid_focal_loss is the wrapper it runs with mmcv's CUDA
    # kernel; on this host it calls the stand-in. py_sigmoid_focal_loss is
    # mmseg's independent pure-PyTorch formula of the same loss.
    torch.manual_seed(0)
    num, classes = 50, 4
    pred = torch.randn(num, classes, dtype=torch.float64) * 3
    target = torch.randint(0, classes, (num,))
    one_hot = torch.nn.functional.one_hot(target, classes).double()
    sample_weight = torch.rand(num, dtype=torch.float64) if weight else None
    valid = (torch.rand(num, 1) > 0.2).double()
    kwargs = dict(
        gamma=2.0,
        alpha=alpha,
        class_weight=class_weight,
        valid_mask=valid,
        reduction=reduction,
    )
    got = mmseg_focal.sigmoid_focal_loss(
        pred, target, one_hot, sample_weight, **kwargs
    )
    expected = mmseg_focal.py_sigmoid_focal_loss(
        pred, one_hot, None, sample_weight, **kwargs
    )
    torch.testing.assert_close(got, expected)


@needs_fallback
def test_sigmoid_focal_loss_fallback_reductions_and_background():
    from mmcv.ops import sigmoid_focal_loss

    torch.manual_seed(1)
    pred = torch.randn(6, 3, dtype=torch.float64)
    # Index 3 (== num_classes) is mmdet's background: all classes negative.
    target = torch.tensor([0, 1, 2, 3, 1, 3])
    none = sigmoid_focal_loss(pred, target, 2.0, 0.25, None, 'none')
    prob = pred.sigmoid()
    pos = torch.zeros_like(pred)
    pos[[0, 1, 2, 4], [0, 1, 2, 1]] = 1
    expected = -(
        pos * 0.25 * (1 - prob) ** 2 * prob.log()
        + (1 - pos) * 0.75 * prob**2 * (1 - prob).log()
    )
    torch.testing.assert_close(none, expected)
    torch.testing.assert_close(
        sigmoid_focal_loss(pred, target, 2.0, 0.25, None, 'sum'),
        expected.sum(),
    )
    # mmcv's 'mean' divides by the number of samples, not of elements.
    torch.testing.assert_close(
        sigmoid_focal_loss(pred, target, 2.0, 0.25, None, 'mean'),
        expected.sum() / 6,
    )


def test_focal_loss_module_runs_on_cpu():
    loss = MODELS.build(dict(type='FocalLoss', gamma=2.0, alpha=0.25))
    torch.manual_seed(2)
    pred = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    # Probability-map targets take mmseg's CPU path unchanged.
    target = torch.nn.functional.one_hot(
        torch.randint(0, 3, (2, 8, 8)), 3
    ).permute(0, 3, 1, 2)
    got = loss(pred, target.double())
    p = pred.sigmoid()
    t = target.double()
    expected = -(
        t * 0.25 * (1 - p) ** 2 * p.log()
        + (1 - t) * 0.75 * p**2 * (1 - p).log()
    ).mean()
    torch.testing.assert_close(got, expected)


# --------------------------------------------------------------------------
# Checkpoints through the mmengine Runner
# --------------------------------------------------------------------------
class _ToyModel(BaseModel):
    """Linear regression, the smallest model the Runner trains."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, inputs, targets, mode='tensor'):
        out = self.linear(torch.stack(inputs))
        if mode == 'loss':
            return dict(loss=((out - torch.stack(targets)) ** 2).mean())
        return out


class _ToyDataset(Dataset):
    """Twelve fixed (input, target) pairs."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(12, 3, generator=gen)
        self.targets = torch.randn(12, 2, generator=gen)

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, idx):
        return dict(inputs=self.inputs[idx], targets=self.targets[idx])


class _RecordStart(Hook):
    """Records the state the training loop starts from (after resume)."""

    def before_train(self, runner):
        optimizer = runner.optim_wrapper.optimizer
        self.iter = runner.iter
        self.lr = optimizer.param_groups[0]['lr']
        self.optimizer_state = {
            k: {n: t.clone() for n, t in v.items() if torch.is_tensor(t)}
            for k, v in optimizer.state_dict()['state'].items()
        }
        self.scheduler_state = runner.param_schedulers[0].state_dict()


MAX_ITERS = 6
BASE_LR = 0.01


def _toy_runner(work_dir, name, **kwargs):
    return Runner(
        model=_ToyModel(),
        work_dir=str(work_dir),
        experiment_name=name,
        train_dataloader=dict(
            dataset=_ToyDataset(),
            sampler=dict(type='DefaultSampler', shuffle=True, seed=0),
            batch_size=4,
            num_workers=0,
        ),
        optim_wrapper=dict(
            optimizer=dict(type='Adam', lr=BASE_LR, betas=(0.9, 0.99))
        ),
        param_scheduler=dict(
            type='PolyLR',
            power=0.9,
            eta_min=0.0,
            begin=0,
            end=MAX_ITERS,
            by_epoch=False,
        ),
        train_cfg=dict(by_epoch=False, max_iters=MAX_ITERS),
        default_hooks=dict(
            checkpoint=dict(
                type='CheckpointHook', interval=MAX_ITERS // 2, by_epoch=False
            ),
            logger=dict(type='LoggerHook', interval=1),
        ),
        log_processor=dict(by_epoch=False),
        default_scope='mmengine',
        randomness=dict(seed=0),
        **kwargs,
    )


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
    """Train the toy model once: (work_dir, final state dict)."""
    work_dir = tmp_path_factory.mktemp('toy_run')
    runner = _toy_runner(work_dir, 'toy_full')
    runner.train()
    final = {k: v.clone() for k, v in runner.model.state_dict().items()}
    return work_dir, final


def test_checkpoints_load_with_weights_only_default(toy_run):
    work_dir, final = toy_run
    half = osp.join(work_dir, f'iter_{MAX_ITERS // 2}.pth')
    last = osp.join(work_dir, f'iter_{MAX_ITERS}.pth')
    assert osp.isfile(half) and osp.isfile(last)
    # Plain torch.load (weights_only=True by default on torch >= 2.6) reads
    # the full checkpoint: message hub, optimizer and scheduler included.
    ckpt = torch.load(last)
    assert set(ckpt) >= {'meta', 'state_dict', 'optimizer', 'message_hub'}
    for key, value in final.items():
        torch.testing.assert_close(ckpt['state_dict'][key], value)


def test_load_from_restores_weights(toy_run, tmp_path):
    work_dir, final = toy_run
    runner = _toy_runner(
        tmp_path,
        'toy_load',
        load_from=osp.join(work_dir, f'iter_{MAX_ITERS}.pth'),
    )
    assert not torch.equal(runner.model.linear.weight, final['linear.weight'])
    runner.load_or_resume()
    for key, value in runner.model.state_dict().items():
        torch.testing.assert_close(value, final[key])
    assert runner.iter == 0  # load_from without resume starts afresh


def test_resume_continues_with_saved_state(toy_run, tmp_path):
    work_dir, final = toy_run
    half = MAX_ITERS // 2
    ckpt_path = osp.join(work_dir, f'iter_{half}.pth')
    saved = torch.load(ckpt_path)
    record = _RecordStart()
    runner = _toy_runner(
        tmp_path,
        'toy_resume',
        load_from=ckpt_path,
        resume=True,
        custom_hooks=[record],
    )
    runner.train()

    assert record.iter == half
    # mmengine's PolyLR reaches eta_min at the last step, end - 1, so after
    # `half` steps lr = lr0 * (1 - half / (end - 1)) ** power.
    expected_lr = BASE_LR * (1 - half / (MAX_ITERS - 1)) ** 0.9
    assert record.lr == pytest.approx(expected_lr, rel=1e-12)
    assert saved['optimizer']['param_groups'][0]['lr'] == pytest.approx(
        expected_lr, rel=1e-12
    )
    assert record.scheduler_state == saved['param_schedulers'][0]
    assert set(record.optimizer_state) == set(saved['optimizer']['state'])
    for idx, state in saved['optimizer']['state'].items():
        for name in ('exp_avg', 'exp_avg_sq', 'step'):
            torch.testing.assert_close(
                record.optimizer_state[idx][name], state[name]
            )
    # Same data order and state: the resumed run ends where the full run
    # ended.
    for key, value in runner.model.state_dict().items():
        torch.testing.assert_close(value, final[key])


class _Exploit:
    """Pickles as a call to os.system, as a malicious checkpoint would."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_checkpoint_is_refused(tmp_path):
    marker = tmp_path / 'marker'
    path = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': {'w': _Exploit(f'echo pwned > {marker}')}}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    with pytest.raises(RuntimeError, match=re.escape(repr(path))):
        load_checkpoint(_ToyModel(), path)
    runner = _toy_runner(tmp_path / 'work', 'toy_evil', load_from=path)
    with pytest.raises(RuntimeError, match='Refusing to load checkpoint'):
        runner.load_or_resume()
    assert not marker.exists()
