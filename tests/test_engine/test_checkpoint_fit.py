"""Checkpoints of another model are refused, by the API and tools/test.py.

:func:`mmseg_dfq.engine.checkpoint.check_checkpoint_fits` is compared with
what torch's own ``load_state_dict`` reports (its ``strict=False`` missing
and unexpected keys, its ``size mismatch`` errors) on tiny DFQ models; the
layouts that must keep loading (mmengine's ``meta``/``state_dict``, a bare
state dict, DDP's ``module.`` prefix, a model with the fast path's
compiled forwards and channels-last weights, test-time augmentation) load.
``tools/test.py`` refuses a checkpoint of another class count, one of
another head (a SegFormer head on the DFQ demo) and a truncated one with
one line and status 1, and tests a checkpoint of a training run.
"""

import copy
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmseg.models import SegTTAModel
from mmseg.registry import MODELS

from mmseg_dfq.compat import CheckpointError
from mmseg_dfq.datasets import FundusDGDataset, ProstateDGDataset
from mmseg_dfq.engine import compile_forward, to_channels_last
from mmseg_dfq.engine.checkpoint import (
    SHOWN_KEYS,
    CheckpointMismatchError,
    check_checkpoint_fits,
    compare_weights,
    load_checked_checkpoint,
)

from ..helpers import (
    FUNDUS_CONFIG,
    PROSTATE_CONFIG,
    REPO_ROOT,
    TEST,
    data_options,
    tiny_rdwt_mit,
    tool_env,
    write_checkpoint,
)


def tiny_cfg(num_classes=3, head='DFQHead'):
    """A two-stage RDWT MiT (8, 16 channels) with a DFQ or SegFormer head."""
    decode_head = dict(
        type=head,
        in_channels=[8, 16],
        in_index=[0, 1],
        channels=16,
        num_classes=num_classes,
        norm_cfg=dict(type='BN', requires_grad=True),
        loss_decode=dict(type='CrossEntropyLoss'),
    )
    if head == 'DFQHead':
        decode_head['num_heads'] = (1,)
    return dict(
        type='EncoderDecoder',
        data_preprocessor=dict(
            type='SegDataPreProcessor', mean=[0.0] * 3, std=[1.0] * 3
        ),
        backbone=tiny_rdwt_mit(),
        decode_head=decode_head,
    )


def build(seed=0, **kwargs):
    torch.manual_seed(seed)
    return MODELS.build(tiny_cfg(**kwargs))


def torch_report(model, state_dict):
    """Independent reference: what torch's loader says about a state dict.

    Returns:
        tuple[set, set, set]: Missing and unexpected keys (its
        ``strict=False`` result) and the keys of its size-mismatch errors.
    """
    model = copy.deepcopy(model)
    shapes = set()
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:
        shapes = set(re.findall(r'size mismatch for (\S+):', str(err)))
        # Without the mismatching keys, the rest loads and is reported.
        result = model.load_state_dict(
            {k: v for k, v in state_dict.items() if k not in shapes},
            strict=False,
        )
    missing = set(result.missing_keys) - shapes
    return missing, set(result.unexpected_keys), shapes


def test_own_layouts_fit():
    model = build()
    weights = build(seed=1).state_dict()
    layouts = {
        'mmengine': dict(meta=dict(iter=2), state_dict=weights),
        'bare': weights,
        'ddp': {'module.' + k: v for k, v in weights.items()},
        # Old BatchNorm checkpoints have no num_batches_tracked; mmengine
        # (and BN with a momentum) does without it.
        'old BN': {
            k: v for k, v in weights.items() if 'num_batches_tracked' not in k
        },
    }
    for name, checkpoint in layouts.items():
        got = check_checkpoint_fits(model, checkpoint, f'{name}.pth')
        keys = checkpoint.get('state_dict', checkpoint)
        assert list(got) == [re.sub('^module[.]', '', k) for k in keys], name
    assert any('num_batches_tracked' in k for k in weights)


