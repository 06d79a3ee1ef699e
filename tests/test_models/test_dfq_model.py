"""Tests of the DFQ model: RDWT backbone and neck, losses, DFQHead, configs.

References are independent where one exists: mmseg's own
``MixVisionTransformer`` for the backbone, NumPy re-computations for the
RDWT and Dice losses, and the plain resize-then-fuse path for the head.
"""

import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import mmseg_dfq  # noqa: F401  (must precede mmseg.models: mmcv.ops stand-ins)
from mmseg_dfq.models.backbones.mit_rdwt import RDWTMixVisionTransformer
from mmseg_dfq.models.decode_heads.dfq_head import DFQHead
from mmseg_dfq.models.losses import (
    ClassDiceLoss,
    RDWTLoss,
    channel_covariance,
    instance_norm,
    off_diagonal_abs_sum,
)
from mmseg_dfq.models.necks.rdwt_neck import RDWTNeck

# Looked up, not imported: ``mmseg.models`` must load after ``mmseg_dfq``.
MixVisionTransformer = MODELS.get('MixVisionTransformer')

MODEL_DIR = osp.join(
    osp.dirname(__file__), '..', '..', 'configs', '_base_', 'models'
)
B0 = [32, 64, 160, 256]
B2 = [64, 128, 320, 512]
BN = dict(type='BN', requires_grad=True)
# MiT-b0 hyper-parameters; drop paths off so two builds agree numerically.
MIT_B0 = dict(
    in_channels=3,
    embed_dims=32,
    num_stages=4,
    num_layers=[2, 2, 2, 2],
    num_heads=[1, 2, 5, 8],
    patch_sizes=[7, 3, 3, 3],
    sr_ratios=[8, 4, 2, 1],
    out_indices=(0, 1, 2, 3),
    mlp_ratio=4,
    qkv_bias=True,
    drop_rate=0.0,
    attn_drop_rate=0.0,
    drop_path_rate=0.0,
)


@pytest.fixture(autouse=True, scope='module')
def mmseg_scope():
    """Build from configs in mmseg's scope, as the Runner does."""
    init_default_scope('mmseg')


def feats_for(channels, h=64, w=96, batch=2, seed=0):
    """Random multi-level maps at strides 4, 8, 16, 32 of an h x w image."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(
            batch, c, h // 2 ** (i + 2), w // 2 ** (i + 2), generator=g
        )
        for i, c in enumerate(channels)
    ]


def make_samples(batch, h, w, num_classes, seed=0):
    """SegDataSamples with random labels, as EncoderDecoder.loss wants."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(batch):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(
            data=torch.randint(0, num_classes, (1, h, w), generator=g)
        )
        s.set_metainfo(
            dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w))
        )
        samples.append(s)
    return samples


def build_base(name):
    """Build a model base config offline (no pretrained download)."""
    cfg = Config.fromfile(osp.join(MODEL_DIR, name))
    cfg.model.backbone.init_cfg = None
    return MODELS.build(cfg.model)


