"""The GPU fast path on CPU: compiled steps, lagged logs, layouts, bf16.

The inductor test compiles a two-stage DFQ (8/16 channels, 64 px, batch 2)
on CPU: most of this file's ~2 min of CPU time with a cold inductor cache
(seconds with a warm one). CUDA graphs need a GPU and are skipped here.
"""

import copy
import os.path as osp
import types
import warnings
from unittest import mock

import pytest
import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import MessageHub, MMLogger
from mmengine.model import MMDistributedDataParallel
from mmengine.optim import build_optim_wrapper
from mmengine.runner import Runner
from mmengine.structures import PixelData
from mmseg.models.data_preprocessor import SegDataPreProcessor
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from mmseg_dfq.engine import (
    BF16OptimWrapper,
    ChannelsLastDistributedDataParallel,
    FastPathHook,
    to_channels_last,
)
from mmseg_dfq.engine.fast_path import (
    TrainEvalForward,
    align_optimizer_state,
    resolve_compile_kwargs,
)

from ..helpers import FUNDUS_CONFIG, tiny_dfq_head, tiny_rdwt_mit

CUDA = torch.cuda.is_available()
SIZE = 64


def tiny_dfq_cfg():
    """Two-stage RDWT MiT (8, 16 channels) + DFQHead + CE/Dice/RDWT."""
    return dict(
        type='EncoderDecoder',
        data_preprocessor=dict(
            type='SegDataPreProcessor',
            mean=[127.5] * 3,
            std=[127.5] * 3,
            size=(SIZE, SIZE),
        ),
        # No randomness, so eager and compiled steps see the same net
        # (inductor draws its own random numbers).
        backbone=tiny_rdwt_mit(drop_path_rate=0.0),
        decode_head=tiny_dfq_head(
            drop_path_rate=0.0,
            dropout_ratio=0.0,
            loss_decode=[
                dict(type='CrossEntropyLoss', loss_weight=1.0),
                dict(type='ClassDiceLoss', loss_weight=1.0),
            ],
            loss_rdwt=dict(type='RDWTLoss', loss_weight=1e-2),
        ),
        train_cfg=dict(),
        test_cfg=dict(mode='whole'),
    )


def batch(device='cpu', seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, SIZE, SIZE, generator=g).to(device)
    labels = torch.randint(0, 3, (2, 1, SIZE, SIZE), generator=g)
    samples = []
    for label in labels:
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=label.to(device))
        shape = (SIZE, SIZE)
        sample.set_metainfo(
            dict(img_shape=shape, ori_shape=shape, pad_shape=shape)
        )
        samples.append(sample)
    return images, samples


def fake_runner(model, optimizer):
    """The attributes FastPathHook reads from a Runner."""
    return types.SimpleNamespace(
        model=model,
        logger=MMLogger.get_instance('test_fast_path'),
        optim_wrapper=types.SimpleNamespace(optimizer=optimizer),
        message_hub=MessageHub.get_instance('test_fast_path'),
    )


