"""DFQ parts on mmpretrain backbones, composed from config keys only.

The ConvNeXt-T and DINOv2 ViT-S/14 fundus configs build (without and with
pretrained weights), give the pyramid DFQHead expects, and train a few
iterations on small generated images on CPU; the frozen DINOv2 variant
trains its neck and head only. Reference values are independent of our
code: ln(3) for the cross-entropy of an untrained 3-class head, the
Xavier-uniform bound of mmseg's MultiLevelNeck initialisation, the weights
written into a checkpoint file.
"""

import math
import os.path as osp
import urllib.error

import pytest
import torch
from mmengine.config import Config
from mmengine.model import Sequential
from mmengine.optim import build_optim_wrapper
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

import mmseg_dfq  # noqa: F401  (must precede mmseg.models: mmcv.ops stand-ins)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = dict(
    convnext='configs/dfq/dfq_convnext-t_fundus_d1.py',
    dinov2='configs/dfq/dfq_vit-s14-dinov2_fundus_d1-252.py',
    frozen='configs/dfq/dfq_vit-s14-dinov2-frozen_fundus_d1-252.py',
)
# Test sizes: ConvNeXt strides 4..32; DINOv2 a multiple of 14, non-square.
SIZES = dict(convnext=(64, 96), dinov2=(56, 84), frozen=(56, 84))


def load_cfg(name, pretrained=False):
    """The named config; the backbone's init_cfg dropped unless asked."""
    cfg = Config.fromfile(osp.join(REPO, CONFIGS[name]))
    cfg.model.data_preprocessor.size = SIZES[name]
    if not pretrained:
        cfg.model.backbone.init_cfg = None
    return cfg


def build(name, pretrained=False):
    """Build and initialise the named config's model (no download)."""
    torch.manual_seed(0)
    model = MODELS.build(load_cfg(name, pretrained).model)
    model.init_weights()
    return model


