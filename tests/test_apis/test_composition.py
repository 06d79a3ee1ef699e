"""DFQ parts composed into stock mmseg models: complete or warned about.

Half compositions (RDWT features with no RDWT loss, or the loss on features
nothing whitened) warn once at build time, naming the key to set; the
complete ones, and the example config that builds DFQ from mmseg's own
SegFormer config, build silently.
"""

import os.path as osp
import warnings

import pytest
import torch
from mmengine.config import Config
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from mmseg_dfq.models.composition import RDWTCompositionWarning

from ..helpers import FUNDUS_CONFIG, REPO_ROOT

EXAMPLE = osp.join(
    REPO_ROOT, 'configs', 'dfq', 'dfq_mit-b0_from-mmseg-segformer_fundus_d1.py'
)
TINY_MIT = dict(embed_dims=8, num_layers=[1, 1, 1, 1], init_cfg=None)
TINY_CHANNELS = [8, 16, 40, 64]


def model_cfg(config=FUNDUS_CONFIG, **changes):
    """The model of ``config``, tiny, with ``changes`` merged in."""
    cfg = Config.fromfile(config)
    cfg.model.backbone.update(TINY_MIT)
    cfg.model.decode_head.update(in_channels=TINY_CHANNELS, channels=16)
    cfg.merge_from_dict({f'model.{k}': v for k, v in changes.items()})
    return cfg.model


