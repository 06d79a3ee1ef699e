"""RDWTNeck (models/necks/rdwt_neck.py)."""

import pytest
import torch

from mmseg_dfq.models.necks.rdwt_neck import RDWTNeck

from .dfq_parts import (
    B0,
    feats_for,
)


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
