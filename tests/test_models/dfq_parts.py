"""Constants and builders shared by the DFQ model tests."""

import os.path as osp

import numpy as np
import torch
from mmengine.config import Config
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from ..helpers import REPO_ROOT

MODEL_DIR = osp.join(REPO_ROOT, 'configs', '_base_', 'models')
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