def build(model):
    """Build a model; return the composition warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        built = MODELS.build(model)
    found = [
        str(w.message)
        for w in caught
        if issubclass(w.category, RDWTCompositionWarning)
    ]
    return built, found


def segformer_head():
    return dict(
        _delete_=True,
        type='SegformerHead',
        in_channels=TINY_CHANNELS,
        in_index=[0, 1, 2, 3],
        channels=16,
        num_classes=3,
        norm_cfg=dict(type='BN', requires_grad=True),
        loss_decode=dict(type='CrossEntropyLoss'),
    )


def plain_mit():
    return dict(
        _delete_=True,
        type='MixVisionTransformer',
        num_heads=[1, 2, 5, 8],
        **TINY_MIT,
    )


# The loss normalising its maps itself (RDWTLoss's default), for the half
# compositions that only warn.
RENORMALISE = dict(loss_rdwt=dict(normalize=True))

HALF = {
    # RDWT backbone under mmseg's SegformerHead: no loss consumer.
    'rdwt-mit+segformer-head': (
        dict(decode_head=segformer_head()),
        "model.decode_head=dict(type='DFQHead'",
    ),
    # DFQHead without its loss after the RDWT backbone.
    'rdwt-mit+dfqhead-no-loss': (
        {'decode_head.loss_rdwt': None},
        'model.decode_head.loss_rdwt=dict(',
    ),
    # The loss on a plain MiT: no RDWT statistics. (normalize=True: the
    # DFQ base's normalize=False is an error there, see below.)
    'plain-mit+dfq-loss': (
        dict(backbone=plain_mit(), decode_head=RENORMALISE),
        "model.backbone.type='RDWTMixVisionTransformer'",
    ),
    # An FPN between the RDWT backbone and the loss.
    'rdwt-mit+fpn+dfq-loss': (
        dict(
            neck=dict(
                type='FPN',
                in_channels=TINY_CHANNELS,
                out_channels=16,
                num_outs=4,
            ),
            decode_head=dict(
                in_channels=[16] * 4, num_heads=(2, 2, 2), **RENORMALISE
            ),
        ),
        "model.neck=dict(type='RDWTNeck')",
    ),
    # RDWTNeck feeding a head without the loss.
    'plain-mit+rdwt-neck+segformer-head': (
        dict(
            backbone=plain_mit(),
            neck=dict(type='RDWTNeck'),
            decode_head=segformer_head(),
        ),
        "model.decode_head=dict(type='DFQHead'",
    ),
}


@pytest.mark.parametrize('case', sorted(HALF))
def test_half_composition_warns_once(case):
    changes, key = HALF[case]
    _, found = build(model_cfg(**changes))
    assert len(found) == 1, found
    assert key in found[0], found[0]


@pytest.mark.parametrize(
    'config, changes',
    [
        (FUNDUS_CONFIG, {}),  # full DFQ
        # DFQHead alone (the "+DFQHead" ablation) and plain SegFormer.
        (
            FUNDUS_CONFIG,
            dict(backbone=plain_mit(), **{'decode_head.loss_rdwt': None}),
        ),
        (
            FUNDUS_CONFIG,
            dict(backbone=plain_mit(), decode_head=segformer_head()),
        ),
        # RDWTNeck + DFQHead(loss_rdwt) after a plain backbone.
        (
            FUNDUS_CONFIG,
            dict(backbone=plain_mit(), neck=dict(type='RDWTNeck')),
        ),
        (EXAMPLE, {}),
    ],
)
def test_complete_compositions_build_silently(config, changes):
    _, found = build(model_cfg(config, **changes))
    assert found == []


@pytest.mark.parametrize(
    'changes',
    [
        {'backbone.rdwt_layout': 'authors'},
        {'decode_head.loss_rdwt.layout': 'authors'},
        dict(backbone=plain_mit(), neck=dict(type='RDWTNeck')),
    ],
    ids=['backbone', 'loss', 'neck'],
)
def test_rdwt_layouts_must_agree(changes):
    if 'neck' in changes:
        changes['neck']['rdwt_layout'] = 'authors'
    with pytest.raises(ValueError, match='rdwt_layout=.*loss_rdwt.layout'):
        MODELS.build(model_cfg(**changes))
    # Both set alike: builds, and the two modules agree.
    agreed = dict(changes)
    agreed['decode_head.loss_rdwt.layout'] = 'authors'
    if 'backbone.rdwt_layout' not in agreed and 'neck' not in agreed:
        agreed['backbone.rdwt_layout'] = 'authors'
    model, found = build(model_cfg(**agreed))
    assert found == []
    assert model.decode_head.loss_rdwt.layout == 'authors'


def test_parts_built_alone_do_not_warn():
    cfg = model_cfg()
    for part in (cfg.backbone, cfg.decode_head, dict(type='RDWTNeck')):
        assert build(part)[1] == []


def test_example_config_is_dfq_from_mmseg_segformer():
    cfg = Config.fromfile(EXAMPLE)
    # It starts from mmseg's own SegFormer model config.
    assert cfg.model.get('_scope_') == 'mmseg'
    cfg.model.backbone.init_cfg = None
    ours = Config.fromfile(
        osp.join(REPO_ROOT, 'configs', '_base_', 'models', 'dfq_mit-b0.py')
    )
    ours.model.backbone.init_cfg = None
    example, found = build(cfg.model)
    assert found == []
    reference, _ = build(ours.model)
    shapes = {k: v.shape for k, v in example.state_dict().items()}
    assert shapes == {k: v.shape for k, v in reference.state_dict().items()}
    assert type(example.backbone).__name__ == 'RDWTMixVisionTransformer'
    # The same modules with the same settings (dropout and drop-path rates,
    # norms, losses), not only the same weight shapes.
    assert repr(example) == repr(reference)
    for name in ('dropout_ratio', 'align_corners', 'ignore_index'):
        assert getattr(example.decode_head, name) == getattr(
            reference.decode_head, name
        ), name
    assert example.backbone.rdwt_stages == (0, 1, 2, 3)

    # A training step computes the RDWT loss next to the segmentation ones.
    torch.manual_seed(0)
    samples = [
        SegDataSample(
            gt_sem_seg=PixelData(data=torch.randint(0, 3, (1, 64, 64))),
            metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64)),
        )
        for _ in range(2)
    ]
    example.train()
    losses = example.loss(torch.randn(2, 3, 64, 64), samples)
    assert 'decode.loss_rdwt' in losses
    assert torch.isfinite(losses['decode.loss_rdwt'])
    assert losses['decode.loss_rdwt'] > 0


def fpn(**kwargs):
    return dict(
        type='FPN',
        in_channels=TINY_CHANNELS,
        out_channels=16,
        num_outs=4,
        **kwargs,
    )


# RDWTLoss(normalize=False) (the DFQ bases' setting) on a level the
# producer before the head did not normalise: the build fails, naming the
# key to set. Each case: the changes, a fragment of the message, and a
# further change that makes it valid again.
UNNORMALISED = {
    # Stage 3 is not whitened but the loss sees all four outputs.
    'stage-subset': (
        {'backbone.rdwt_stages': (0, 1, 2)},
        'model.backbone.rdwt_stages=(0, 1, 2, 3)',
        {'decode_head.rdwt_in_index': [0, 1, 2]},
    ),
    # rdwt_in_index points at the un-whitened stage 2.
    'rdwt_in_index-on-plain-stage': (
        {'backbone.rdwt_stages': (0, 1), 'decode_head.rdwt_in_index': [1, 2]},
        'stage(s) [2]',
        {'backbone.rdwt_stages': (0, 1, 2)},
    ),
    # Positions go through out_indices: output 2 of (1, 2, 3) is stage 3.
    'through-out_indices': (
        {
            'backbone.out_indices': (1, 2, 3),
            'backbone.rdwt_stages': (0, 1, 2),
            'decode_head.in_channels': TINY_CHANNELS[1:],
            'decode_head.in_index': [0, 1, 2],
            'decode_head.num_heads': (5, 8),
        },
        'stage(s) [3]',
        {'backbone.rdwt_stages': (1, 2, 3)},
    ),
    # MiT returns its outputs in stage order: with out_indices (3, 0, 1, 2)
    # output 0 is stage 0, which is not whitened.
    'unsorted-out_indices': (
        {
            'backbone.out_indices': (3, 0, 1, 2),
            'backbone.rdwt_stages': (3,),
            'decode_head.rdwt_in_index': [0],
        },
        'stage(s) [0]',
        {'decode_head.rdwt_in_index': [3]},
    ),
    # A plain neck between the RDWT backbone and the head.
    'plain-neck-between': (
        dict(
            neck=fpn(),
            decode_head=dict(in_channels=[16] * 4, num_heads=(2, 2, 2)),
        ),
        'model.decode_head.loss_rdwt.normalize=True',
        {'decode_head.loss_rdwt.normalize': True},
    ),
    # No producer at all.
    'plain-mit': (
        dict(backbone=plain_mit()),
        'model.decode_head.loss_rdwt.normalize=True',
        {'neck': dict(type='RDWTNeck')},
    ),
    # RDWTNeck normalising three of the four levels the loss sees.
    'rdwt-neck-subset': (
        dict(
            backbone=plain_mit(),
            neck=dict(type='RDWTNeck', in_index=[0, 1, 2]),
        ),
        'model.neck.in_index=(0, 1, 2)',
        {'decode_head.rdwt_in_index': [0, 1, 2]},
    ),
    # After FPN + RDWTNeck(in_index) the number of levels is not in the
    # configs, so "all of them" cannot be checked.
    'rdwt-neck-subset-after-fpn': (
        dict(
            neck=[fpn(), dict(type='RDWTNeck', in_index=[0, 1])],
            decode_head=dict(in_channels=[16] * 4, num_heads=(2, 2, 2)),
        ),
        'do not tell',
        {'decode_head.rdwt_in_index': [0, 1]},
    ),
}


@pytest.mark.parametrize('case', sorted(UNNORMALISED))
def test_unnormalised_loss_levels_are_an_error(case):
    changes, key, fix = UNNORMALISED[case]
    cfg = model_cfg(**changes)
    assert cfg.decode_head.loss_rdwt.normalize is False
    with pytest.raises(ValueError, match='normalize=False') as error:
        MODELS.build(cfg)
    assert key in str(error.value), str(error.value)
    fixed = model_cfg(**{**changes, **fix})
    model, _ = build(fixed)
    losses = model.loss(
        torch.randn(2, 3, 64, 64),
        [
            SegDataSample(
                gt_sem_seg=PixelData(data=torch.randint(0, 3, (1, 64, 64))),
                metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64)),
            )
            for _ in range(2)
        ],
    )
    assert torch.isfinite(losses['decode.loss_rdwt'])


def test_dfq_config_takes_the_backbone_maps_as_they_are():
    model, found = build(model_cfg())
    assert found == []
    assert model.decode_head.loss_rdwt.normalize is False
    assert model.backbone.rdwt_stages == (0, 1, 2, 3)
