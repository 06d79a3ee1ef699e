"""RAM + consistency: the data preprocessor step and the segmentor.

References: a NumPy re-statement of the authors' low-frequency amplitude
mix, the spectra of the produced views (np.fft), and torch's ``KLDivLoss``
as the authors' ``KD`` consistency.
"""

import math
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.runner import Runner
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import mmseg_dfq  # noqa: F401  (must precede mmseg.models: mmcv.ops stand-ins)
from mmseg_dfq.models.data_preprocessors import (
    RAMSegDataPreProcessor,
    low_freq_amplitude_mix,
)
from mmseg_dfq.models.segmentors import RAMEncoderDecoder, symmetric_kl

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# Looked up, not imported: ``mmseg.models`` must load after ``mmseg_dfq``.
SegDataPreProcessor = MODELS.get('SegDataPreProcessor')
RAM_BASE = osp.join(REPO, 'configs/_base_/models/dfq-ram_mit-b0.py')
RAM_DEMO = osp.join(REPO, 'configs/dfq/dfq_mit-tiny_demo_fundus_ram.py')
# The fundus configs' normalisation: pixels to [-1, 1], BGR -> RGB.
NORM = dict(mean=[127.5] * 3, std=[127.5] * 3, bgr_to_rgb=True)


def make_batch(domains, h=32, w=48, seed=0):
    """Raw uint8 BGR images and samples of the given domain indices.

    Each domain has its own brightness and contrast (different low-frequency
    amplitude); a bright disc carries label 1, its centre label 2.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.arange(h).float(), torch.arange(w).float(), indexing='ij'
    )
    inputs, samples = [], []
    for d in domains:
        cy, cx = h * (0.3 + 0.4 * torch.rand(2, generator=g))
        r = ((yy - cy) ** 2 + (xx - cx * w / h) ** 2).sqrt()
        label = (r < h / 5).long() + (r < h / 10).long()
        base = torch.tensor([40.0, 60.0, 80.0]).view(3, 1, 1) + 15 * d
        img = (
            base + (10 + 5 * d) * label + 12 * torch.rand(3, h, w, generator=g)
        )
        inputs.append(img.clamp(0, 255).round().to(torch.uint8))
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=label[None])
        s.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), domain_idx=d))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def numpy_ram(src, other, ratio, L=0.1):
    """The authors' low-frequency amplitude mix of one (C, H, W) image."""
    fft = np.fft.fft2(src, axes=(-2, -1))
    amp, pha = np.abs(fft), np.angle(fft)
    a_src = np.fft.fftshift(amp, axes=(-2, -1))
    a_trg = np.fft.fftshift(
        np.abs(np.fft.fft2(other, axes=(-2, -1))), axes=(-2, -1)
    )
    _, h, w = src.shape
    b = int(np.floor(np.amin((h, w)) * L))
    c_h, c_w = int(np.floor(h / 2.0)), int(np.floor(w / 2.0))
    win = (
        slice(None),
        slice(c_h - b, c_h + b + 1),
        slice(c_w - b, c_w + b + 1),
    )
    a_src[win] = a_src[win] * ratio + a_trg[win] * (1 - ratio)
    a_src = np.fft.ifftshift(a_src, axes=(-2, -1))
    return np.real(np.fft.ifft2(a_src * np.exp(1j * pha), axes=(-2, -1)))


@pytest.mark.parametrize('size', [(32, 32), (31, 45), (64, 40)])
def test_mix_matches_numpy_restatement(size):
    g = torch.Generator().manual_seed(1)
    src = torch.rand(3, 3, *size, generator=g) * 255
    other = torch.rand(3, 3, *size, generator=g) * 255
    ratio = torch.tensor([0.1, 0.5, 1.0])
    out = low_freq_amplitude_mix(src, other, ratio, 0.1)
    for i in range(3):
        expected = numpy_ram(
            src[i].double().numpy(), other[i].double().numpy(), float(ratio[i])
        )
        np.testing.assert_allclose(out[i].numpy(), expected, atol=2e-3)
    # r = 1 gives the image back.
    torch.testing.assert_close(out[2], src[2], atol=2e-3, rtol=0)


def raw_views(out, n):
    """Undo the normalisation and BGR -> RGB of a preprocessed 2n batch."""
    raw = (out['inputs'].double() * 127.5 + 127.5).numpy()[:, ::-1]
    return raw[:n], raw[n:]