def train_losses(model, steps, device='cpu', hook=None):
    """Adam steps on fixed batches; returns each step's total loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if hook is not None:
        runner = fake_runner(model, optimizer)
        hook.before_run(runner)
        hook.before_train(runner)
    model.train()
    out = []
    for step in range(steps):
        if hook is not None:
            hook.before_train_iter(None, step)
        images, samples = batch(device, seed=step)
        optimizer.zero_grad(set_to_none=True)
        losses = model.loss(images, samples)
        loss = sum(v for k, v in losses.items() if 'loss' in k)
        loss.backward()
        optimizer.step()
        out.append(loss.detach().clone())
    return torch.stack(out).cpu()


@pytest.mark.compile
def test_inductor_training_matches_eager():
    """Backbone and head compiled by inductor, channels-last weights: the
    same losses as eager for 3 Adam steps; an eval forward of a new
    (non-square) size runs eager, without a recompile."""
    import torch._dynamo
    import torch._inductor.config

    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = MODELS.build(tiny_dfq_cfg())
    fast = copy.deepcopy(eager)
    # Losses stay eager here to keep the file within ~2 min of CPU (they
    # add ~25 s of code generation); the CUDA test and
    # `tools/benchmark.py --loss-check` compile them too.
    hook = FastPathHook(compile=dict(dynamic=False), compile_losses=False)
    expected = train_losses(eager, 3)
    # In-process code generation: a pool of compile workers would first
    # import torch in each of them.
    with torch._inductor.config.patch(compile_threads=1):
        got = train_losses(fast, 3, hook=hook)
    assert hook.compiled == ['backbone', 'decode_head']
    assert isinstance(fast.backbone.forward, TrainEvalForward)
    assert fast.decode_head.fusion_conv.conv.weight.is_contiguous(
        memory_format=torch.channels_last
    )
    # Losses change over the steps, so equal sequences are not a constant.
    assert (expected[0] - expected[-1]).abs() > 1e-4
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    # Eval: eager on the same weights (Adam turns last-bit gradient
    # differences of near-zero gradients into lr-sized steps, so the two
    # trained models' weights differ slightly; compare on one set). The
    # state dict loads into a plain model: keys unchanged.
    plain = MODELS.build(tiny_dfq_cfg())
    plain.load_state_dict(fast.state_dict())
    frames = torch._dynamo.utils.counters['stats']['unique_graphs']
    fast.eval()
    plain.eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 48, 80)
        out = fast(x, mode='tensor')
        ref = plain(x, mode='tensor')
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] == frames
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_traced_step_on_the_explicit_attention_matches_eager(monkeypatch):
    """What compiled float32 on CUDA traces ('auto' picks the explicit
    attention under torch.compile there), here on CPU with the rule forced:
    dynamo traces MiT and DFQHead without a graph break, no fused attention
    and no interpolate in the graph, and the traced training loss and
    gradients equal eager's
    (dynamo's 'eager' backend runs the traced graph without inductor)."""
    import torch._dynamo

    from mmseg_dfq.models.utils import attention

    monkeypatch.setattr(
        attention, 'fused_attention_pays', lambda device, dtype, c: not c
    )
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = MODELS.build(tiny_dfq_cfg())
    images, samples = batch()

    def loss(images):
        feats = model.backbone(images)
        return model.decode_head.loss(feats, samples, model.train_cfg)

    explained = torch._dynamo.explain(loss)(images)
    assert explained.graph_break_count == 0
    graphs = '\n'.join(str(g.graph) for g in explained.graphs)
    assert 'softmax' in graphs and 'scaled_dot_product' not in graphs
    # The head's upsamplings trace as slices (bilinear_resize), not as
    # interpolate, whose compiled backward scatters.
    assert 'interpolate' not in graphs and 'upsample' not in graphs

    results = []
    for fn in (loss, torch.compile(loss, backend='eager')):
        model.zero_grad()
        total = sum(v for k, v in fn(images).items() if 'loss' in k)
        total.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((total.detach(), grads))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


@pytest.mark.compile
def test_compiled_head_upsampling_has_no_scatter():
    """The DFQ head's upsamplings (bilinear_resize) compile to a backward
    without a scatter (no atomic adds), equal to torch's bilinear;
    F.interpolate's compiled backward has one (an index_put that
    accumulates), so the check can tell the two apart."""
    import torch._dynamo
    import torch._inductor.config
    import torch.nn.functional as F
    from torch._inductor.utils import run_and_get_code

    from mmseg_dfq.models.utils import bilinear_resize

    def interpolate(x, size, align_corners):
        return F.interpolate(
            x, size, mode='bilinear', align_corners=align_corners
        )

    torch.manual_seed(0)
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(2, 8, 16, 16)
    grads, scatters = {}, {}
    for name, resize in (('ours', bilinear_resize), ('torch', interpolate)):
        torch._dynamo.reset()
        leaf = x.clone().requires_grad_(True)

        def loss(t, resize=resize):
            return (resize(t, (16, 16), False) * weight).square().sum()

        compiled = torch.compile(loss, dynamic=False)

        def step(compiled=compiled, leaf=leaf):
            compiled(leaf).backward()
            return leaf.grad

        with torch._inductor.config.patch(compile_threads=1):
            grads[name], code = run_and_get_code(step)
        # Inductor's kernel names say what they compute; the scatter is
        # an index_put (atomic adds on a GPU, and on a multithreaded CPU).
        scatters[name] = 'index_put' in '\n'.join(code)
    assert scatters == dict(ours=False, torch=True)
    leaf = x.clone().requires_grad_(True)
    (interpolate(leaf, (16, 16), False) * weight).square().sum().backward()
    torch.testing.assert_close(grads['ours'], leaf.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not CUDA, reason='CUDA graphs need a CUDA device')
def test_cudagraph_training_matches_eager_cuda():
    """mode='reduce-overhead' (CUDA graphs), TF32 off for the comparison."""
    import torch._dynamo

    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = MODELS.build(tiny_dfq_cfg()).cuda()
    fast = copy.deepcopy(eager)
    hook = FastPathHook(tf32=False)
    expected = train_losses(eager, 5, 'cuda')
    got = train_losses(fast, 5, 'cuda', hook=hook)
    assert hook._cudagraphs
    assert 'decode_head.loss_rdwt' in hook.compiled
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)


