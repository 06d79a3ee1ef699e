"""The inference API and tools/infer.py refuse another model's checkpoint.

``init_segmentor`` (behind ``SegInferencer`` and ``tools/infer.py``) reads
the checkpoint once, refuses it unless its weights fit the config's model
exactly (mmseg's ``init_model`` loads what matches and warns), and sets
``dataset_meta`` as mmseg does. A checkpoint that the authors' converter
writes (no ``dataset_meta``) loads into its config's model.
"""

import glob
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

from mmseg_dfq.apis import SegInferencer
from mmseg_dfq.apis.inference import init_segmentor
from mmseg_dfq.datasets import FundusDGDataset
from mmseg_dfq.engine.checkpoint import CheckpointMismatchError

from ..helpers import (
    FUNDUS_CONFIG,
    PROSTATE_CONFIG,
    REPO_ROOT,
    count_calls,
    tool_env,
)
from ..test_models.test_authors_reference import (
    authors_checkpoint,
    converter_main,
)


def _weights(path):
    return torch.load(path, map_location='cpu', weights_only=True)[
        'state_dict'
    ]


def test_another_models_checkpoint_is_refused(fundus_ckpt, prostate_ckpt):
    # The prostate demo has 2 classes, the fundus demo 3.
    for config, ckpt, got, want in (
        (FUNDUS_CONFIG, prostate_ckpt, 2, 3),
        (PROSTATE_CONFIG, fundus_ckpt, 3, 2),
    ):
        with pytest.raises(CheckpointMismatchError) as info:
            init_segmentor(config, ckpt)
        msg = str(info.value)
        assert msg.startswith(f'checkpoint {ckpt!r} does not fit the model')
        assert config in msg
        assert re.search(
            rf'decode_head\.conv_seg\.weight \[{got}, \d+, 1, 1\] vs\. '
            rf'\[{want}, \d+, 1, 1\]',
            msg,
        ), msg
    with pytest.raises(CheckpointMismatchError, match=re.escape(fundus_ckpt)):
        SegInferencer(PROSTATE_CONFIG, fundus_ckpt)


def test_matching_checkpoint_loads_once(fundus_ckpt, monkeypatch):
    reads = count_calls(monkeypatch, torch, 'load')
    model = init_segmentor(FUNDUS_CONFIG, fundus_ckpt)
    monkeypatch.undo()
    assert reads.count(fundus_ckpt) == 1
    saved = _weights(fundus_ckpt)
    state = model.state_dict()
    assert list(state) == list(saved)
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    # The checkpoint's meta, as mmseg's init_model sets it.
    assert model.dataset_meta['classes'] == FundusDGDataset.METAINFO['classes']
    assert not model.training


def test_converted_authors_checkpoint_loads(tmp_path):
    src, dst = tmp_path / 'theirs.pth', str(tmp_path / 'ours.pth')
    torch.save(authors_checkpoint('b2'), src)
    converter_main()([str(src), dst])
    config = osp.join(
        REPO_ROOT, 'configs', 'dfq', 'dfq_mit-b2_fundus_d1_authors.py'
    )
    model = init_segmentor(config, dst)
    saved = _weights(dst)
    state = model.state_dict()
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    # No dataset_meta in a converted checkpoint: the config's data set's.
    assert model.dataset_meta['classes'] == FundusDGDataset.METAINFO['classes']
    # The authors' own file is refused with the way to convert it.
    with pytest.raises(CheckpointMismatchError, match='dfq_official_to_mmseg'):
        init_segmentor(config, str(src))


def test_infer_tool_refuses_in_one_line(tmp_path, fundus_root, prostate_ckpt):
    image = sorted(
        glob.glob(osp.join(fundus_root, '*', 'test', '*', 'image', '*.png'))
    )[0]
    out_dir = tmp_path / 'out'
    proc = subprocess.run(
        [
            sys.executable,
            osp.join(REPO_ROOT, 'tools', 'infer.py'),
            FUNDUS_CONFIG,
            prostate_ckpt,
            image,
            '--out',
            str(out_dir),
        ],
        cwd=REPO_ROOT,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f'error: checkpoint {prostate_ckpt!r} does not fit'
    ), last
    assert 'conv_seg.weight' in last
    assert not out_dir.exists()