def unit_phasor(z):
    """exp(i angle(z)) of complex values, without angle wrap-around."""
    return z / np.abs(z)


def test_view_spectrum_mixed_in_window_only_phase_kept():
    h, w = 40, 50
    batch = make_batch([2, 3, 4, 2], h, w)
    src = np.stack([x.double().numpy() for x in batch['inputs']])
    pre = RAMSegDataPreProcessor(
        ratios=(0.3,), clip_range=None, size=(h, w), **NORM
    )
    torch.manual_seed(0)
    out = pre(batch, training=True)
    originals, views = raw_views(out, 4)
    np.testing.assert_allclose(originals, src, atol=1e-3)

    b = math.floor(min(h, w) * 0.1)  # 4: a 9 x 9 window
    inside = np.zeros((h, w), bool)
    inside[h // 2 - b : h // 2 + b + 1, w // 2 - b : w // 2 + b + 1] = True
    shift = lambda x: np.fft.fftshift(x, axes=(-2, -1))  # noqa: E731
    for i, sample in enumerate(out['data_samples'][4:]):
        j, r = sample.ram_partner, sample.ram_ratio
        assert r == pytest.approx(0.3)
        f_src = shift(np.fft.fft2(src[i]))
        f_oth = shift(np.fft.fft2(src[j]))
        f_view = shift(np.fft.fft2(views[i]))
        scale = np.abs(f_src).max()
        atol = 1e-5 * scale
        # Outside the window the spectrum is the source's.
        np.testing.assert_allclose(
            f_view[:, ~inside], f_src[:, ~inside], atol=atol, rtol=0
        )
        # Inside, the amplitude is mixed ...
        mixed = r * np.abs(f_src) + (1 - r) * np.abs(f_oth)
        np.testing.assert_allclose(
            np.abs(f_view[:, inside]), mixed[:, inside], atol=atol, rtol=0
        )
        # ... and actually differs from the source's (different domains).
        assert np.abs(np.abs(f_view) - np.abs(f_src))[:, inside].max() > (
            100 * atol
        )
        # The phase is kept wherever it is defined.
        keep = np.abs(f_src) > 1e-3 * scale
        np.testing.assert_allclose(
            unit_phasor(f_view[keep]), unit_phasor(f_src[keep]), atol=1e-4
        )


def test_views_layout_labels_and_clipping():
    batch = make_batch([2, 3, 4], 32, 48)
    plain = SegDataPreProcessor(size=(32, 48), **NORM)
    expected = plain(make_batch([2, 3, 4], 32, 48), training=True)
    pre = RAMSegDataPreProcessor(size=(32, 48), **NORM)
    torch.manual_seed(0)
    out = pre(batch, training=True)
    assert out['inputs'].shape == (6, 3, 32, 48)
    # The originals come first, preprocessed as mmseg does.
    torch.testing.assert_close(out['inputs'][:3], expected['inputs'])
    samples = out['data_samples']
    assert [s.ram_view for s in samples] == [False] * 3 + [True] * 3
    for orig, view in zip(samples[:3], samples[3:]):
        assert view is not orig
        assert torch.equal(view.gt_sem_seg.data, orig.gt_sem_seg.data)
        assert view.domain_idx == orig.domain_idx
        assert view.ram_ratio in [k / 10 for k in range(1, 11)]
    # Clipped to the pixel range before normalisation: [-1, 1] after.
    assert out['inputs'].min() >= -1 and out['inputs'].max() <= 1


def test_eval_batches_pass_through_unchanged():
    pre = RAMSegDataPreProcessor(size=(32, 48), **NORM)
    plain = SegDataPreProcessor(size=(32, 48), **NORM)
    out = pre(make_batch([2, 2, 3]), training=False)
    expected = plain(make_batch([2, 2, 3]), training=False)
    torch.testing.assert_close(out['inputs'], expected['inputs'])
    assert len(out['data_samples']) == 3
    assert 'ram_view' not in out['data_samples'][0]


def test_partner_from_another_domain_every_eligible_one():
    domains = [2, 2, 3, 4, 4, 4]
    pre = RAMSegDataPreProcessor(**NORM)
    torch.manual_seed(0)
    seen = {i: set() for i in range(6)}
    for _ in range(60):
        partners = pre.pick_partners(make_batch(domains, 8, 8)['data_samples'])
        for i, j in enumerate(partners):
            assert domains[j] != domains[i], (i, j)
            seen[i].add(j)
    for i in range(6):
        eligible = {j for j in range(6) if domains[j] != domains[i]}
        assert seen[i] == eligible, (i, seen[i])

    # cross_domain=False: any other image, the same domain included.
    any_pre = RAMSegDataPreProcessor(cross_domain=False, **NORM)
    picked = set()
    for _ in range(40):
        batch = make_batch(domains, 8, 8)['data_samples']
        partners = any_pre.pick_partners(batch)
        assert all(j != i for i, j in enumerate(partners))
        picked.add(partners[0])
    assert 1 in picked  # sample 1 shares sample 0's domain


def test_ratio_draws_uniform_over_tenths():
    pre = RAMSegDataPreProcessor(**NORM)
    torch.manual_seed(0)
    draws = pre.draw_ratios(5000).numpy()
    values, counts = np.unique(np.round(draws, 6), return_counts=True)
    np.testing.assert_allclose(values, np.arange(1, 11) / 10)
    assert (np.abs(counts / 5000 - 0.1) < 0.02).all(), counts


def test_bad_batches_and_arguments_raise_clearly():
    pre = RAMSegDataPreProcessor(**NORM)
    with pytest.raises(ValueError, match='no partner from another domain'):
        pre(make_batch([3, 3]), training=True)
    batch = make_batch([2, 3])
    del batch['data_samples'][1].domain_idx
    with pytest.raises(ValueError, match="'domain_idx'"):
        pre(batch, training=True)
    batch = make_batch([2, 3])
    batch['inputs'][1] = batch['inputs'][1][:, :20]
    with pytest.raises(ValueError, match='share one size'):
        pre(batch, training=True)
    with pytest.raises(ValueError, match='ram_window'):
        RAMSegDataPreProcessor(ram_window=0.7)
    with pytest.raises(ValueError, match='ratios'):
        RAMSegDataPreProcessor(ratios=(0.5, 1.5))


def authors_kd(logits_a, logits_b):
    """The authors' KD: KLDivLoss both ways on softmax probabilities."""
    p, q = logits_a.softmax(1), logits_b.softmax(1)
    kl = torch.nn.KLDivLoss()
    return kl(p.log(), q) + kl(q.log(), p)


def test_symmetric_kl_is_the_authors_kd():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 8, 12, generator=g) * 3
    b = torch.randn(2, 3, 8, 12, generator=g) * 3
    torch.testing.assert_close(symmetric_kl(a, b), authors_kd(a, b))
    torch.testing.assert_close(symmetric_kl(a, b), symmetric_kl(b, a))
    assert symmetric_kl(a, a) == 0
    # Saturated logits: the authors' log of an underflowed 0 gives NaN.
    big = torch.zeros(1, 3, 1, 1)
    big[0, 0] = 200.0
    assert torch.isfinite(symmetric_kl(big, -big))