def test_hook_in_runner(tmp_path, fundus_root):
    """FastPathHook + BF16OptimWrapper + fused Adam through the Runner
    (dynamo with the 'eager' backend: the plumbing, not inductor): train,
    validate eager, checkpoint keys as an eager model's, lagged logs."""
    root = fundus_root
    cfg = Config.fromfile(FUNDUS_CONFIG)
    cfg.work_dir = str(tmp_path / 'work')
    cfg.train_dataloader.dataset.data_root = root
    cfg.val_dataloader.dataset.data_root = root
    cfg.test_dataloader.dataset.data_root = root
    cfg.train_dataloader.batch_size = 2
    cfg.train_dataloader.sampler = dict(type='InfiniteSampler', shuffle=True)
    cfg.train_dataloader.pop('batch_sampler', None)
    cfg.train_cfg.max_iters = 3
    cfg.train_cfg.val_interval = 3
    cfg.param_scheduler[0].end = 3
    cfg.default_hooks.checkpoint.interval = 3
    cfg.default_hooks.logger.interval = 1
    cfg.optim_wrapper.type = 'BF16OptimWrapper'
    cfg.optim_wrapper.optimizer.fused = True
    # The head only, traced by dynamo without code generation: the Runner
    # plumbing; inductor's numbers are the test above.
    cfg.custom_hooks = [
        dict(
            type='FastPathHook',
            compile=dict(backend='eager'),
            modules=('decode_head',),
            compile_losses=False,
        )
    ]
    from mmseg_dfq.compat import adapt_cfg_to_device

    adapt_cfg_to_device(cfg)
    runner = Runner.from_cfg(cfg)
    runner.train()

    model = runner.model
    assert isinstance(model.decode_head.forward, TrainEvalForward)
    assert model.data_preprocessor._non_blocking
    assert isinstance(runner.optim_wrapper, BF16OptimWrapper)
    assert runner.optim_wrapper.optimizer.defaults['fused']
    weight = model.decode_head.fusion_conv.conv.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    # Three iterations, three logged losses (the last after training).
    losses = runner.message_hub.get_scalar('train/loss').data[0]
    assert len(losses) == 3
    assert 'train_step' not in model.__dict__
    ckpt = torch.load(
        osp.join(cfg.work_dir, 'iter_3.pth'),
        map_location='cpu',
        weights_only=False,
    )
    fresh = MODELS.build(Config.fromfile(FUNDUS_CONFIG).model)
    assert ckpt['state_dict'].keys() == fresh.state_dict().keys()
    # Validation ran (eager) and reported DomainMetric's keys.
    assert any(
        k.startswith('val/') and k.endswith('OD_Dice')
        for k in runner.message_hub.log_scalars
    )


