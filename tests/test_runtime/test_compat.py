"""The stack fixes of mmseg_dfq.compat, exercised through mmseg and mmengine.

- Without compiled mmcv ops, every mmseg model module imports, the whole
  model registry (mmseg's and the DFQ components) resolves, and mmseg's own
  SegFormer / PSPNet / FCN / PointRend configs build, train and predict; the
  stand-in ops equal independent references (explicit bilinear sampling,
  mmseg's pure-PyTorch focal loss); ops without a stand-in name themselves.
- The DFQ fundus demo's checkpoints load with torch's ``weights_only=True``
  default and through the Runner's ``load_from``; a checkpoint whose pickle
  runs a command is refused with an error naming the file. (That ``resume``
  restores the optimizer, the schedulers and the iteration is checked, bit
  for bit, by tests/test_engine/test_resume.py.) mmengine's log names our
  loaders' backends ("local", "http", "openmmlab").
- ``tools/dist_train.sh`` with two CPU processes trains the demo: gloo, DDP
  without device ids, ``SyncBN`` turned into ``BN``.
- mmengine's FLOP counter counts torch's fused attention as the two matrix
  products of the explicit form: a DFQ model has the same FLOPs with
  ``fused_attention`` on and off, and no unsupported attention operator.
"""

import glob
import importlib
import os
import os.path as osp
import pickle
import pkgutil
import re
from unittest import mock

import mmseg
import mmseg.models
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.analysis import FlopAnalyzer, get_model_complexity_info
from mmengine.config import Config
from mmengine.runner import CheckpointLoader, Runner, load_checkpoint
from mmengine.structures import PixelData
from mmseg.models.losses import focal_loss as mmseg_focal
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from mmseg_dfq import compat
from mmseg_dfq.compat import HAS_COMPILED_MMCV_OPS, adapt_cfg_to_device
from mmseg_dfq.config import load_config

from ..helpers import (
    FUNDUS_CONFIG,
    REPO_ROOT,
    TRAIN_ITERS,
    tiny_dfq_head,
    tiny_rdwt_mit,
)

needs_fallback = pytest.mark.skipif(
    HAS_COMPILED_MMCV_OPS,
    reason='mmcv._ext exists: the real mmcv.ops are used, not the fallback',
)
MMSEG_CONFIGS = osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs')


# --------------------------------------------------------------------------
# mmseg without compiled mmcv ops
# --------------------------------------------------------------------------
def test_every_mmseg_model_module_imports_and_registry_resolves():
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
    # Every registered type resolves to its class or function.
    for name, obj in registered.items():
        assert MODELS.get(name) is obj, name


def _pointrend_r18(cfg):
    # mmseg's PointRend base with a ResNet-18 and 32-channel heads.
    cfg.model.backbone.depth = 18
    cfg.model.neck.update(in_channels=[64, 128, 256, 512], out_channels=32)
    cfg.model.decode_head[0].update(in_channels=[32] * 4, channels=32)
    cfg.model.decode_head[1].update(in_channels=[32], channels=32)
    return cfg


@pytest.mark.parametrize(
    'config, shrink, head_types',
    [
        (
            'segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py',
            None,
            ['SegformerHead'],
        ),
        (
            'pspnet/pspnet_r18-d8_4xb2-80k_cityscapes-512x1024.py',
            None,
            ['PSPHead'],
        ),
        ('fcn/fcn_r18-d8_4xb2-80k_cityscapes-512x1024.py', None, ['FCNHead']),
        # PointHead samples features with mmcv.ops.point_sample.
        (
            '_base_/models/pointrend_r50.py',
            _pointrend_r18,
            ['FPNHead', 'PointHead'],
        ),
    ],
)
def test_mmseg_configs_build_train_and_predict(config, shrink, head_types):
    cfg = Config.fromfile(osp.join(MMSEG_CONFIGS, config))
    if shrink is not None:
        cfg = shrink(cfg)
    # No download: random initialisation.
    cfg.model.pretrained = None
    if cfg.model.backbone.get('init_cfg') is not None:
        cfg.model.backbone.init_cfg = None
    cfg = adapt_cfg_to_device(cfg)
    model = MODELS.build(cfg.model)
    model.init_weights()
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
        logits = model.encode_decode(inputs, [s.metainfo for s in samples])
        preds = model.predict(inputs, samples)
    num_classes = heads[-1].num_classes
    assert logits.shape == (2, num_classes, 64, 48)
    assert torch.isfinite(logits).all()
    assert preds[0].pred_sem_seg.data.shape == (1, 64, 48)