def build_ram_model(**pre_kwargs):
    """Small DFQ + RAM model (MiT-b0, 32-channel head), no download."""
    cfg = Config.fromfile(RAM_BASE)
    cfg.model.backbone.init_cfg = None
    cfg.model.decode_head.channels = 32
    cfg.model.data_preprocessor.update(size=(32, 48), **pre_kwargs)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def test_segmentor_losses_present_and_consistent():
    model = build_ram_model()
    assert isinstance(model, RAMEncoderDecoder)
    model.train()
    torch.manual_seed(0)
    data = model.data_preprocessor(make_batch([2, 3, 4, 2]), True)
    losses = model(**data, mode='loss')
    seg = ['loss_ce', 'loss_dice', 'loss_rdwt', 'acc_seg']
    expected = {f'decode.{k}' for k in seg} | {f'ram.decode.{k}' for k in seg}
    assert set(losses) == expected | {'ram.loss_consistency'}
    for key, value in losses.items():
        assert torch.isfinite(value).all(), key
    assert losses['ram.loss_consistency'] >= 0

    # Deterministic (eval mode): the consistency term is 0.5 x the authors'
    # KD between the two views' predictions at input size.
    model.eval()
    losses = model(**data, mode='loss')
    inputs = data['inputs']
    logits = [
        F.interpolate(
            model.decode_head(model.extract_feat(x)),
            size=inputs.shape[2:],
            mode='bilinear',
            align_corners=False,
        )
        for x in (inputs[:4], inputs[4:])
    ]
    reference = 0.5 * authors_kd(*logits)
    assert reference > 0
    torch.testing.assert_close(losses['ram.loss_consistency'], reference)