def test_mismatch_is_what_torch_reports():
    model = build(num_classes=3)
    cases = {
        'class count': build(num_classes=2).state_dict(),
        'SegFormer head': build(head='SegformerHead').state_dict(),
        'both': build(head='SegformerHead', num_classes=5).state_dict(),
    }
    for name, weights in cases.items():
        missing, unexpected, shapes = compare_weights(model, weights)
        ref_missing, ref_unexpected, ref_shapes = torch_report(model, weights)
        assert set(missing) == ref_missing, name
        assert set(unexpected) == ref_unexpected, name
        assert {k for k, _, _ in shapes} == ref_shapes, name
        assert missing or unexpected or shapes, name
    # The class count: only the classifier differs, in its first dimension.
    _, _, shapes = compare_weights(model, cases['class count'])
    assert shapes == [
        ('decode_head.conv_seg.weight', (2, 16, 1, 1), (3, 16, 1, 1)),
        ('decode_head.conv_seg.bias', (2,), (3,)),
    ]


def test_error_names_the_file_and_lists_each_kind():
    model = build(num_classes=3)
    weights = build(head='SegformerHead', num_classes=5).state_dict()
    missing, unexpected, shapes = compare_weights(model, weights)
    # Enough of each kind that the list is cut (shapes: the classifier).
    assert len(missing) > SHOWN_KEYS and len(unexpected) > SHOWN_KEYS
    with pytest.raises(CheckpointMismatchError) as info:
        check_checkpoint_fits(
            model, dict(state_dict=weights), 'runs/seg.pth', 'cfg.py'
        )
    msg = str(info.value)
    assert isinstance(info.value, CheckpointError)
    assert '\n' not in msg
    assert msg.startswith("checkpoint 'runs/seg.pth' does not fit the model")
    assert 'of cfg.py' in msg
    assert f'{len(missing)} weight(s) of the model missing' in msg
    assert f'{len(unexpected)} weight(s) the model does not have' in msg
    for keys in (missing, unexpected):
        assert all(k in msg for k in keys[:SHOWN_KEYS])
        assert keys[SHOWN_KEYS] not in msg
        assert f' and {len(keys) - SHOWN_KEYS} more' in msg
    assert 'decode_head.conv_seg.weight [5, 16, 1, 1] vs. [3, 16, 1, 1]' in msg
    assert 'classifier has 5 outputs' in msg


def test_hints():
    model = build()
    weights = model.state_dict()
    authors = dict(encoder_state_dict={}, seg_decoder_state_dict={})
    backbone_only = {
        k[len('backbone.') :]: v
        for k, v in weights.items()
        if k.startswith('backbone.')
    }
    other_layers = dict(weights)
    other_layers['decode_head.extra.weight'] = torch.zeros(1)
    for checkpoint, hint in (
        (authors, 'tools/convert/dfq_official_to_mmseg.py'),
        (backbone_only, 'shares no weight name'),
        (other_layers, 'Use the config it was trained with'),
    ):
        with pytest.raises(CheckpointMismatchError, match=re.escape(hint)):
            check_checkpoint_fits(model, checkpoint, 'x.pth')
    with pytest.raises(CheckpointMismatchError, match='holds a list'):
        check_checkpoint_fits(model, dict(state_dict=[1]), 'x.pth')


def test_non_persistent_buffers_are_not_expected():
    class WithBuffers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)
            self.register_buffer('kept', torch.zeros(3))
            self.register_buffer('scratch', torch.zeros(4), persistent=False)

    model = WithBuffers()
    weights = model.state_dict()
    assert 'scratch' not in weights and 'kept' in weights
    check_checkpoint_fits(model, weights, 'x.pth')
    torch.nn.Module.load_state_dict(model, weights, strict=True)
    with pytest.raises(CheckpointMismatchError, match='kept'):
        check_checkpoint_fits(
            model, {k: v for k, v in weights.items() if k != 'kept'}, 'x.pth'
        )


def test_fast_path_and_tta_models_fit_plain_checkpoints():
    plain = build(seed=1).state_dict()
    fast = build()
    # The fast path's forwards are instance attributes (compiled lazily:
    # nothing is compiled here) and its weights channels-last.
    compile_forward(fast.backbone, dict(dynamic=False), None)
    compile_forward(fast.decode_head, dict(dynamic=False), None)
    to_channels_last(fast)
    assert list(fast.state_dict()) == list(plain)
    check_checkpoint_fits(fast, dict(state_dict=plain), 'plain.pth')
    check_checkpoint_fits(build(), fast.state_dict(), 'fast.pth')
    # tools/test.py --tta: the segmentor inside SegTTAModel is compared.
    tta = SegTTAModel(module=build())
    check_checkpoint_fits(tta, plain, 'plain.pth')
    with pytest.raises(CheckpointMismatchError, match='conv_seg'):
        check_checkpoint_fits(
            tta, build(num_classes=2).state_dict(), 'two.pth'
        )