@needs_fallback
def test_op_without_stand_in_names_itself():
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
    # The stand-ins themselves import.
    from mmcv.ops import point_sample, sigmoid_focal_loss  # noqa: F401


def _bilinear_reference(feat, points, align_corners):
    """Explicit bilinear sampling with zero padding, in NumPy.

    Args:
        feat (np.ndarray): Shape (N, C, H, W).
        points (np.ndarray): Normalised (x, y), shape (N, P, 2); outside
            [0, 1] the missing neighbours count as zeros.
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
    # Points inside, slightly outside the map, and on corners and edges,
    # where the zero padding matters.
    points = rng.uniform(-0.1, 1.1, size=(2, 40, 2))
    points[:, :6] = [
        [0, 0],
        [1, 1],
        [0, 1],
        [0.5, 0.5],
        [0.02, 0.97],
        [0.5, 1],
    ]
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
    assert grid.shape == (2, 3, 5, 8)
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
@pytest.mark.parametrize('gamma, alpha', [(2.0, 0.25), (1.5, 0.6)])
def test_sigmoid_focal_loss_stand_in_reductions_and_background(gamma, alpha):
    from mmcv.ops import sigmoid_focal_loss

    gen = torch.Generator().manual_seed(1)
    num, classes = 32, 4
    pred = torch.randn(num, classes, generator=gen, dtype=torch.float64)
    # Index `classes` is mmdet's background: every class is a negative.
    target = torch.randint(0, classes + 1, (num,), generator=gen)
    target[:2] = classes  # at least one background sample
    pos = torch.nn.functional.one_hot(target, classes + 1)[:, :classes]
    weight = torch.rand(num, generator=gen, dtype=torch.float64)

    none = sigmoid_focal_loss(pred, target, gamma, alpha, None, 'none')
    # The formula, written out...
    prob = pred.sigmoid()
    expected = -(
        pos * alpha * (1 - prob) ** gamma * prob.log()
        + (1 - pos) * (1 - alpha) * prob**gamma * (1 - prob).log()
    )
    torch.testing.assert_close(none, expected)
    # ... and mmseg's pure-PyTorch version of it.
    ref = mmseg_focal.py_sigmoid_focal_loss(
        pred, pos, gamma=gamma, alpha=alpha, reduction='none'
    )
    torch.testing.assert_close(none, ref)
    torch.testing.assert_close(
        sigmoid_focal_loss(pred, target, gamma, alpha, None, 'sum'),
        expected.sum(),
    )
    # A per-sample weight.
    torch.testing.assert_close(
        sigmoid_focal_loss(pred, target, gamma, alpha, weight, 'sum'),
        mmseg_focal.py_sigmoid_focal_loss(
            pred, pos, weight=weight, gamma=gamma, alpha=alpha, reduction='sum'
        ),
    )
    # mmcv's 'mean' divides by the number of samples, not of elements.
    torch.testing.assert_close(
        sigmoid_focal_loss(pred, target, gamma, alpha, None, 'mean'),
        expected.sum() / num,
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
# Checkpoints of the DFQ demo (the shared 2-process run)
# --------------------------------------------------------------------------
def _demo_runner(work_dir, data_root, name, **extra):
    """A Runner of the fundus demo config (``load_from`` and the like)."""
    options = {
        f'{loader}.dataset.data_root': data_root
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')
    }
    cfg = load_config(FUNDUS_CONFIG, options, work_dir=str(work_dir))
    # mmengine keys its logger and message hub by experiment name.
    cfg.experiment_name = name
    cfg.update(extra)
    return Runner.from_cfg(cfg)


def test_checkpoint_loads_with_torch_default(fundus_dist_run):
    work_dir, _ = fundus_dist_run
    path = osp.join(work_dir, f'iter_{TRAIN_ITERS}.pth')
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
    assert ckpt['meta']['iter'] == TRAIN_ITERS
    # Adam's moments of every parameter, at the last step.
    optimizer = ckpt['optimizer']['state']
    assert optimizer
    assert {int(s['step']) for s in optimizer.values()} == {TRAIN_ITERS}
    # DDP wrapped the model; the checkpoint holds the plain module's keys.
    assert not any(k.startswith('module.') for k in ckpt['state_dict'])
    # The checkpoints of a run hold different (trained) weights.
    earlier = torch.load(osp.join(work_dir, 'iter_2.pth'))['state_dict']
    assert set(earlier) == set(ckpt['state_dict'])
    assert any(
        not torch.equal(earlier[k], ckpt['state_dict'][k]) for k in earlier
    )


def test_no_weights_only_false_in_code():
    # Loading with weights_only=False would let a checkpoint run code.
    pattern = re.compile(r'weights_only\s*=\s*False')
    files = glob.glob(
        osp.join(REPO_ROOT, 'mmseg_dfq', '**', '*.py'), recursive=True
    )
    files += glob.glob(osp.join(REPO_ROOT, 'tools', '**', '*.py'))
    assert files
    offenders = [f for f in files if pattern.search(open(f).read())]
    assert not offenders, offenders


def test_load_from_restores_weights(fundus_dist_run, tmp_path, fundus_root):
    work_dir, _ = fundus_dist_run
    path = osp.join(work_dir, f'iter_{TRAIN_ITERS}.pth')
    saved = torch.load(path)['state_dict']
    runner = _demo_runner(tmp_path, fundus_root, 'rt_load', load_from=path)
    state = runner.model.state_dict()
    assert set(state) == set(saved)
    # The freshly built model is not the trained one...
    assert any(not torch.equal(state[k], saved[k]) for k in saved)
    runner.load_or_resume()
    # ... until load_from restores it.
    state = runner.model.state_dict()
    for key, value in saved.items():
        torch.testing.assert_close(state[key], value)
    assert runner.iter == 0  # load_from without resume starts afresh


class _Exploit:
    """Pickles as a call to os.system, as a malicious checkpoint would."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_checkpoint_is_refused(tmp_path, fundus_root):
    marker = tmp_path / 'marker'
    path = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': {'w': _Exploit(f'touch {marker}')}}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    with pytest.raises(RuntimeError, match=re.escape(repr(path))):
        CheckpointLoader.load_checkpoint(path)
    with pytest.raises(RuntimeError, match=re.escape(repr(path))):
        load_checkpoint(torch.nn.Linear(2, 2), path)
    runner = _demo_runner(
        tmp_path / 'work', fundus_root, 'rt_evil', load_from=path
    )
    with pytest.raises(RuntimeError, match='Refusing to load checkpoint'):
        runner.load_or_resume()
    assert not marker.exists()