def test_lagged_log_vars():
    """Iteration k reports k - 1's values; the last lands after training."""
    model = torch.nn.Linear(1, 1)
    calls = []

    def train_step(data, optim_wrapper):
        calls.append(data)
        return dict(loss=torch.tensor(float(data)), acc_seg=torch.tensor(1.0))

    model.train_step = train_step
    runner = fake_runner(model, torch.optim.SGD(model.parameters(), lr=1))
    runner.message_hub = MessageHub.get_instance('test_lagged_log_vars')
    hook = FastPathHook(compile=False, channels_last=False, tf32=False)
    hook.before_train(runner)
    outs = [runner.model.train_step(i, optim_wrapper=None) for i in range(3)]
    assert outs[0] == {}
    assert [float(o['loss']) for o in outs[1:]] == [0.0, 1.0]
    assert calls == [0, 1, 2]
    hook.after_train(runner)
    assert runner.message_hub.get_scalar('train/loss').current() == 2.0
    assert model.train_step is train_step


def test_channels_last_ddp_buckets_match(tmp_path):
    """DDP compares full strides; 1x1/depthwise conv weight gradients from
    channels-last maps differ from contiguous weights in the size-1 dims.
    The wrapper converts first: no stride warning, grads match weights."""
    dist.init_process_group(
        'gloo', init_method=f'file://{tmp_path}/pg', rank=0, world_size=1
    )
    try:
        images, samples = batch()

        def one_step(wrapper_type):
            torch.manual_seed(0)
            ddp = wrapper_type(
                module=MODELS.build(tiny_dfq_cfg()), broadcast_buffers=False
            )
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter('always')
                losses = ddp(images, samples, mode='loss')
                sum(v for k, v in losses.items() if 'loss' in k).backward()
            stride_warnings = [
                w for w in caught if 'bucket view strides' in str(w.message)
            ]
            mismatched = [
                name
                for name, p in ddp.module.named_parameters()
                if p.grad is not None and p.grad.stride() != p.stride()
            ]
            return stride_warnings, mismatched

        # The fixed wrapper first: torch emits this warning once per process.
        fixed_warnings, fixed_mismatch = one_step(
            ChannelsLastDistributedDataParallel
        )
        plain_warnings, plain_mismatch = one_step(MMDistributedDataParallel)
    finally:
        dist.destroy_process_group()
    assert fixed_warnings == [] and fixed_mismatch == []
    # The check is live: the plain wrapper shows the problem.
    assert 'decode_head.fusion_conv.conv.weight' in plain_mismatch
    assert plain_warnings


def test_bf16_optim_wrapper():
    """bf16 autocast inside optim_context, no GradScaler, params update."""
    model = torch.nn.Linear(4, 2)
    wrapper = build_optim_wrapper(
        model,
        dict(
            type='BF16OptimWrapper',
            optimizer=dict(type='Adam', lr=0.1, fused=True),
        ),
    )
    assert not hasattr(wrapper, 'loss_scaler')
    before = model.weight.detach().clone()
    with wrapper.optim_context(model):
        out = model(torch.randn(3, 4))
    assert out.dtype == torch.bfloat16
    wrapper.update_params(out.float().square().mean())
    assert not torch.equal(before, model.weight)
    assert model.weight.dtype == torch.float32