def test_identity_views_give_equal_losses_and_no_consistency():
    # r = 1 keeps every image: both halves then see the same pixels.
    model = build_ram_model(ratios=(1.0,)).eval()
    data = model.data_preprocessor(make_batch([2, 3, 4, 2]), True)
    torch.testing.assert_close(
        data['inputs'][4:], data['inputs'][:4], atol=1e-4, rtol=0
    )
    losses = model(**data, mode='loss')
    for key in ('loss_ce', 'loss_dice', 'loss_rdwt'):
        torch.testing.assert_close(
            losses[f'ram.decode.{key}'], losses[f'decode.{key}'], atol=1e-4,
            rtol=1e-4,
        )  # fmt: skip
    assert losses['ram.loss_consistency'] < 1e-8


def test_segmentor_refuses_batches_without_views():
    model = build_ram_model()
    plain = SegDataPreProcessor(size=(32, 48), **NORM)
    data = plain(make_batch([2, 3]), True)
    with pytest.raises(ValueError, match='RAMSegDataPreProcessor'):
        model(**data, mode='loss')
    with pytest.raises(ValueError, match='consistency_weight'):
        cfg = Config.fromfile(RAM_BASE).model
        cfg.backbone.init_cfg = None
        cfg.consistency_weight = -1
        MODELS.build(cfg)


def test_a_few_cpu_training_iterations():
    model = build_ram_model()
    model.train()
    optim = build_optim_wrapper(
        model, dict(type='OptimWrapper', optimizer=dict(type='Adam', lr=1e-3))
    )
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    for it in range(3):
        logs = model.train_step(make_batch([2, 2, 3, 4], seed=it), optim)
        assert torch.isfinite(logs['loss'])
        assert 'ram.loss_consistency' in logs
    moved = [
        k for k, p in model.named_parameters() if not torch.equal(p, before[k])
    ]
    assert len(moved) == len(before)


def test_demo_config_trains_through_the_runner(tmp_path, fundus_root):
    """The RAM demo config: real dataset, DomainMixSampler, Runner."""
    root = fundus_root
    cfg = Config.fromfile(RAM_DEMO)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.train_dataloader.dataset.data_root = root
    cfg.train_dataloader.batch_size = 6
    cfg.train_dataloader.sampler.domain_counts = [2, 2, 2]
    # Validation (plain batches through the same preprocessor) at the end.
    cfg.val_dataloader.dataset.data_root = root
    cfg.train_cfg = dict(
        type='IterBasedTrainLoop', max_iters=2, val_interval=2
    )
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = None
    cfg.default_hooks.pop('visualization')
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.log_level = 'WARNING'
    runner = Runner.from_cfg(cfg)
    runner.train()
    scalars = runner.message_hub.log_scalars
    for key in (
        'decode.loss_ce',
        'ram.decode.loss_ce',
        'ram.loss_consistency',
    ):
        assert np.isfinite(scalars[f'train/{key}'].current()), key
    assert 'val/Domain1/OD_Dice' in scalars


def test_plain_encoder_decoder_trains_on_both_views():
    """Without RAMEncoderDecoder the doubled batch is just a batch."""
    cfg = Config.fromfile(RAM_BASE)
    cfg.model.type = 'EncoderDecoder'
    cfg.model.pop('consistency_weight')
    cfg.model.backbone.init_cfg = None
    cfg.model.decode_head.channels = 32
    cfg.model.data_preprocessor.size = (32, 48)
    model = MODELS.build(cfg.model)
    data = model.data_preprocessor(make_batch([2, 3, 4]), True)
    assert data['inputs'].shape[0] == 6
    losses = model(**data, mode='loss')
    assert {'decode.loss_ce', 'decode.loss_dice'} <= set(losses)
    assert all(torch.isfinite(v).all() for v in losses.values())
