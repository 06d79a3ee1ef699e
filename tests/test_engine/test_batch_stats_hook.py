"""BatchStatsBNHook: each test batch normalised with its own statistics."""

from types import SimpleNamespace

import pytest
import torch
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from torch import nn

from mmseg_dfq.engine import BatchStatsBNHook

from ..helpers import tiny_dfq_head, tiny_rdwt_mit


def tiny_model():
    init_default_scope('mmseg')
    model = MODELS.build(
        dict(
            type='EncoderDecoder',
            data_preprocessor=dict(type='SegDataPreProcessor'),
            backbone=tiny_rdwt_mit(),
            decode_head=tiny_dfq_head(),
            test_cfg=dict(mode='whole'),
        )
    )
    # Running statistics far from any batch's, so that using them or not
    # shows in the output.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(3.0)
            m.running_var.fill_(9.0)
    return model.eval()


def test_test_batches_use_their_own_statistics():
    torch.manual_seed(0)
    model = tiny_model()
    runner = SimpleNamespace(model=model)
    x = torch.randn(4, 3, 64, 64)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    with torch.no_grad():
        eval_out = model._forward(x)
        # The authors' test scripts: eval(), then BatchNorm2d back to train.
        for m in norms:
            m.train()
        theirs = model._forward(x)
        for m, (mean, var) in zip(norms, before):
            m.eval()
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
        hook = BatchStatsBNHook()
        hook.before_test_iter(runner, 0)
        ours = model._forward(x)
        hook.before_test_iter(runner, 1)  # every iteration, idempotent
        again = model._forward(x)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(again, theirs)
    assert not torch.allclose(ours, eval_out)
    # Running statistics neither used nor updated; modes put back.
    for m, (mean, var) in zip(norms, before):
        assert torch.equal(m.running_mean, mean)
        assert torch.equal(m.running_var, var)
        assert m.training and not m.track_running_stats
    hook.after_test_epoch(runner)
    assert all(not m.training and m.track_running_stats for m in norms)
    with torch.no_grad():
        torch.testing.assert_close(model._forward(x), eval_out)
    # Validation is left alone unless asked for.
    hook.before_val_iter(runner, 0)
    assert not any(m.training for m in norms)
    val_hook = BatchStatsBNHook(phases=['val', 'test'])
    val_hook.before_val_iter(runner, 0)
    assert all(m.training for m in norms)
    val_hook.after_val_epoch(runner)
    assert not any(m.training for m in norms)


@pytest.mark.parametrize('phases', [(), ('train',), 'tests'])
def test_phases_are_checked(phases):
    with pytest.raises(ValueError, match='phases'):
        BatchStatsBNHook(phases=phases)


def test_with_chunk_bn_each_half_of_a_test_batch_is_normalised_apart():
    # The authors' configs: ChunkBN(num_chunks=2) + this hook = their test
    # under DataParallel on two GPUs (each GPU's half batch on its own).
    from mmseg_dfq.models.utils import ChunkBatchNorm2d

    torch.manual_seed(0)
    norm = ChunkBatchNorm2d(4, num_chunks=2)
    norm.running_mean.fill_(3.0)
    model = nn.Sequential(norm).eval()
    runner = SimpleNamespace(model=model)
    x = torch.randn(8, 4, 5, 5) + torch.arange(8.0).view(-1, 1, 1, 1)
    hook = BatchStatsBNHook()
    hook.before_test_iter(runner, 0)
    with torch.no_grad():
        out = model(x)
    first, second = x.chunk(2)
    expected = torch.cat(
        [
            nn.functional.batch_norm(
                h, None, None, norm.weight, norm.bias, True
            )
            for h in (first, second)
        ]
    )
    torch.testing.assert_close(out, expected)
    assert torch.equal(norm.running_mean, torch.full((4,), 3.0))


def test_a_phase_that_failed_is_undone_before_training():
    model = tiny_model()
    runner = SimpleNamespace(model=model)
    hook = BatchStatsBNHook()
    hook.before_test_iter(runner, 0)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not m.track_running_stats for m in norms)
    # The test stopped with an error: no after_test_epoch; training next.
    hook.before_train_iter(runner, 0)
    assert all(m.track_running_stats and not m.training for m in norms)
    hook.before_test_iter(runner, 0)
    hook.after_test(runner)
    assert all(m.track_running_stats for m in norms)