def test_checkpoint_loaders_log_their_backend(tmp_path):
    path = str(tmp_path / 'w.pth')
    torch.save({'state_dict': {}}, path)
    assert CheckpointLoader._get_checkpoint_loader(path) is (
        compat.load_from_local
    )
    logged = []
    with mock.patch(
        'mmengine.runner.checkpoint.print_log',
        lambda msg, **kwargs: logged.append(msg),
    ):
        CheckpointLoader.load_checkpoint(path)
    assert logged == [f'Loads checkpoint by local backend from path: {path}']
    # The URL loaders (wrapped with advice) keep mmengine's names, which
    # its log cuts to name[10:].
    for url, backend in (
        ('https://example.org/w.pth', 'http'),
        ('open-mmlab://resnet50', 'openmmlab'),
    ):
        loader = CheckpointLoader._get_checkpoint_loader(url)
        assert loader.__module__ == 'mmseg_dfq.compat'
        assert loader.__name__[10:] == backend


# --------------------------------------------------------------------------
# Two CPU processes with tools/dist_train.sh
# --------------------------------------------------------------------------
def _sync_bn_nodes(node, where='model'):
    """Where in a config node ``SyncBN`` is still asked for."""
    found = []
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            found.append(where)
        for key, value in node.items():
            found += _sync_bn_nodes(value, f'{where}.{key}')
    elif isinstance(node, (list, tuple)):
        for idx, value in enumerate(node):
            found += _sync_bn_nodes(value, f'{where}[{idx}]')
    return found