# ----------------------------------------------------------------- backbone
def test_backbone_shapes_every_stride_non_square():
    model = RDWTMixVisionTransformer(**MIT_B0).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 96))
    assert len(outs) == 4
    for i, (out, c) in enumerate(zip(outs, B0)):
        stride = 2 ** (i + 2)
        assert out.shape == (2, c, 64 // stride, 96 // stride)


def test_backbone_without_rdwt_equals_mmseg_mit():
    torch.manual_seed(0)
    ref = MixVisionTransformer(**MIT_B0).eval()
    torch.manual_seed(1)
    ours = RDWTMixVisionTransformer(rdwt_stages=(), **MIT_B0).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(ref(x), ours(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_backbone_whitens_selected_stages_and_feeds_them_on():
    torch.manual_seed(0)
    ref = MixVisionTransformer(**MIT_B0).eval()
    last = RDWTMixVisionTransformer(rdwt_stages=(3,), **MIT_B0).eval()
    first = RDWTMixVisionTransformer(rdwt_stages=(0,), **MIT_B0).eval()
    last.load_state_dict(ref.state_dict())
    first.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        plain, outs_last, outs_first = ref(x), last(x), first(x)
    for a, b in zip(plain[:3], outs_last[:3]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # Stage 4 is the plain one, instance-normalised (NumPy, biased var).
    p = plain[3].double().numpy()
    mu = p.mean(axis=(2, 3), keepdims=True)
    var = p.var(axis=(2, 3), keepdims=True)
    expected = (p - mu) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(outs_last[3].numpy(), expected, atol=1e-4)
    # Whitening stage 1 changes what stage 2 sees (inside the encoder).
    assert not torch.allclose(plain[1], outs_first[1], atol=1e-3)


def test_backbone_whitened_outputs_are_standardised():
    model = RDWTMixVisionTransformer(**MIT_B0).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 64, 96) * 3 + 1)
    for out in outs:
        mean = out.mean(dim=(2, 3))
        var = out.var(dim=(2, 3), unbiased=False)
        assert mean.abs().max() < 1e-4
        # Channels that are (near) constant get var ~0 through eps.
        assert ((var - 1).abs() < 1e-2).float().mean() > 0.99


def test_backbone_tiny_input_one_pixel_stage_trains():
    # 32 x 32 leaves stage 4 with a single position: F.instance_norm alone
    # refuses that in training mode.
    model = RDWTMixVisionTransformer(**MIT_B0).train()
    outs = model(torch.randn(2, 3, 32, 32))
    assert outs[3].shape == (2, 256, 1, 1)
    loss = RDWTLoss()(outs) + sum(o.sum() for o in outs)
    loss.backward()
    assert all(torch.isfinite(o).all() for o in outs)


def test_mmseg_mit_checkpoint_loads_strictly():
    torch.manual_seed(0)
    ref = MixVisionTransformer(**MIT_B0)
    ours = RDWTMixVisionTransformer(**MIT_B0)
    result = ours.load_state_dict(ref.state_dict(), strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v)


@pytest.mark.parametrize('stages', [(4,), (-1,), (0, 0), (0, 1, 2, 3, 4)])
def test_backbone_bad_rdwt_stages(stages):
    with pytest.raises(ValueError, match='rdwt_stages'):
        RDWTMixVisionTransformer(rdwt_stages=stages, **MIT_B0)


# --------------------------------------------------------------------- neck
def test_neck_normalises_selected_levels_only():
    feats = feats_for(B0)
    outs = RDWTNeck(in_index=[0, -1])(feats)
    assert len(outs) == 4
    torch.testing.assert_close(outs[1], feats[1])
    torch.testing.assert_close(outs[2], feats[2])
    for i in (0, 3):
        assert outs[i].mean(dim=(2, 3)).abs().max() < 1e-5
    with pytest.raises(IndexError, match='in_index'):
        RDWTNeck(in_index=[4])(feats)


# ---------------------------------------------------------------- RDWT loss
def numpy_rdwt(feats, stage_weights, loss_weight, eps=1e-5, mean=True):
    """Independent float64 RDWT loss: IN, covariance, sum_{j<k} |S_jk|."""
    total = 0.0
    for weight, feat in zip(stage_weights, feats):
        x = feat.detach().double().numpy()
        b, c, h, w = x.shape
        x = x.reshape(b, c, h * w)
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(
            x.var(-1, keepdims=True) + eps
        )
        per_sample = []
        for n in range(b):
            cov = x[n] @ x[n].T / (h * w - 1)
            rows, cols = np.triu_indices(c, k=1)
            per_sample.append(np.abs(cov[rows, cols]).sum())
        total += weight * np.mean(per_sample)
    return loss_weight * (total / len(feats) if mean else total)


def numpy_authors_objective(feats, layout='channels', eps=1e-5):
    """The authors' formula: 1e-4 * (sum_i mean_b sum|triu(S_i + eps I)|)/n.

    Returns the value and its constant diagonal part (sum_j |S_jj + eps|,
    averaged like the rest), so that value - diagonal is what RDWTLoss
    reports by default. ``layout='authors'`` groups the token-major values
    as their reshape without a transpose does.
    """
    value = diagonal = 0.0
    for feat in feats:
        x = feat.detach().double().numpy()
        b, c, h, w = x.shape
        if layout == 'authors':
            x = x.transpose(0, 2, 3, 1)
        x = x.reshape(b, c, h * w)
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(
            x.var(-1, keepdims=True) + eps
        )
        cov = np.einsum('bcn,bdn->bcd', x, x) / (h * w - 1) + eps * np.eye(c)
        value += np.abs(np.triu(cov)).sum(axis=(1, 2)).mean()
        diagonal += np.abs(np.diagonal(cov, axis1=1, axis2=2)).sum(-1).mean()
    n = len(feats)
    return 1e-4 * value / n, 1e-4 * diagonal / n


def test_rdwt_loss_matches_numpy():
    feats = [f * 2 + 0.5 for f in feats_for([8, 16, 24], h=32, w=48)]
    loss = RDWTLoss(loss_weight=0.3, stage_weights=[1.0, 0.5, 2.0])
    expected = numpy_rdwt(feats, [1.0, 0.5, 2.0], 0.3)
    assert loss(feats).dtype == torch.float32
    np.testing.assert_allclose(float(loss(feats)), expected, rtol=1e-5)
    # reduction='sum' keeps the earlier plain sum (4x the authors' gradient
    # with four levels).
    np.testing.assert_allclose(
        float(RDWTLoss(reduction='sum')(feats)),
        numpy_rdwt(feats, [1] * 3, 1e-4, mean=False),
        rtol=1e-5,
    )


@pytest.mark.parametrize('layout', ['channels', 'authors'])
def test_rdwt_loss_default_is_the_authors_objective(layout):
    feats = [f * 2 + 0.5 for f in feats_for(B0, h=64, w=96)]
    value, diagonal = numpy_authors_objective(feats, layout)
    ours = RDWTLoss(layout=layout)
    np.testing.assert_allclose(float(ours(feats)), value - diagonal, rtol=1e-5)
    with_diag = RDWTLoss(layout=layout, with_diagonal=True)
    np.testing.assert_allclose(float(with_diag(feats)), value, rtol=1e-5)
    # The diagonal is a constant (up to eps / var): the same gradient.
    grads = []
    for loss in (ours, with_diag):
        leaves = [f.clone().requires_grad_(True) for f in feats]
        loss(leaves).backward()
        grads.append(torch.cat([g.grad.flatten() for g in leaves]))
    scale = grads[0].abs().max().item()
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-3 * scale)
    assert grads[0].abs().sum() > 0


def test_rdwt_layouts_group_different_values():
    x = feats_for([8], h=64, w=96)[0] * 3 + 1
    by_channel = instance_norm(x, layout='channels')
    by_strip = instance_norm(x, layout='authors')
    assert by_channel.shape == by_strip.shape == x.shape
    # 'authors': each run of H*W consecutive token-major values is
    # standardised (NumPy re-statement of their reshape / permute).
    t = x.double().numpy().transpose(0, 2, 3, 1).reshape(2, 8, -1)
    t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True))
    expected = t.reshape(2, 16, 24, 8).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(by_strip.numpy(), expected, atol=1e-4)
    assert (by_channel - by_strip).abs().max() > 0.1
    with pytest.raises(ValueError, match='layout'):
        RDWTLoss(layout='tokens')