def make_batch(n, h, w, seed=0):
    """Raw uint8 images with a bright disc (label 1) and cup (label 2)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.arange(h).float(), torch.arange(w).float(), indexing='ij'
    )
    inputs, samples = [], []
    for i in range(n):
        cy, cx = h * (0.3 + 0.4 * torch.rand(2, generator=g))
        r = ((yy - cy) ** 2 + (xx - cx * w / h) ** 2).sqrt()
        label = (r < h / 5).long() + (r < h / 10).long()
        img = 60 + 60 * label + 20 * torch.rand(3, h, w, generator=g)
        inputs.append(img.clamp(0, 255).to(torch.uint8))
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=label[None])
        s.set_metainfo(
            dict(img_shape=(h, w), ori_shape=(h, w), domain_idx=2 + i % 3)
        )
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def check_standardised(level):
    """RDWTNeck output: every channel of every sample mean 0, var 1."""
    assert level.mean(dim=(2, 3)).abs().max() < 1e-4
    var = level.var(dim=(2, 3), unbiased=False)
    # var / (var + eps) of the instance norm: just under 1 on tiny maps.
    assert (var - 1).abs().max() < 0.05


def check_losses(losses):
    """The DFQ loss terms are present and in their sane ranges."""
    assert {'decode.loss_ce', 'decode.loss_dice', 'decode.loss_rdwt'} <= set(
        losses
    )
    for key, value in losses.items():
        assert torch.isfinite(value).all(), (key, value)
    # An untrained head predicts ~uniform over 3 classes: CE ~ ln 3.
    assert abs(float(losses['decode.loss_ce']) - math.log(3)) < 0.1
    assert 0 <= float(losses['decode.loss_dice']) <= 1
    assert float(losses['decode.loss_rdwt']) >= 0


def test_convnext_pyramid_and_losses():
    model = build('convnext').train()
    h, w = SIZES['convnext']
    data = model.data_preprocessor(make_batch(2, h, w), True)
    assert data['inputs'].shape == (2, 3, h, w)
    feats = model.extract_feat(data['inputs'])
    assert len(feats) == 4
    for i, (level, c) in enumerate(zip(feats, [96, 192, 384, 768])):
        stride = 2 ** (i + 2)
        assert level.shape == (2, c, h // stride, w // stride)
        check_standardised(level)
    logits = model.decode_head(feats)
    assert logits.shape == (2, 3, h // 4, w // 4)
    check_losses(model.loss(data['inputs'], data['data_samples']))


def test_dinov2_two_necks_chain_into_a_pyramid():
    model = build('dinov2').train()
    # A list of necks is built by mmengine into a Sequential, which
    # EncoderDecoder calls as its one neck.
    assert isinstance(model.neck, Sequential)
    mln, rdwt = model.neck
    assert type(mln).__name__ == 'MultiLevelNeck'
    assert type(rdwt).__name__ == 'RDWTNeck'
    # init_weights reached MultiLevelNeck through the Sequential: Xavier-
    # uniform (bound sqrt(6 / (384 + 384)) = 0.088) exceeds PyTorch's
    # default conv bound 1 / sqrt(384) = 0.051.
    weight = mln.lateral_convs[0].conv.weight
    assert 1 / math.sqrt(384) < weight.abs().max() <= math.sqrt(6 / 768)

    h, w = SIZES['dinov2']
    data = model.data_preprocessor(make_batch(2, h, w), True)
    vit = model.backbone(data['inputs'])
    assert [tuple(x.shape) for x in vit] == [(2, 384, h // 14, w // 14)] * 4
    feats = model.neck(vit)
    # Strides 3.5, 7, 14, 28.
    expected = [(h * 2 // 7, w * 2 // 7), (h // 7, w // 7)]
    expected += [(h // 14, w // 14), (h // 28, w // 28)]
    assert [tuple(x.shape[2:]) for x in feats] == expected
    for level in feats:
        assert level.shape[:2] == (2, 384)
        check_standardised(level)
    check_losses(model.loss(data['inputs'], data['data_samples']))


def params(module):
    return {k: p.detach().clone() for k, p in module.named_parameters()}


def changed(before, module):
    """Names of the parameters of ``module`` that differ from ``before``."""
    return {
        k
        for k, p in module.named_parameters()
        if not torch.equal(p, before[k])
    }


@pytest.mark.parametrize('name', ['convnext', 'dinov2', 'frozen'])
def test_a_few_cpu_training_iterations(name):
    cfg = load_cfg(name)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    backbone, neck = params(model.backbone), params(model.neck)
    head = params(model.decode_head)
    h, w = SIZES[name]
    for it in range(3):
        logs = model.train_step(make_batch(2, h, w, seed=it), optim)
        assert torch.isfinite(logs['loss']), logs
        assert logs['loss'] > 0
    # Every trainable part moved; a frozen ViT did not.
    assert changed(head, model.decode_head) == set(head)
    if name == 'frozen':
        assert not any(p.requires_grad for p in model.backbone.parameters())
        assert changed(backbone, model.backbone) == set()
        assert changed(neck, model.neck) == set(neck)
    else:
        assert all(p.requires_grad for p in model.backbone.parameters())
        # Layer-scale and norm parameters all get gradients; check the
        # first and last weights of the backbone at least.
        moved = changed(backbone, model.backbone)
        first, last = list(backbone)[0], list(backbone)[-1]
        assert {first, last} <= moved, (first, last)
        assert len(moved) > 0.9 * len(backbone)


def test_dinov2_backbone_learns_at_a_tenth_of_the_rate():
    cfg = load_cfg('dinov2')
    model = MODELS.build(cfg.model)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    lrs = {
        id(p): group['lr']
        for group in optim.optimizer.param_groups
        for p in group['params']
    }
    base = cfg.optim_wrapper.optimizer.lr
    for p in model.parameters():
        expected = base * 0.1 if id(p) in backbone_ids else base
        assert lrs[id(p)] == pytest.approx(expected)


@pytest.mark.parametrize('name', ['convnext', 'dinov2'])
def test_pretrained_weights_offline_stop_with_advice(
    name, tmp_path, monkeypatch
):
    """Without internet: the MiT configs' message, naming the way out."""
    # An empty download cache, and no network: urlopen fails as offline.
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError('offline (test)')

    monkeypatch.setattr(torch.hub, 'urlopen', offline)
    cfg = load_cfg(name, pretrained=True)
    url = cfg.model.backbone.init_cfg.checkpoint
    assert url.startswith('https://download.openmmlab.com/')
    model = MODELS.build(cfg.model)
    with pytest.raises(RuntimeError) as err:
        model.init_weights()
    message = str(err.value)
    assert 'Could not fetch the checkpoint' in message
    assert url in message
    assert 'model.backbone.init_cfg=None' in message


@pytest.mark.parametrize('name', ['convnext', 'dinov2'])
def test_pretrained_weights_load_from_mmpretrain_checkpoint(name, tmp_path):
    """A local copy in mmpretrain's layout (classifier keys) loads."""
    cfg = load_cfg(name, pretrained=True)
    backbone_cfg = cfg.model.backbone.copy()
    backbone_cfg.pop('init_cfg')
    torch.manual_seed(123)
    source = MODELS.build(backbone_cfg)
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    # Keys the segmentation backbone does not use (a classifier head, the
    # DINOv2 mask token) are skipped.
    state['head.fc.weight'] = torch.zeros(10, 4)
    state['backbone.mask_token'] = torch.zeros(1, 384)
    path = str(tmp_path / 'mmpretrain.pth')
    torch.save(dict(state_dict=state, meta=dict()), path)

    cfg.model.backbone.init_cfg.checkpoint = path
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    loaded = model.backbone.state_dict()
    assert set(loaded) == set(source.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(loaded[key], value), key