def test_two_processes_train_with_dist_train_sh(fundus_dist_run):
    work_dir, log = fundus_dist_run
    assert f'Iter(train) [{TRAIN_ITERS}/{TRAIN_ITERS}]' in log, log[-3000:]
    for k in range(2, TRAIN_ITERS + 1, 2):
        assert osp.isfile(osp.join(work_dir, f'iter_{k}.pth'))
    # mmengine's environment report: two processes, gloo-backed DDP
    # without device ids (mmseg_dfq.compat on a CPU host).
    assert 'Distributed training: True' in log, log[:3000]
    assert 'GPU number: 2' in log, log[:3000]
    assert "dist_cfg: {'backend': 'gloo'}" in log, log[:3000]
    assert 'MMDistributedDataParallel' in log
    assert 'device_ids=None' in log

    # The config the Runner ran (dumped into the work dir): the demo's
    # SyncBN (mmseg's SegFormer base) became BN in the model.
    dumped = Config.fromfile(osp.join(work_dir, osp.basename(FUNDUS_CONFIG)))
    source = Config.fromfile(FUNDUS_CONFIG)
    assert source.model.decode_head.norm_cfg.type == 'SyncBN'
    assert dumped.model.decode_head.norm_cfg.type == 'BN'
    assert not _sync_bn_nodes(dumped.model), _sync_bn_nodes(dumped.model)
    assert dumped.env_cfg.dist_cfg.backend == 'gloo'
    assert dumped.model_wrapper_cfg.device_ids is None
    assert dumped.launcher == 'pytorch'


# --------------------------------------------------------------------------
# FLOPs of torch's fused attention
# --------------------------------------------------------------------------
class _Attention(nn.Module):
    """softmax(q k^T / sqrt(d)) v, fused or as two matmuls."""

    def __init__(self, fused):
        super().__init__()
        self.fused = fused

    def forward(self, q, k, v):
        if self.fused:
            return F.scaled_dot_product_attention(q, k, v)
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        return scores.softmax(dim=-1) @ v


def test_fused_attention_flops_are_the_explicit_matmuls():
    # Queries and keys of other lengths, values of another width.
    b, h, lq, lk, d, dv = 2, 3, 5, 7, 4, 6
    q = torch.randn(b, h, lq, d)
    k = torch.randn(b, h, lk, d)
    v = torch.randn(b, h, lk, dv)
    fused = FlopAnalyzer(_Attention(True), (q, k, v))
    explicit = FlopAnalyzer(_Attention(False), (q, k, v))
    # mmengine's matmul convention: one flop per multiply-add, q k^T then
    # (scores) v; the softmax and the scale are not counted.
    assert explicit.by_operator() == {'matmul': b * h * lq * lk * (d + dv)}
    assert fused.by_operator() == {
        'scaled_dot_product_attention': b * h * lq * lk * (d + dv)
    }
    assert not fused.unsupported_ops()


def _tiny_dfq(fused):
    """A two-stage RDWT MiT + DFQ head, its attention fused or explicit."""
    torch.manual_seed(0)
    return MODELS.build(
        dict(
            type='EncoderDecoder',
            backbone=tiny_rdwt_mit(fused_attention=fused),
            decode_head=tiny_dfq_head(fused_attention=fused),
        )
    ).eval()


def test_dfq_flops_do_not_depend_on_fused_attention():
    inputs = torch.rand(1, 3, 64, 64)
    flops, ops = {}, {}
    for fused in (True, False):
        model = _tiny_dfq(fused)
        # As mmseg's tools/analysis_tools/get_flops.py counts them.
        flops[fused] = get_model_complexity_info(
            model, inputs=inputs, show_table=False, show_arch=False
        )['flops']
        analyzer = FlopAnalyzer(model, (inputs,))
        ops[fused] = (analyzer.by_operator(), analyzer.unsupported_ops())
    assert flops[True] == flops[False]
    (fused_ops, fused_unsupported), (explicit_ops, _) = ops[True], ops[False]
    # MiT's attention (nn.MultiheadAttention: bmm) and the head's (matmul).
    assert fused_ops['scaled_dot_product_attention'] > 0
    assert fused_ops['scaled_dot_product_attention'] == (
        explicit_ops['bmm'] + explicit_ops['matmul']
    )
    assert 'bmm' not in fused_ops and 'matmul' not in fused_ops
    assert 'aten::scaled_dot_product_attention' not in fused_unsupported
