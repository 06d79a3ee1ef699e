"""ChunkBN against BatchNorm2d replicas on the chunks, as DataParallel runs."""

import copy

import pytest
import torch
from mmcv.cnn import ConvModule
from mmengine.registry import init_default_scope
from torch import nn

from mmseg_dfq.models.utils import ChunkBatchNorm2d


@pytest.mark.parametrize('batch', [16, 5])
def test_chunks_normalise_apart_and_only_the_first_updates(batch):
    torch.manual_seed(0)
    chunked = ChunkBatchNorm2d(6, num_chunks=2, momentum=0.3)
    with torch.no_grad():
        chunked.weight.uniform_(0.5, 1.5)
        chunked.bias.uniform_(-0.5, 0.5)
    # DataParallel on two devices: replica 0 holds the module's own
    # buffers, replica 1 copies that are dropped after the step.
    replica0 = copy.deepcopy(nn.BatchNorm2d(6, momentum=0.3))
    replica0.load_state_dict(chunked.state_dict())
    replica1 = copy.deepcopy(replica0)
    # Domains in order: the halves have different statistics.
    x = torch.randn(batch, 6, 5, 7) + torch.arange(batch).view(-1, 1, 1, 1)
    x.requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = chunked.train()(x)
    first, second = x_ref.chunk(2)
    expected = torch.cat([replica0.train()(first), replica1.train()(second)])
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(
        out,
        nn.functional.batch_norm(
            x, None, None, chunked.weight, chunked.bias, True, 0.0, chunked.eps
        ),
    )
    for name in ('running_mean', 'running_var', 'num_batches_tracked'):
        torch.testing.assert_close(
            getattr(chunked, name), getattr(replica0, name)
        )
    grad = torch.randn_like(out)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(
        chunked.weight.grad, replica0.weight.grad + replica1.weight.grad
    )
    # Eval mode: plain BatchNorm2d on the running statistics.
    torch.testing.assert_close(chunked.eval()(x), replica0.eval()(x))


def test_builds_as_bn_from_norm_cfg_and_checks():
    init_default_scope('mmseg')
    conv = ConvModule(3, 8, 1, norm_cfg=dict(type='ChunkBN', num_chunks=2))
    assert conv.norm_name == 'bn'
    assert isinstance(conv.bn, ChunkBatchNorm2d) and conv.bn.num_chunks == 2
    # BN checkpoints load as they are.
    plain = ConvModule(3, 8, 1, norm_cfg=dict(type='BN'))
    conv.load_state_dict(plain.state_dict(), strict=True)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match='num_chunks'):
            ChunkBatchNorm2d(4, num_chunks=bad)


def test_refused_under_several_processes(monkeypatch):
    norm = ChunkBatchNorm2d(3).train()
    x = torch.randn(4, 3, 2, 2)
    monkeypatch.setattr(torch.distributed, 'is_initialized', lambda: True)
    monkeypatch.setattr(torch.distributed, 'get_world_size', lambda: 2)
    with pytest.raises(RuntimeError, match='one process'):
        norm(x)
    norm.eval()(x)  # eval is plain BatchNorm2d
    monkeypatch.setattr(torch.distributed, 'get_world_size', lambda: 1)
    norm.train()(x)