def test_load_checked_checkpoint(tmp_path):
    saved = build(seed=1).state_dict()
    path = str(tmp_path / 'fits.pth')
    torch.save(dict(meta=dict(note='x'), state_dict=saved), path)
    model = build()
    checkpoint = load_checked_checkpoint(model, path)
    assert checkpoint['meta'] == dict(note='x')
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    # A bare state dict of old BatchNorms (mmengine's strict load too).
    old_bn = str(tmp_path / 'old_bn.pth')
    torch.save(
        {k: v for k, v in saved.items() if 'num_batches_tracked' not in k},
        old_bn,
    )
    assert 'meta' not in load_checked_checkpoint(build(), old_bn)
    # Refused before anything is copied into the model.
    other = str(tmp_path / 'other.pth')
    torch.save(
        dict(state_dict=build(seed=2, num_classes=2).state_dict()), other
    )
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(CheckpointMismatchError, match=re.escape(repr(other))):
        load_checked_checkpoint(model, other)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


# --------------------------------------------------------------- the tool
def _segformer_cfg():
    """The fundus demo with a SegFormer head (the same MiT backbone)."""
    cfg = Config.fromfile(FUNDUS_CONFIG)
    head = cfg.model.decode_head
    cfg.model.decode_head = dict(
        type='SegformerHead',
        in_channels=head.in_channels,
        in_index=head.in_index,
        channels=head.channels,
        num_classes=head.num_classes,
        norm_cfg=dict(type='BN', requires_grad=True),
        loss_decode=dict(type='CrossEntropyLoss'),
    )
    return cfg


def _test_tool(checkpoint, fundus_root, work_dir):
    """tools/test.py on the fundus demo; (status, stdout, stderr)."""
    proc = subprocess.run(
        [
            sys.executable,
            TEST,
            FUNDUS_CONFIG,
            checkpoint,
            '--work-dir',
            work_dir,
            '--cfg-options',
            *data_options(fundus_root),
        ],
        cwd=REPO_ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize(
    'kind, expect',
    [
        (
            'prostate',
            r'does not fit the model of .*: 2 weight\(s\) of another shape'
            r'.*conv_seg\.weight',
        ),
        (
            'segformer',
            r'does not fit the model of .*: \d+ weight\(s\) of the model '
            r'missing .*decode_head\.',
        ),
        ('truncated', r'\(\d+ bytes\) cannot be read: it is truncated'),
    ],
    ids=['class-count', 'segformer-head', 'truncated'],
)
def test_test_tool_refuses_in_one_line(tmp_path, fundus_root, kind, expect):
    path = str(tmp_path / f'{kind}.pth')
    if kind == 'prostate':  # 2 classes, on the 3-class fundus model
        write_checkpoint(PROSTATE_CONFIG, path, ProstateDGDataset.METAINFO)
    elif kind == 'segformer':  # the same backbone, another head
        write_checkpoint(_segformer_cfg(), path, FundusDGDataset.METAINFO)
    else:
        with open(path, 'wb') as f:
            f.write(b'PK\x03\x04 cut short')
    work_dir = str(tmp_path / 'work')
    rc, out, err = _test_tool(path, fundus_root, work_dir)
    assert rc == 1, (out + err)[-3000:]
    assert 'Traceback' not in out + err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f'error: checkpoint {path!r} '), last
    assert re.search(expect, last), last
    if kind != 'truncated':
        assert FUNDUS_CONFIG in last
    assert not osp.exists(osp.join(work_dir, 'metrics.json'))


def test_test_tool_tests_a_checkpoint_of_its_training(
    tmp_path, fundus_root, reference_run
):
    # A checkpoint as tools/train.py writes it (optimizer, message hub...).
    path = osp.join(reference_run, 'iter_2.pth')
    work_dir = str(tmp_path / 'work')
    rc, out, err = _test_tool(path, fundus_root, work_dir)
    assert rc == 0, (out + err)[-3000:]
    assert 'do not match' not in out + err
    assert osp.isfile(osp.join(work_dir, 'metrics.json'))