def test_align_optimizer_state():
    """Contiguous (resumed) Adam state gets the channels-last param's
    strides and keeps its values."""
    conv = torch.nn.Conv2d(4, 4, 3)
    optimizer = torch.optim.Adam(conv.parameters())
    conv(torch.randn(1, 4, 5, 5)).sum().backward()
    optimizer.step()
    saved = optimizer.state_dict()
    to_channels_last(conv)
    resumed = torch.optim.Adam(conv.parameters())
    resumed.load_state_dict(saved)
    exp_avg = resumed.state[conv.weight]['exp_avg']
    assert exp_avg.stride() != conv.weight.stride()
    assert align_optimizer_state(resumed) == 2  # exp_avg, exp_avg_sq
    aligned = resumed.state[conv.weight]['exp_avg']
    assert aligned.stride() == conv.weight.stride()
    torch.testing.assert_close(aligned, exp_avg, rtol=0, atol=0)


def test_compile_arguments():
    """CUDA graphs only on CUDA; bad arguments fail clearly."""
    ro = dict(mode='reduce-overhead', dynamic=False)
    assert resolve_compile_kwargs(ro, 'cpu') == dict(dynamic=False)
    assert resolve_compile_kwargs(ro, 'cuda') == ro
    assert resolve_compile_kwargs(None, 'cuda') is None
    assert FastPathHook().compile_kwargs == ro
    assert FastPathHook(compile=False).compile_kwargs is None
    with pytest.raises(TypeError, match='compile must be a dict'):
        FastPathHook(compile='max-autotune')
    with pytest.raises(TypeError, match='modules must be a sequence'):
        FastPathHook(modules='backbone')
    model = torch.nn.Linear(1, 1)
    runner = fake_runner(model, torch.optim.SGD(model.parameters(), lr=1))
    with pytest.raises(ValueError, match='has none of the modules'):
        FastPathHook(compile=dict(backend='eager'))._compile(runner)


def test_set_tf32_uses_one_api():
    """TF32 through torch's precision API (legacy flags must not be mixed
    with it: reading them afterwards raises)."""
    from mmseg_dfq.engine import set_tf32

    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, 'fp32_precision'):
        pytest.skip('torch < 2.9: legacy allow_tf32 flags only')
    before = matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    try:
        set_tf32(True)
        assert matmul.fp32_precision == 'tf32'
        assert torch.backends.cudnn.conv.fp32_precision == 'tf32'
        set_tf32(False)
        assert matmul.fp32_precision == 'ieee'
        assert torch.backends.cudnn.conv.fp32_precision == 'ieee'
    finally:
        matmul.fp32_precision = before[0]
        torch.backends.cudnn.conv.fp32_precision = before[1]


def _train_losses(tmp_path, fundus_root, batched):
    cfg = Config.fromfile(FUNDUS_CONFIG)
    cfg.work_dir = str(tmp_path / ('batched' if batched else 'mmseg'))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = fundus_root
    cfg.train_dataloader.num_workers = 1
    cfg.train_dataloader.persistent_workers = False
    cfg.train_cfg.max_iters = 3
    cfg.train_cfg.val_interval = 100
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = 100
    cfg.randomness = dict(seed=0)
    if batched:
        cfg.train_dataloader.collate_fn = dict(type='stack_seg_collate')
        cfg.model.data_preprocessor.type = 'BatchSegDataPreProcessor'
    runner = Runner.from_cfg(cfg)
    forward = SegDataPreProcessor.forward
    with mock.patch.object(
        SegDataPreProcessor, 'forward', autospec=True, side_effect=forward
    ) as mmseg_forward:
        runner.train()
    # The batched run never falls back to mmseg's per-image path.
    assert mmseg_forward.called != batched
    hub = runner.message_hub
    return {
        key: list(hub.get_scalar(key).data[0])
        for key in hub.log_scalars
        if key.startswith('train/loss')
    }


def test_batched_data_path_trains_as_mmseg(tmp_path, fundus_root):
    """stack_seg_collate + BatchSegDataPreProcessor (the fast path's data
    path) through the Runner, a dataloader worker included: the same
    losses, bit for bit, as mmseg's pseudo_collate + SegDataPreProcessor."""
    expected = _train_losses(tmp_path, fundus_root, batched=False)
    got = _train_losses(tmp_path, fundus_root, batched=True)
    assert expected and len(expected['train/loss']) == 3
    assert got == expected