def test_rdwt_helpers_match_numpy():
    x = feats_for([6], h=32, w=48)[0]  # 8 x 12 maps
    normed = instance_norm(x)
    cov = channel_covariance(normed)
    flat = normed.double().numpy().reshape(2, 6, -1)
    ref = np.einsum('bcn,bdn->bcd', flat, flat) / (8 * 12 - 1)
    np.testing.assert_allclose(cov.numpy(), ref, atol=1e-5)
    rows, cols = np.triu_indices(6, k=1)
    np.testing.assert_allclose(
        off_diagonal_abs_sum(cov).numpy(),
        np.abs(ref[:, rows, cols]).sum(-1),
        rtol=1e-5,
    )


def hadamard(n):
    """Sylvester Hadamard matrix: mutually orthogonal +-1 rows."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def correlated_maps(mix, channels=6):
    """Channels = mix * shared + (1 - mix) * own pattern, all orthogonal.

    Rows 1.. of a Hadamard matrix are zero-mean and mutually orthogonal, so
    at ``mix = 0`` the channel covariance is exactly diagonal and the
    correlation of any two channels grows monotonically with ``mix``.
    """
    h = hadamard(64)[1:]
    shared, own = h[0], h[1 : channels + 1]
    maps = mix * shared[None] + (1 - mix) * own
    return torch.tensor(maps, dtype=torch.float32).reshape(1, channels, 8, 8)


def test_rdwt_loss_zero_when_decorrelated_and_monotonic():
    loss = RDWTLoss(loss_weight=1.0)
    assert float(loss([correlated_maps(0.0)])) < 1e-5
    values = [float(loss([correlated_maps(m)])) for m in np.linspace(0, 1, 6)]
    assert all(b > a for a, b in zip(values, values[1:]))
    # Fully shared: every pair has correlation ~1 -> C (C - 1) / 2 * 64/63.
    np.testing.assert_allclose(values[-1], 15 * 64 / 63, rtol=1e-3)


@pytest.mark.parametrize(
    'feat',
    [torch.full((2, 4, 5, 6), 3.0), torch.randn(2, 4, 1, 1)],
    ids=['constant', '1x1'],
)
def test_rdwt_loss_degenerate_maps_no_nan(feat):
    feat = feat.clone().requires_grad_(True)
    value = RDWTLoss(loss_weight=1.0)([feat])
    assert torch.isfinite(value) and abs(float(value)) < 1e-6
    value.backward()
    assert torch.isfinite(feat.grad).all()
    # The 1x1 map of a tiny input also passes through the backbone.
    assert torch.isfinite(instance_norm(feat)).all()


def test_rdwt_loss_finite_under_bf16_autocast():
    conv = torch.nn.Conv2d(3, 16, 3, padding=1)
    x = torch.randn(2, 3, 16, 24) * 50
    loss = RDWTLoss(loss_weight=1.0)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        feat = conv(x)
        value = loss([feat])
    assert feat.dtype == torch.bfloat16
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(conv.weight.grad).all()
    assert conv.weight.grad.abs().sum() > 0


def test_rdwt_loss_bad_arguments():
    with pytest.raises(ValueError, match='loss_weight'):
        RDWTLoss(loss_weight=-1)
    with pytest.raises(ValueError, match='stage_weights'):
        RDWTLoss(stage_weights=[1, 1])(feats_for([4, 4, 4], h=32, w=32))
    with pytest.raises(ValueError, match='no feature maps'):
        RDWTLoss()([])


# ---------------------------------------------------------------- Dice loss
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


# ------------------------------------------------------------------ DFQHead
def make_head(channels=B0, num_heads=(2, 5, 8), **kwargs):
    kwargs.setdefault('in_index', list(range(len(channels))))
    return DFQHead(
        in_channels=list(channels),
        channels=64,
        num_classes=3,
        num_heads=num_heads,
        norm_cfg=BN,
        **kwargs,
    )


@pytest.mark.parametrize('channels', [B0, B2], ids=['b0', 'b2'])
def test_head_output_shape(channels):
    head = make_head(channels).eval()
    with torch.no_grad():
        out = head(feats_for(channels))
    assert out.shape == (2, 3, 16, 24)


@pytest.mark.parametrize(
    'channels,num_heads',
    [(B0[:2], (2,)), (B0[:3], (2, 5))],
    ids=['2-levels', '3-levels'],
)
def test_head_fewer_levels(channels, num_heads):
    head = make_head(channels, num_heads).eval()
    with torch.no_grad():
        out = head(feats_for(channels))
    assert out.shape == (2, 3, 16, 24)
    assert len(head.blocks) == len(channels) - 1


def test_head_bad_arguments():
    with pytest.raises(ValueError, match='num_heads'):
        make_head(B0, num_heads=(2, 5))
    with pytest.raises(ValueError, match='do not divide'):
        make_head(B0, num_heads=(3, 5, 8))
    with pytest.raises(ValueError, match='at least two levels'):
        make_head([32], num_heads=())


def test_head_bad_inputs():
    head = make_head(B0)
    with pytest.raises(ValueError, match='channels'):
        head(feats_for(B2))
    head = make_head(B0, in_index=[0, 1, 2, 5])
    with pytest.raises(ValueError, match='in_index'):
        head(feats_for(B0))


def test_head_rdwt_in_index_selects_levels():
    feats = feats_for(B0, h=32, w=48)
    head = make_head(
        B0,
        loss_rdwt=dict(type='RDWTLoss', loss_weight=1.0),
        rdwt_in_index=[0, 2],
    ).train()
    losses = head.loss(feats, make_samples(2, 32, 48, 3), dict())
    expected = numpy_rdwt([feats[0], feats[2]], [1, 1], 1.0)
    np.testing.assert_allclose(float(losses['loss_rdwt']), expected, rtol=1e-5)


@pytest.mark.parametrize('size', [(64, 96), (72, 104)])
def test_head_level_resolution_fusion_equals_plain(size):
    torch.manual_seed(0)
    head = make_head(B0).eval()
    bn = head.fusion_conv.norm
    # Non-trivial running statistics so the norm is part of the check.
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    feats = feats_for(B0, *size)
    with torch.no_grad():
        fast = head(feats)
        head.fuse_at_level_resolution = False
        plain = head(feats)
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-4)


def test_dfq_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = build_base('dfq_mit-b0.py').train()
    losses = model.loss(torch.randn(2, 3, 64, 64), make_samples(2, 64, 64, 3))
    total = sum(v for k, v in losses.items() if 'loss' in k)
    total.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    missing = [n for n, p in params if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for _, p in params)


@pytest.mark.parametrize(
    'name,has_rdwt', [('dfq_mit-b0.py', True), ('dfqhead_mit-b0.py', False)]
)
def test_rdwt_loss_key_by_config(name, has_rdwt):
    model = build_base(name).train()
    losses = model.loss(torch.randn(2, 3, 64, 64), make_samples(2, 64, 64, 3))
    assert ('decode.loss_rdwt' in losses) is has_rdwt
    assert 'decode.loss_ce' in losses and 'decode.loss_dice' in losses
    if has_rdwt:
        assert float(losses['decode.loss_rdwt']) > 0


def test_resnet_rdwt_neck_dfq_head_from_config_dict():
    cfg = dict(
        type='EncoderDecoder',
        data_preprocessor=dict(
            type='SegDataPreProcessor',
            mean=[127.5] * 3,
            std=[127.5] * 3,
            pad_val=0,
            seg_pad_val=255,
        ),
        backbone=dict(
            type='ResNetV1c',
            depth=18,
            num_stages=4,
            out_indices=(0, 1, 2, 3),
            norm_cfg=BN,
        ),
        neck=dict(type='RDWTNeck'),
        decode_head=dict(
            type='DFQHead',
            in_channels=[64, 128, 256, 512],
            in_index=[0, 1, 2, 3],
            num_heads=(2, 4, 8),
            channels=64,
            num_classes=2,
            norm_cfg=BN,
            loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0),
            loss_rdwt=dict(type='RDWTLoss', loss_weight=1e-4),
        ),
        train_cfg=dict(),
        test_cfg=dict(mode='whole'),
    )
    model = MODELS.build(cfg)
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 96), mode='tensor')
    assert logits.shape == (1, 2, 16, 24)
    model.train()
    losses = model.loss(torch.randn(2, 3, 64, 64), make_samples(2, 64, 64, 2))
    assert {'decode.loss_ce', 'decode.loss_rdwt'} <= set(losses)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert all(
        p.grad is not None for p in model.parameters() if p.requires_grad
    )


@pytest.mark.parametrize(
    'name', ['segformer_mit-b0.py', 'dfqhead_mit-b0.py', 'dfq_mit-b0.py']
)
def test_b0_base_configs_build_and_run(name):
    model = build_base(name).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 96), mode='tensor')
    assert logits.shape == (1, 3, 16, 24)
    expected = 'DFQHead' if 'dfq' in name else 'SegformerHead'
    assert type(model.decode_head).__name__ == expected
    expected = (
        RDWTMixVisionTransformer
        if name.startswith('dfq_')
        else MixVisionTransformer
    )
    assert type(model.backbone) is expected
