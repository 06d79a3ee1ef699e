"""Compare the compute cost of DFQ with SegFormer: step time, speed, memory.

For every backbone size it builds, from the MiT-b0 bases in
``configs/_base_/models`` with ``MIT_SIZES``'s size set on top:

- ``segformer-256``: SegFormer with mmseg's stock 256-channel MLP head;
- ``segformer-768``: our SegFormer base (768-channel head, as in the paper);
- ``dfq``: full DFQ (RDWT backbone + DFQHead + RDWT loss), fusion applied
  at each level's resolution (``fuse_at_level_resolution=True``);
- ``dfq-plainfuse``: the same with the concatenate-then-fuse path;
- ``dfqhead``: DFQ with RDWT disabled (MiT + DFQHead), for the RDWT share.

Every variant's MiT computes attention as DFQ's
``RDWTMixVisionTransformer(fused_attention='auto')`` does (torch's fused
kernel, except compiled float32 on CUDA; the SegFormer and DFQHead variants
get it as an RDWT MiT with no stage whitened), so the comparisons measure
the heads and RDWT, not two attention implementations.

Each model runs in its own spawned process (so peak memory is its own), on
the same random images and labels, and is measured for:

- train step: forward + loss + backward + Adam step, milliseconds;
- inference: images per second, ``eval()``, no grad, logits only;
- peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (weights, grads,
  Adam state and activations); on CPU the rise of the process's peak RSS
  (``resource.getrusage``) above its RSS after the model was built, which
  includes allocator caching.

Timings are the median and inter-quartile range of ``--repeats`` runs after
``--warmup`` runs, with ``torch.cuda.synchronize`` around each on GPU. The
RDWT share of the DFQ train step is given two ways: the instance norms and
the loss timed alone (forward + backward on maps of the DFQ backbone's
output shapes; wall time, and on CUDA the device's busy time from the
profiler), and the step time of ``dfq`` minus ``dfqhead``. On CUDA the
device's busy time within each train step is reported too (a step whose
wall time is well above it waits for the host). With
``--profile`` the top operators of one DFQ train step are printed.

Norm layers use plain BN (the configs' SyncBN needs no process group on one
device either way, but BN keeps the comparison free of its checks).

Each model can run on two paths and in two precisions (``--paths``,
``--dtypes``; on CUDA all four combinations by default, on CPU eager fp32):

- ``eager``: the model as built, ``torch.optim.Adam``;
- ``fast``: what ``configs/_base_/fast_path.py`` switches on in the Runner
  (:class:`mmseg_dfq.engine.FastPathHook`): backbone, decode head and losses
  compiled (``mode='reduce-overhead'``, i.e. CUDA graphs, on CUDA; inductor's
  default mode on CPU), channels-last weights, TF32, fused Adam. Inference
  is compiled the same way, since the benchmark's size is fixed (the hook
  keeps validation/test eager by default). ``compile s`` is the time of the
  first call (tracing, code generation, graph capture);
- ``bf16``: bf16 autocast without a loss scaler
  (:class:`mmseg_dfq.engine.BF16OptimWrapper`); ``fp32`` otherwise.

``--loss-check N`` trains one model N steps eager and N steps on the fast
path from the same weights and batches (drop rates set to 0: compiled code
draws its own random numbers) and prints the relative difference of the
losses. ``--full-schedule CONFIG`` runs a config through the Runner
(``--schedule-iters`` iterations, data loading and validation included) and
reports iterations per second, the data-loading share (split into the
dataloader's ``next()`` and the hooks mmengine counts in it) and the time
the config's whole schedule would take. ``--loader CONFIG`` times the main
process's share of CONFIG's training batches, the dataloader workers kept
ahead: receiving a batch from them and pre-processing it on ``--device``,
with mmseg's ``pseudo_collate`` + ``SegDataPreProcessor`` and with
``stack_seg_collate`` + ``BatchSegDataPreProcessor``.

Examples:
    python tools/benchmark.py --device cpu --backbones b0 b2 --repeats 3
    python tools/benchmark.py --device cuda --backbones b2 --batch 16 \\
        --variants dfq dfqhead segformer-768 --loss-check 50
    python tools/benchmark.py --device cuda --full-schedule \\
        configs/dfq/dfq_mit-b2_fundus_d1_fast.py --schedule-iters 500
    python tools/benchmark.py --loader \\
        configs/dfq/dfq_mit-b2_fundus_d1_fast.py --cfg-options \\
        train_dataloader.dataset.data_root=DIR
"""

import argparse
import contextlib
import math
import multiprocessing as mp
import os
import os.path as osp
import resource
import statistics
import sys
import time

from mmengine.config import DictAction
from mmengine.hooks import Hook

MODEL_DIR = osp.join(
    osp.dirname(osp.abspath(__file__)), '..', 'configs', '_base_', 'models'
)
# MiT sizes, set on the b0 model bases as mmseg's SegFormer configs do
# (mmseg's configs/segformer/segformer_mit-b{1..5}_*.py; SegFormer paper,
# table 6): width of the first stage, blocks per stage and heads per stage.
# Stage i has embed_dims * num_heads[i] channels, which the head reads.
MIT_SIZES = {
    'b0': dict(embed_dims=32, num_layers=[2, 2, 2, 2]),
    'b1': dict(embed_dims=64, num_layers=[2, 2, 2, 2]),
    'b2': dict(embed_dims=64, num_layers=[3, 4, 6, 3]),
    'b3': dict(embed_dims=64, num_layers=[3, 4, 18, 3]),
    'b4': dict(embed_dims=64, num_layers=[3, 8, 27, 3]),
    'b5': dict(embed_dims=64, num_layers=[3, 6, 40, 3]),
}
MIT_HEADS = [1, 2, 5, 8]
# The MiT of the SegFormer and DFQHead-only variants, with the attention
# kernels of DFQ's RDWT MiT (fused_attention='auto'): mmseg's MiT with no stage
# whitened, the same weights. mmseg's own MiT computes the attention
# explicitly; every variant sharing one attention makes the ratios (and
# dfq - dfqhead, the RDWT share) measure the head and RDWT only.
FUSED_MIT = dict(type='RDWTMixVisionTransformer', rdwt_stages=())
# name -> (base config prefix, edits to the model config).
VARIANTS = {
    'segformer-256': (
        'segformer',
        dict(backbone=FUSED_MIT, decode_head=dict(channels=256)),
    ),
    'segformer-768': ('segformer', dict(backbone=FUSED_MIT)),
    'dfq': ('dfq', dict(decode_head=dict(fuse_at_level_resolution=True))),
    'dfq-plainfuse': (
        'dfq',
        dict(decode_head=dict(fuse_at_level_resolution=False)),
    ),
    'dfqhead': ('dfqhead', dict(backbone=FUSED_MIT)),
}
PATHS = ('eager', 'fast')
DTYPES = ('fp32', 'bf16')
TARGETS = (
    'targets (b2): DFQ train step <= 1.0x SegFormer-256 and <= 0.5x '
    'SegFormer-768; peak memory <= 1.0x SegFormer-256; RDWT <= 3% of step'
)
GPU_TARGETS = (
    'GPU targets (H100/H200, MiT-b2, B16@256): dfq fast train step <= 25 ms; '
    'bf16 <= 0.8x fp32; inference >= 2,000 img/s; RDWT <= 3% of the step; '
    'fast vs eager loss after 50 steps within 1e-3 relative'
)


def parse_args():
    parser = argparse.ArgumentParser(
        description='Train-step time, inference speed and peak memory of '
        'DFQ vs SegFormer, eager vs the fast path, fp32 vs bf16'
    )
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--batch', type=int, default=4, help='batch size')
    parser.add_argument('--size', type=int, default=256, help='image side')
    parser.add_argument(
        '--repeats', type=int, default=5, help='timed runs per measure'
    )
    parser.add_argument(
        '--warmup',
        type=int,
        default=2,
        help='untimed runs first (the fast path needs >= 3 for CUDA graphs)',
    )
    parser.add_argument(
        '--backbones',
        nargs='+',
        default=['b0', 'b2'],
        choices=list(MIT_SIZES),
    )
    parser.add_argument(
        '--variants',
        nargs='+',
        default=list(VARIANTS),
        choices=list(VARIANTS),
        help='models to measure (default: all)',
    )
    parser.add_argument(
        '--paths',
        nargs='+',
        choices=PATHS,
        help='eager and/or fast (default: both on cuda, eager on cpu)',
    )
    parser.add_argument(
        '--dtypes',
        nargs='+',
        choices=DTYPES,
        help='fp32 and/or bf16 autocast (default: both on cuda, fp32 on cpu)',
    )
    parser.add_argument('--num-classes', type=int, default=3)
    parser.add_argument(
        '--threads',
        type=int,
        default=0,
        help='torch CPU threads; 0 = keep. Use 1 if other processes load '
        'the CPU: oversubscribed OpenMP threads slow CPU runs ~100x',
    )
    parser.add_argument(
        '--profile',
        action='store_true',
        help='print the top operators of one DFQ train step per backbone; '
        'with --full-schedule, profile PROFILE_ITERS Runner iterations after '
        '--skip-iters: device busy time per iteration against its wall time '
        '(host- or device-bound) and the top operators',
    )
    parser.add_argument(
        '--profile-iters',
        type=int,
        default=20,
        help='iterations --full-schedule --profile records (default: 20)',
    )
    parser.add_argument(
        '--sync-check',
        action='store_true',
        help='on CUDA, list the host synchronisations of one train step '
        "of every model (torch.cuda.set_sync_debug_mode('warn')); with "
        '--full-schedule, of one whole Runner iteration (hooks included) '
        'at the end of the warm-up',
    )
    parser.add_argument(
        '--loss-check',
        type=int,
        default=0,
        metavar='STEPS',
        help='also train the first backbone/variant STEPS steps eager and '
        'fast (first dtype) and compare the losses',
    )
    parser.add_argument(
        '--full-schedule',
        metavar='CONFIG',
        help='only run CONFIG through the Runner (data loading and '
        'validation included) and report iterations/s',
    )
    parser.add_argument(
        '--schedule-iters',
        type=int,
        default=0,
        help='iterations of --full-schedule (default: the config max_iters)',
    )
    parser.add_argument(
        '--skip-iters',
        type=int,
        default=5,
        help='first iterations of --full-schedule left out of the rates '
        '(compilation, worker start-up)',
    )
    parser.add_argument(
        '--epoch-iters',
        type=int,
        default=None,
        help='iterations per epoch for the --full-schedule estimate '
        "(default: the train dataloader's length; the real fundus release "
        'gives 53 for held-out Domain1)',
    )
    parser.add_argument(
        '--val-images',
        type=int,
        default=None,
        help='images per validation for the --full-schedule estimate '
        "(default: the val dataloader's data set size)",
    )
    parser.add_argument(
        '--loader',
        metavar='CONFIG',
        help="only time the main process's side of CONFIG's train batches "
        '(receive from the workers, pre-process on --device) for the '
        'per-image and the stacked data paths',
    )
    parser.add_argument(
        '--loader-gap',
        type=float,
        default=0.3,
        help='seconds --loader waits before each batch, so that the workers '
        'are ahead (a stand-in for the training step; default: 0.3)',
    )
    parser.add_argument(
        '--loader-contend',
        action='store_true',
        help='--loader: receive each batch while another thread of the '
        'process runs Python, as the main thread of a training process '
        'does while it queues a GPU step (on a GPU the pin-memory thread '
        'receives the batches, competing with it for the GIL). A worst '
        'case: that thread never waits. The loader does not pin, so that '
        'the timed call is the one that unpickles the batch',
    )
    parser.add_argument(
        '--sharing-strategy',
        choices=('file_descriptor', 'file_system'),
        default=None,
        help='--full-schedule / --loader: how dataloader workers share '
        "tensors with the main process (torch.multiprocessing; Linux's "
        'default is file_descriptor, whose receiving side makes a socket '
        'round trip to the worker per shared storage)',
    )
    parser.add_argument(
        '--paint',
        type=int,
        default=0,
        metavar='SIDE',
        help="only time --show-dir painting of a SIDE px image: mmseg's "
        'visualiser vs the plain overlay writer',
    )
    parser.add_argument(
        '--switch-interval',
        type=float,
        default=None,
        metavar='SECONDS',
        help="--full-schedule / --loader: Python's thread switch interval "
        '(sys.setswitchinterval; default: keep, 0.005). The pin-memory '
        'thread needs the GIL back after each copy, and a busy main '
        'thread hands it over only every interval; a shorter one tests '
        'whether that is where the data time goes',
    )
    parser.add_argument(
        '--work-dir',
        default=None,
        help='work dir of --full-schedule (default: a temporary one)',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='overrides of the --full-schedule / --loader config, e.g. '
        'train_dataloader.dataset.data_root=DIR',
    )
    args = parser.parse_args()
    if args.switch_interval is not None and not args.switch_interval > 0:
        parser.error(
            '--switch-interval must be > 0 seconds, got '
            f'{args.switch_interval}'
        )
    if args.loader_contend and not args.loader:
        parser.error('--loader-contend goes with --loader')
    for flag, value in (
        ('--sharing-strategy', args.sharing_strategy),
        ('--switch-interval', args.switch_interval),
    ):
        if value is not None and not (args.loader or args.full_schedule):
            parser.error(f'{flag} goes with --loader or --full-schedule')
    cuda = args.device == 'cuda'
    args.paths = args.paths or (list(PATHS) if cuda else ['eager'])
    args.dtypes = args.dtypes or (list(DTYPES) if cuda else ['fp32'])
    return args


def summarize(times):
    """Median and inter-quartile range of a list of seconds."""
    if len(times) < 2:
        return times[0], 0.0
    q1, _, q3 = statistics.quantiles(times, n=4, method='inclusive')
    return statistics.median(times), q3 - q1


def timed(fn, warmup, repeats, sync):
    """Run ``fn`` warmup + repeats times; return (timed seconds, first).

    ``first`` is the duration of the very first call (compilation and
    graph capture on the fast path).
    """
    first = None
    for i in range(warmup):
        start = time.perf_counter()
        fn()
        sync()
        if i == 0:
            first = time.perf_counter() - start
    sync()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times, first if first is not None else times[0]


def current_rss():
    """Resident set size of this process in bytes (Linux)."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def peak_rss():
    """Peak resident set size of this process in bytes (Linux: KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mit_size_edits(backbone):
    """Model config keys that turn a MiT-b0 base into ``backbone``'s size.

    Args:
        backbone (str): A key of :data:`MIT_SIZES`, e.g. ``'b2'``.

    Returns:
        dict: ``backbone`` and ``decode_head`` edits for ``model``.
    """
    size = MIT_SIZES[backbone]
    widths = [size['embed_dims'] * heads for heads in MIT_HEADS]
    return dict(
        backbone=dict(num_heads=list(MIT_HEADS), **size),
        decode_head=dict(in_channels=widths),
    )


def build_model(backbone, variant, num_classes, no_drop=False):
    """Build one benchmark model from the b0 base configs, offline.

    The size comes from :data:`MIT_SIZES`, so every size is measured on
    the same base file as b0 (the repo keeps sized bases only for the
    sizes its configs train).
    """
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import mmseg_dfq  # noqa: F401  (registers DFQ; before mmseg.models)

    init_default_scope('mmseg')
    prefix, edits = VARIANTS[variant]
    cfg = Config.fromfile(osp.join(MODEL_DIR, f'{prefix}_mit-b0.py'))
    size = mit_size_edits(backbone)
    cfg.merge_from_dict(
        dict(
            model=dict(
                backbone=dict(
                    init_cfg=None,
                    **size['backbone'],
                    **edits.get('backbone', {}),
                ),
                decode_head=dict(
                    num_classes=num_classes,
                    norm_cfg=dict(type='BN', requires_grad=True),
                    **size['decode_head'],
                    **edits.get('decode_head', {}),
                ),
            )
        )
    )
    if no_drop:
        cfg.model.backbone.drop_path_rate = 0.0
        cfg.model.decode_head.dropout_ratio = 0.0
        if 'drop_path_rate' in cfg.model.decode_head:
            cfg.model.decode_head.drop_path_rate = 0.0
    return MODELS.build(cfg.model)


def rdwt_seconds(model, images, warmup, repeats, sync, compiled=False):
    """Time the RDWT work alone: instance norms + loss, forward + backward.

    Maps of the DFQ backbone's (pre-norm) output shapes, channels-last as
    the backbone hands them over, stand in for the stage outputs; the cost
    of RDWT does not depend on their values. The loss has the model's
    settings (layout, ``normalize``...). With ``compiled`` the norms and the
    loss go through ``torch.compile`` as the fast path compiles them: with
    CUDA graphs (``mode='reduce-overhead'``) on CUDA, inductor's default
    mode elsewhere.

    Returns:
        tuple[list[float], float | None]: Wall seconds per call (host
        launch and synchronisation included: an isolated small graph is
        host-bound), and on CUDA the device's busy seconds per call (the
        kernels' own time, what RDWT adds to a device-bound step).
    """
    import torch

    from mmseg_dfq.models.losses import RDWTLoss, instance_norm

    with torch.no_grad():
        shapes = [f.shape for f in model.backbone(images)]
    backbone = model.backbone
    head_loss = model.decode_head.loss_rdwt
    loss_fn = RDWTLoss(
        loss_weight=head_loss.loss_weight,
        stage_weights=head_loss.stage_weights,
        reduction=head_loss.reduction,
        layout=head_loss.layout,
        with_diagonal=head_loss.with_diagonal,
        normalize=head_loss.normalize,
        eps=head_loss.eps,
    )
    feats = [
        torch.randn(s, device=images.device)
        .contiguous(memory_format=torch.channels_last)
        .requires_grad_()
        for s in shapes
    ]

    def forward(maps):
        normed = [
            instance_norm(f, backbone.rdwt_eps, backbone.rdwt_layout)
            for f in maps
        ]
        # The whitened maps also carry the segmentation gradient back.
        return loss_fn(normed) + sum(n.sum() for n in normed) * 0

    cuda = images.device.type == 'cuda'
    mark_step = lambda: None  # noqa: E731
    if compiled:
        if cuda:
            forward = torch.compile(forward, mode='reduce-overhead')
            mark_step = torch.compiler.cudagraph_mark_step_begin
        else:
            forward = torch.compile(forward)

    def step():
        mark_step()
        forward(feats).backward()
        for f in feats:
            f.grad = None

    wall = timed(step, warmup, repeats, sync)[0]
    return wall, device_seconds(step, repeats) if cuda else None


def device_busy_us(events):
    """Busy time of the device in profiler events, in microseconds.

    Counts the device-side events only, as torch's own profiler table
    footer does: a CPU operator's self device time repeats the time of the
    kernels it launched, so summing every event would count them twice.

    Args:
        events: ``prof.events()`` or ``prof.key_averages()``.

    Returns:
        float: The summed self device time of the kernels and copies.
    """
    from torch.autograd import DeviceType

    total = 0.0
    for e in events:
        if e.device_type == DeviceType.CUDA and not getattr(
            e, 'is_user_annotation', False
        ):
            total += getattr(e, 'self_device_time_total', None) or getattr(
                e, 'self_cuda_time_total', 0
            )
    return total


def device_seconds(fn, calls):
    """The device's busy seconds per call of ``fn`` (CUDA, profiled)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(
        activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]
    ) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    return device_busy_us(prof.key_averages()) / 1e6 / calls


def make_batch(args, device):
    """Random images and labelled SegDataSamples, the same for every run."""
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(0)
    size = args.size
    images = torch.randn(args.batch, 3, size, size, generator=g).to(device)
    labels = torch.randint(
        0, args.num_classes, (args.batch, 1, size, size), generator=g
    ).to(device)
    samples = []
    for label in labels:
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=label)
        sample.set_metainfo(
            dict(
                img_shape=(size, size),
                ori_shape=(size, size),
                pad_shape=(size, size),
            )
        )
        samples.append(sample)
    return images, samples


def apply_fast_path(model, cuda, compile_eval=True):
    """FastPathHook's settings on a bare model; returns the compile args."""
    from mmseg_dfq.engine import (
        FastPathHook,
        compile_forward,
        set_tf32,
        to_channels_last,
    )
    from mmseg_dfq.engine.fast_path import resolve_compile_kwargs

    hook = FastPathHook()
    set_tf32(hook.tf32)
    to_channels_last(model)
    device = 'cuda' if cuda else 'cpu'
    train_kwargs = resolve_compile_kwargs(hook.compile_kwargs, device)
    # The benchmark's input size is fixed: inference may be compiled too.
    eval_kwargs = train_kwargs if compile_eval else None
    compile_forward(model.backbone, train_kwargs, eval_kwargs)
    compile_forward(model.decode_head, train_kwargs, eval_kwargs)
    for _, loss in hook.loss_modules(model.decode_head):
        compile_forward(loss, train_kwargs, None)
    return train_kwargs


def make_steps(model, images, samples, path, dtype, cuda):
    """Train-step and inference closures for one path and precision."""
    import contextlib

    import torch

    fast = path == 'fast'
    device = 'cuda' if cuda else 'cpu'
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=fast)

    def autocast():
        if dtype == 'bf16':
            return torch.autocast(device_type=device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    mark_step = (
        torch.compiler.cudagraph_mark_step_begin
        if fast and cuda
        else (lambda: None)
    )

    def train_step():
        mark_step()
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            losses = model.loss(images, samples)
        loss = sum(v for k, v in losses.items() if 'loss' in k)
        loss.backward()
        optimizer.step()
        return loss.detach().clone()

    def infer():
        mark_step()
        with torch.no_grad(), autocast():
            model(images, mode='tensor')

    return train_step, infer


def run_one(job):
    """Measure one model in this (fresh) process; return a result dict."""
    import torch

    backbone, variant, path, dtype, args = job
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == 'cuda'

    def sync():
        if cuda:
            torch.cuda.synchronize()

    model = build_model(backbone, variant, args.num_classes).to(device)
    images, samples = make_batch(args, device)
    if path == 'fast':
        apply_fast_path(model, cuda)
    train_step, infer = make_steps(model, images, samples, path, dtype, cuda)

    result = dict(
        backbone=backbone,
        variant=variant,
        path=path,
        dtype=dtype,
        threads=torch.get_num_threads(),
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    base_rss = current_rss()

    # Inference first: on CPU the peak RSS only grows, and training's is
    # the larger one.
    model.eval()
    result['infer'], result['infer_first'] = timed(
        infer, args.warmup, args.repeats, sync
    )
    if cuda:
        result['infer_mem'] = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        result['infer_mem'] = peak_rss() - base_rss
    model.train()
    result['train'], result['train_first'] = timed(
        train_step, args.warmup, args.repeats, sync
    )
    if cuda:
        result['train_mem'] = torch.cuda.max_memory_allocated(device)
        # Busy time of the device within the step: a wall time well above
        # it is host overhead (launches, Python) the GPU waits for.
        result['train_device'] = device_seconds(
            train_step, min(args.repeats, 10)
        )
    else:
        result['train_mem'] = peak_rss() - base_rss

    if (
        variant.startswith('dfq')
        and model.decode_head.loss_rdwt is not None
        and dtype == 'fp32'
    ):
        result['rdwt'] = rdwt_seconds(
            model,
            images,
            args.warmup,
            args.repeats,
            sync,
            compiled=path == 'fast',
        )
    if args.sync_check and cuda:
        result['syncs'] = host_syncs(train_step)
    if args.profile and variant == 'dfq':
        result['profile'] = profile_step(train_step, cuda)
    return result


def loss_check(job):
    """Losses of N eager and N fast-path steps from the same start."""
    import copy

    import torch

    backbone, variant, dtype, steps, args = job
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == 'cuda'
    torch.manual_seed(0)
    eager = build_model(backbone, variant, args.num_classes, no_drop=True)
    eager = eager.to(device)
    fast = copy.deepcopy(eager)
    apply_fast_path(fast, cuda, compile_eval=False)
    images, samples = make_batch(args, device)
    out = {}
    for name, model in (('eager', eager), ('fast', fast)):
        step, _ = make_steps(model, images, samples, name, dtype, cuda)
        model.train()
        out[name] = torch.stack([step() for _ in range(steps)]).float().cpu()
    rel = (out['fast'] - out['eager']).abs() / out['eager'].abs()
    return dict(
        backbone=backbone,
        variant=variant,
        dtype=dtype,
        steps=steps,
        eager_last=float(out['eager'][-1]),
        fast_last=float(out['fast'][-1]),
        rel_last=float(rel[-1]),
        rel_max=float(rel.max()),
    )


def host_syncs(train_step):
    """Where one train step makes the host wait for the GPU.

    ``torch.cuda.set_sync_debug_mode('warn')`` warns at every synchronising
    CUDA call (``.item()``, a data-dependent shape, a blocking copy); the
    warnings are collected with the Python frame that caused each.

    Returns:
        list[str]: For each synchronising call, in order, the innermost
        frame outside torch, and the torch frame that issued it.
    """
    with SyncSites(cuda=True) as recorder:
        train_step()
    return recorder.sites


# The sync debug mode's warning at a synchronising call. Its one-time notice
# when the mode is switched on ("Synchronization debug mode is a prototype
# feature and does not yet detect all synchronizing operations") must not
# match: an earlier filter on 'synchronizing' counted it as a sync.
SYNC_WARNING = 'called a synchronizing CUDA operation'


class WarningSites:
    """Records where each warning whose message holds ``match`` came from.

    A context manager (or :meth:`start` / :meth:`stop`, for a window that
    spans Runner hooks). A warning raised inside torch (the sync debug
    mode's, say) names torch's own line; the caller that matters is the
    innermost frame of the stack outside torch, so each site is given as
    ``caller:line (via torch_file:line)``. ``library``: the directory whose
    frames are skipped (default: torch's).
    """

    def __init__(self, match, library=None):
        import warnings

        import torch

        self.match = match
        self.library = osp.abspath(library or osp.dirname(torch.__file__))
        self.machinery = osp.abspath(warnings.__file__)
        self.sites = []
        self._catcher = None

    def _record(self, message, category, filename, lineno, *args, **kwargs):
        import traceback

        if self.match not in str(message):
            return
        site = f'{osp.relpath(filename)}:{lineno}'
        callers = [
            f
            for f in traceback.extract_stack()[:-1]
            if not osp.abspath(f.filename).startswith(self.library + os.sep)
            and osp.abspath(f.filename) != self.machinery
        ]
        if callers:
            caller = callers[-1]
            where = f'{osp.relpath(caller.filename)}:{caller.lineno}'
            if where != site:
                site = f'{where} (via {site})'
        self.sites.append(site)

    def start(self):
        import warnings

        self._catcher = warnings.catch_warnings()
        self._catcher.__enter__()
        warnings.simplefilter('always')
        warnings.showwarning = self._record
        return self

    def stop(self):
        if self._catcher is not None:
            self._catcher.__exit__(None, None, None)
            self._catcher = None

    __enter__ = start

    def __exit__(self, *exc):
        self.stop()


class SyncSites(WarningSites):
    """:class:`WarningSites` of the host synchronisations in a window.

    On CUDA, :meth:`start` lets the queued work finish and switches
    ``torch.cuda.set_sync_debug_mode('warn')`` on (a warning at every
    synchronising call); :meth:`stop` switches it off again. Off CUDA it
    only records warnings.
    """

    def __init__(self, cuda: bool):
        super().__init__(SYNC_WARNING)
        self.cuda = cuda

    def start(self):
        super().start()
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode('warn')
        return self

    def stop(self):
        if self.cuda:
            import torch

            torch.cuda.set_sync_debug_mode('default')
        super().stop()

    __enter__ = start


def warning_sites(fn, match, library=None):
    """Call ``fn``; the sites of its warnings that hold ``match``
    (:class:`WarningSites`)."""
    with WarningSites(match, library) as recorder:
        fn()
    return recorder.sites


def profile_step(train_step, cuda):
    """Table of the top operators of one train step (self time)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        train_step()
    key = 'self_cuda_time_total' if cuda else 'self_cpu_time_total'
    return prof.key_averages().table(sort_by=key, row_limit=15)


def mib(n):
    return n / 2**20


def environment(device):
    """One line: device name, torch and CUDA versions."""
    import platform

    import torch

    if device == 'cuda':
        name = torch.cuda.get_device_name()
        return (
            f'{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, '
            f'cuDNN {torch.backends.cudnn.version()}'
        )
    return (
        f'CPU {platform.machine()} ({os.cpu_count()} cores), '
        f'torch {torch.__version__}'
    )


def report(results, args):
    """Print the table, the ratios against SegFormer and the RDWT share."""
    mem_kind = (
        'max_memory_allocated'
        if args.device == 'cuda'
        else 'peak RSS rise (getrusage)'
    )
    print(f'\n{environment(args.device)}')
    print(
        f'device {args.device}, batch {args.batch}, {args.size}x'
        f'{args.size}, warmup {args.warmup}, repeats {args.repeats}, '
        f'torch threads {results[0]["threads"]}; '
        f'times median [IQR]; memory = {mem_kind}, MiB'
    )
    header = (
        f'{"backbone":<8} {"model":<14} {"path":<5} {"dtype":<5} '
        f'{"train ms":>18} {"infer img/s":>18} {"train mem":>10} '
        f'{"infer mem":>10} {"compile s":>9}'
    )
    print(header)
    print('-' * len(header))
    by_key = {}
    for r in results:
        by_key[r['backbone'], r['variant'], r['path'], r['dtype']] = r
        t, t_iqr = summarize(r['train'])
        ips = [args.batch / s for s in r['infer']]
        v, v_iqr = summarize(ips)
        first = r['train_first'] + r['infer_first']
        print(
            f'{r["backbone"]:<8} {r["variant"]:<14} {r["path"]:<5} '
            f'{r["dtype"]:<5} '
            f'{t * 1e3:>9.1f} [{t_iqr * 1e3:>6.1f}] '
            f'{v:>9.2f} [{v_iqr:>6.2f}] '
            f'{mib(r["train_mem"]):>10.0f} {mib(r["infer_mem"]):>10.0f} '
            f'{first:>9.1f}'
        )
    for r in results:
        if r.get('train_device') is not None:
            t = summarize(r['train'])[0]
            busy = r['train_device']
            print(
                f'  {r["backbone"]} {r["variant"]} {r["path"]} {r["dtype"]}: '
                f'device busy {busy * 1e3:.1f} ms of the {t * 1e3:.1f} ms '
                f'train step ({100 * busy / t:.0f}%; the rest the GPU waits '
                'for the host)'
            )
    print()
    base = (args.paths[0], args.dtypes[0])
    for backbone in args.backbones:
        print(f'{backbone} ({base[0]} {base[1]}):')
        for name in ('dfq', 'dfq-plainfuse'):
            dfq = by_key.get((backbone, name, *base))
            if dfq is None:
                continue
            for ref_name in ('segformer-256', 'segformer-768'):
                ref = by_key.get((backbone, ref_name, *base))
                if ref is None:
                    continue
                time_ratio = (
                    summarize(dfq['train'])[0] / summarize(ref['train'])[0]
                )
                speed_ratio = (
                    summarize(ref['infer'])[0] / summarize(dfq['infer'])[0]
                )
                mem_ratio = dfq['train_mem'] / max(ref['train_mem'], 1)
                print(
                    f'  {name}/{ref_name}: train step {time_ratio:.2f}x, '
                    f'inference speed {speed_ratio:.2f}x, '
                    f'train memory {mem_ratio:.2f}x'
                )
        for variant in args.variants:
            report_paths(by_key, backbone, variant)
        report_rdwt(by_key, backbone, args)
        for r in results:
            if r['backbone'] == backbone and 'syncs' in r:
                where = sorted(set(r['syncs']))
                print(
                    f'  host syncs in one {r["variant"]} {r["path"]} '
                    f'{r["dtype"]} train step: {len(r["syncs"])}'
                    + (f' at {", ".join(where)}' if where else '')
                )
        for r in results:
            if r['backbone'] == backbone and 'profile' in r:
                print(
                    f'  top operators of one {r["variant"]}-{backbone} '
                    f'{r["path"]} {r["dtype"]} train step:'
                )
                print(r['profile'])
    print(TARGETS)
    if args.device == 'cuda':
        print(GPU_TARGETS)


def report_paths(by_key, backbone, variant):
    """Fast/eager and bf16/fp32 ratios of one model's train step."""
    step = {
        (p, d): summarize(r['train'])[0]
        for (b, v, p, d), r in by_key.items()
        if b == backbone and v == variant
    }
    parts = []
    for dtype in DTYPES:
        if ('eager', dtype) in step and ('fast', dtype) in step:
            ratio = step['eager', dtype] / step['fast', dtype]
            parts.append(f'fast path {ratio:.2f}x faster ({dtype})')
    for path in PATHS:
        if (path, 'fp32') in step and (path, 'bf16') in step:
            ratio = step[path, 'bf16'] / step[path, 'fp32']
            parts.append(f'bf16/fp32 step {ratio:.2f}x ({path})')
    if parts:
        print(f'  {variant}: ' + '; '.join(parts))


def report_rdwt(by_key, backbone, args):
    """RDWT share of the dfq step: alone, and dfq - dfqhead per path."""
    for path in args.paths:
        for dtype in args.dtypes:
            dfq = by_key.get((backbone, 'dfq', path, dtype))
            if dfq is None:
                continue
            step = summarize(dfq['train'])[0]
            parts = []
            if 'rdwt' in dfq:
                wall, busy = dfq['rdwt']
                rdwt = summarize(wall)[0]
                how = 'eager'
                if path == 'fast':
                    how = (
                        'compiled, CUDA graphs'
                        if args.device == 'cuda'
                        else 'compiled'
                    )
                parts.append(
                    f'norms + loss alone ({how}) {rdwt * 1e3:.2f} ms wall = '
                    f'{100 * rdwt / step:.1f}%'
                )
                if busy is not None:
                    parts.append(
                        f'their device time {busy * 1e3:.2f} ms = '
                        f'{100 * busy / step:.1f}% of the step'
                    )
            ablation = by_key.get((backbone, 'dfqhead', path, dtype))
            if ablation is not None:
                diff = step - summarize(ablation['train'])[0]
                parts.append(
                    f'dfq - dfqhead step {diff * 1e3:.1f} ms = '
                    f'{100 * diff / step:.1f}%'
                )
            if parts:
                print(
                    f'  RDWT share of the dfq {path} {dtype} train step: '
                    + '; '.join(parts)
                )


class ScheduleTimer(Hook):
    """Times the validation runs inside a schedule."""

    priority = 'LOWEST'

    def __init__(self):
        self.val_seconds = []
        self._start = None

    def before_val(self, runner):
        self._start = time.perf_counter()

    def after_val(self, runner):
        self.val_seconds.append(time.perf_counter() - self._start)


class ScheduleProfiler(Hook):
    """Profiles ``n`` Runner iterations from iteration ``start`` on.

    Reports the device's busy time per iteration (the sum of the kernels'
    self times) against the iteration's wall time: a step whose wall time
    is well above its busy time waits for the host (Python, launches, data),
    one whose busy time fills it is device-bound. Then the top operators by
    self device time (CUDA; and by self CPU time, where the host's time
    goes) or self CPU time.
    """

    priority = 'VERY_LOW'

    def __init__(self, start: int, n: int, cuda: bool):
        self.start, self.n, self.cuda = start, n, cuda
        self.prof = None
        self.report = None
        self._t0 = None

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter == self.start and self.prof is None:
            import torch
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU]
            if self.cuda:
                torch.cuda.synchronize()
                activities.append(ProfilerActivity.CUDA)
            self.prof = profile(activities=activities)
            self.prof.__enter__()
            self._t0 = time.perf_counter()

    def after_train_iter(
        self, runner, batch_idx, data_batch=None, outputs=None
    ):
        if self.prof is None or self.report is not None:
            return
        if runner.iter + 1 < self.start + self.n:
            return
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        wall = (time.perf_counter() - self._t0) / self.n
        self.prof.__exit__(None, None, None)
        events = self.prof.key_averages()
        lines = [
            f'  profiled {self.n} iterations from {self.start}: wall '
            f'{wall * 1e3:.1f} ms/it (data loading included)'
        ]
        if self.cuda:
            busy = device_busy_us(events) / 1e3 / self.n
            lines.append(
                f'  device busy {busy:.1f} ms/it = '
                f'{100 * busy / 1e3 / wall:.0f}% of the wall time (the rest '
                'the GPU waits for the host)'
            )
            key = 'self_cuda_time_total'
        else:
            key = 'self_cpu_time_total'
        try:
            lines.append(events.table(sort_by=key, row_limit=20))
            if self.cuda:
                # Where the host's time goes (the GPU waits for it).
                lines.append('  top operators by self CPU time:')
                lines.append(
                    events.table(sort_by='self_cpu_time_total', row_limit=15)
                )
        except (AttributeError, KeyError, ValueError) as err:
            # The measurement above stands; only the table is lost.
            lines.append(f'  (no operator table: {err})')
        self.report = '\n'.join(lines)


class ScheduleSyncCheck(Hook):
    """Host synchronisations of one whole Runner iteration, hooks included.

    Opens at the iteration's first ``before_train_iter`` hook (this one,
    registered 'HIGHEST') and closes after its last ``after_train_iter``
    hook (:attr:`closer`, registered 'LOWEST'): the data preprocessor, the
    step, the optimizer wrapper and every hook, all but the dataloader's
    ``next()``. On CUDA, ``torch.cuda.set_sync_debug_mode('warn')`` is on
    in that window; the sites come from :class:`SyncSites`.
    """

    priority = 'HIGHEST'

    def __init__(self, iteration: int, cuda: bool):
        self.iteration, self.cuda = iteration, cuda
        self.recorder = SyncSites(cuda)
        self.checked = False
        self.closer = _SyncCheckClose(self)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter != self.iteration or self.checked:
            return
        self.recorder.start()

    def close(self, runner):
        if runner.iter != self.iteration or self.checked:
            return
        self.recorder.stop()
        self.checked = True

    def report(self) -> str:
        if not self.checked:
            return '  (the schedule ended before the sync check)'
        if not self.cuda:
            return '  host synchronisations: checked on CUDA only'
        sites = self.recorder.sites
        lines = [
            f'  host synchronisations in Runner iteration {self.iteration} '
            f'(hooks and step, not the dataloader): {len(sites)}'
        ]
        lines += [f'    {site}' for site in sites]
        return '\n'.join(lines)


class _SyncCheckClose(Hook):
    priority = 'LOWEST'

    def __init__(self, owner: ScheduleSyncCheck):
        self.owner = owner

    def after_train_iter(
        self, runner, batch_idx, data_batch=None, outputs=None
    ):
        self.owner.close(runner)


class DataTimeSplit(Hook):
    """Where the Runner's ``data_time`` goes, iteration by iteration.

    mmengine's IterTimerHook logs as an iteration's data time all that
    runs from its own ``after_train_iter`` of the iteration before to its
    ``before_train_iter``: the ``after_train_iter`` hooks after it (lower
    priority) of the iteration before, the dataloader's ``next()``, and
    the ``before_train_iter`` hooks before it. This times each of them:
    ``next()`` through a proxy around the train loop's iterator (installed
    last, so around any other wrapper), every hook method through a stand-in
    for ``runner.call_hook`` (which calls the hooks as mmengine's does).
    """

    priority = 'LOWEST'
    STAGES = ('before_train_iter', 'after_train_iter')

    def __init__(self, runner):
        self.runner = runner
        self.next_seconds = {}  # iteration -> seconds in next()
        self.hook_seconds = {}  # (stage, hook) -> {iteration: seconds}
        self._call_hook = runner.call_hook
        runner.call_hook = self._timed_call_hook

    def _timed_call_hook(self, fn_name, **kwargs):
        if fn_name not in self.STAGES:
            return self._call_hook(fn_name, **kwargs)
        runner = self.runner
        for hook in runner._hooks:
            method = getattr(hook, fn_name, None)
            if method is None:
                continue
            start = time.perf_counter()
            method(runner, **kwargs)
            times = self.hook_seconds.setdefault(
                (fn_name, type(hook).__name__), {}
            )
            times[runner.iter] = (
                times.get(runner.iter, 0.0) + time.perf_counter() - start
            )

    def before_train_epoch(self, runner):
        loop = runner.train_loop
        iterator = getattr(loop, 'dataloader_iterator', None)
        if iterator is None or isinstance(iterator, _TimedIterator):
            return
        loop.dataloader_iterator = _TimedIterator(
            iterator, runner, self.next_seconds
        )

    def in_data_time(self):
        """(stage, hook) pairs that IterTimerHook counts as data time."""
        names = [type(h).__name__ for h in self.runner._hooks]
        if 'IterTimerHook' not in names:
            return set()
        timer = names.index('IterTimerHook')
        return {('before_train_iter', n) for n in names[:timer]} | {
            ('after_train_iter', n) for n in names[timer + 1 :]
        }

    def split(self, iterations):
        """Mean seconds per iteration: next(), and each hook method.

        Args:
            iterations (Iterable[int]): The iterations to average over
                (0-based), those without a timed ``next()`` left out.

        Returns:
            tuple: (iterations used, mean next() seconds,
            {(stage, hook): mean seconds}, the set of those pairs counted
            in the data time).
        """
        used = [k for k in iterations if k in self.next_seconds]
        if not used:
            return 0, 0.0, {}, set()
        mean_next = sum(self.next_seconds[k] for k in used) / len(used)
        counted = self.in_data_time()
        hooks = {}
        for key, times in self.hook_seconds.items():
            # A data-time after_train_iter hook belongs to the iteration
            # after the one it ran in.
            lag = 1 if key in counted and key[0] == 'after_train_iter' else 0
            hooks[key] = sum(times.get(k - lag, 0.0) for k in used) / len(used)
        return len(used), mean_next, hooks, counted

    def report(self, iterations, data_mean: float) -> str:
        """Lines for the schedule report (``data_mean``: IterTimerHook's)."""
        n, mean_next, hooks, counted = self.split(iterations)
        if not n:
            return '  (data time split: no iteration timed)'
        inside = {k: v for k, v in hooks.items() if k in counted}
        outside = {k: v for k, v in hooks.items() if k not in counted}
        in_hooks = sum(inside.values())
        total = mean_next + in_hooks

        def top(d):
            return (
                ', '.join(
                    f'{name}.{stage.split("_")[0]} {v * 1e3:.2f}'
                    for (stage, name), v in sorted(
                        d.items(), key=lambda kv: -kv[1]
                    )
                    if v >= 5e-5
                )
                or 'none >= 0.05 ms'
            )

        return '\n'.join(
            [
                f'  data time split over {n} steady iterations: logged '
                f'{data_mean * 1e3:.2f} ms/it = next(dataloader) '
                f'{mean_next * 1e3:.2f} + hooks {in_hooks * 1e3:.2f}'
                f' + the rest {(data_mean - total) * 1e3:.2f} ms',
                f'    hooks in the data time (ms/it): {top(inside)}',
                f'    hooks in the step time (ms/it): {top(outside)}',
            ]
        )


class _TimedIterator:
    """The train loop's iterator, with each ``next()`` timed."""

    def __init__(self, iterator, runner, seconds: dict):
        self._iterator = iterator
        self._runner = runner
        self._seconds = seconds

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        batch = next(self._iterator)
        self._seconds[self._runner.iter] = time.perf_counter() - start
        return batch

    def __getattr__(self, name):
        return getattr(self._iterator, name)


def steady_indices(iters, skip, profiled):
    """0-based indices of the steady-state iterations (see below)."""
    return range(skip + (profiled + 1 if profiled else 0), iters)


def steady_iterations(step, data, iters, skip, profiled):
    """Per-iteration times of the steady state, profiled ones left out.

    ``step`` and ``data`` are IterTimerHook's per-iteration times, the
    latest last (its buffer may have dropped the oldest). The first
    ``skip`` iterations are warm-up. A profile of ``profiled`` iterations
    starting at ``skip`` runs under the profiler's overhead, and the
    profiler's post-processing at its end falls into the next iteration's
    data time (the hook runs after IterTimerHook), so those
    ``profiled + 1`` iterations are left out too.

    Returns:
        tuple: (step times, data times, how many were kept).
    """
    first = iters - len(step)  # iteration index of step[0]
    keep = [k - first for k in steady_indices(iters, skip, profiled)]
    keep = [i for i in keep if i >= 0]
    if not keep:
        raise SystemExit(
            'benchmark.py: no steady-state iteration left after '
            f'--skip-iters {skip} and the {profiled} profiled ones; run '
            'more --schedule-iters'
        )
    return [step[i] for i in keep], [data[i] for i in keep], len(keep)


def runner_config(path, args):
    """``path`` with ``--cfg-options`` merged, made runnable on the device.

    The project's own loader (:func:`mmseg_dfq.config.load_config`); on CPU
    the GPUs are hidden from the Runner first, so that it adapts the config
    to the CPU (SyncBN -> BN, DDP without devices).
    """
    from mmseg_dfq.config import load_config

    if args.device == 'cpu':
        os.environ['CUDA_VISIBLE_DEVICES'] = ''
    return load_config(path, args.cfg_options)


def process_settings() -> str:
    """The settings of :func:`set_process_options`, for the reports."""
    import torch.multiprocessing

    return (
        'tensors shared by '
        f'{torch.multiprocessing.get_sharing_strategy()}; thread switch '
        f'interval {sys.getswitchinterval() * 1e3:g} ms'
    )


def set_process_options(args):
    """``--sharing-strategy`` and ``--switch-interval``, process-wide.

    Called before any dataloader worker starts: forked workers inherit the
    sharing strategy.
    """
    if args.sharing_strategy is not None:
        import torch.multiprocessing

        torch.multiprocessing.set_sharing_strategy(args.sharing_strategy)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)


def full_schedule(args):
    """Run a config through the Runner and report its iteration rate."""
    import tempfile

    from mmengine.runner import Runner

    cfg = runner_config(args.full_schedule, args)
    loop = cfg.train_cfg
    by_epoch = 'max_epochs' in loop
    full_length = loop.max_epochs if by_epoch else loop.max_iters
    # Validation interval in the loop's unit (epochs or iterations).
    val_interval = max(loop.get('val_interval', full_length), 1)
    iters = args.schedule_iters or (None if by_epoch else full_length)
    if iters is None:
        raise SystemExit(
            'benchmark.py: --schedule-iters is needed for an epoch-based '
            'schedule'
        )
    profile_iters = args.profile_iters if args.profile else 0
    profiled = profile_iters + 1 if profile_iters else 0
    if iters <= args.skip_iters + profiled:
        raise SystemExit(
            f'benchmark.py: --schedule-iters {iters} must exceed '
            f'--skip-iters {args.skip_iters}'
            + (
                f' + the {profiled} profiled iterations (--profile-iters '
                '+ 1, left out of the steady state)'
                if profiled
                else ''
            )
        )
    # Measured on an iteration loop of the same Runner and data: `iters`
    # iterations, then one validation. An epoch-based schedule's sampler
    # runs on without an epoch end (DomainMixSampler(infinite=True): the
    # batches of the epochs in order), which is what the epoch loop does
    # apart from its epoch bookkeeping.
    cfg.train_cfg = dict(
        type='IterBasedTrainLoop', max_iters=iters, val_interval=iters
    )
    sampler = cfg.train_dataloader.get('sampler') or {}
    if by_epoch and sampler.get('type') == 'DomainMixSampler':
        sampler['infinite'] = True
    cfg.param_scheduler = [
        dict(
            type='PolyLR',
            power=0.9,
            eta_min=0.0,
            begin=0,
            end=iters,
            by_epoch=False,
        )
    ]
    # No checkpoint in the measurement; iteration-based logs.
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', interval=iters + 1, by_epoch=False
    )
    cfg.default_hooks.logger = dict(
        type='LoggerHook', interval=50, log_metric_by_epoch=False
    )
    cfg.log_processor = dict(by_epoch=False)
    tmp = None
    if args.work_dir is None:
        tmp = tempfile.TemporaryDirectory()
        cfg.work_dir = tmp.name
    else:
        cfg.work_dir = args.work_dir
    runner = Runner.from_cfg(cfg)
    timer = ScheduleTimer()
    runner.register_hook(timer)
    data_split = DataTimeSplit(runner)
    runner.register_hook(data_split)
    sync_check = None
    if args.sync_check:
        # The last warm-up iteration: compiled and captured, and outside
        # the steady state the figures come from.
        sync_check = ScheduleSyncCheck(
            max(args.skip_iters - 1, 0), args.device == 'cuda'
        )
        runner.register_hook(sync_check)
        runner.register_hook(sync_check.closer)
    profiler = None
    if args.profile:
        profiler = ScheduleProfiler(
            args.skip_iters, args.profile_iters, args.device == 'cuda'
        )
        runner.register_hook(profiler)
    start = time.perf_counter()
    runner.train()
    wall = time.perf_counter() - start
    hub = runner.message_hub
    step, data, kept = steady_iterations(
        list(hub.get_scalar('train/time').data[0]),
        list(hub.get_scalar('train/data_time').data[0]),
        iters,
        args.skip_iters,
        profile_iters,
    )
    mean_step = sum(step) / len(step)
    mean_data = sum(data) / len(data)
    val_total = sum(timer.val_seconds)
    try:
        val_iters = list(hub.get_scalar('val/time').data[0])
    except KeyError:
        val_iters = []
    # Iterations of the whole schedule: an epoch is the dataloader's length
    # (DomainMixSampler: the longest source domain's batches).
    epoch_iters = 1
    if by_epoch:
        epoch_iters = args.epoch_iters or len(runner.train_dataloader)
    full_iters = full_length * epoch_iters
    vals_full = full_length // val_interval
    val_images = args.val_images or len(runner.val_dataloader.dataset)
    per_val = val_total / max(len(timer.val_seconds), 1)
    if val_iters and len(val_iters) >= 3:
        # A validation = its fixed cost (workers, metric) + images x the
        # median image time (the first images include warm-up).
        fixed = max(per_val - sum(val_iters), 0.0)
        val_batch = runner.val_dataloader.batch_size or 1
        per_val = fixed + statistics.median(val_iters) * math.ceil(
            val_images / val_batch
        )
    estimate = full_iters * mean_step + vals_full * per_val
    print(f'\n{environment(args.device)}')
    print(process_settings())
    print(
        f'{args.full_schedule}: {iters} iterations in {wall:.1f} s '
        f'(first {args.skip_iters} and {len(timer.val_seconds)} '
        f'validation(s), {val_total:.1f} s, included)'
    )
    left_out = f' (the {profiled} profiled ones left out)' if profiled else ''
    print(
        f'  steady state over {kept} of the last '
        f'{iters - args.skip_iters} iterations{left_out}: '
        f'{1 / mean_step:.2f} it/s, {mean_step * 1e3:.1f} ms/it, data '
        f'{mean_data * 1e3:.1f} ms/it = {100 * mean_data / mean_step:.1f}%'
    )
    print(
        f'  whole schedule ({full_iters} iterations'
        + (f' = {full_length} epochs x {epoch_iters}' if by_epoch else '')
        + f', {vals_full} validations of {val_images} images, '
        f'{per_val:.1f} s each): ~{estimate / 60:.1f} min (issue 11 '
        'target for the '
        'MiT-b2 fundus schedule: <= 6 min per split on one H100/H200)'
    )
    print(
        data_split.report(
            steady_indices(
                iters,
                args.skip_iters,
                profile_iters,
            ),
            mean_data,
        )
    )
    if profiler is not None:
        print(profiler.report or '  (the schedule ended before the profile)')
    if sync_check is not None:
        print(sync_check.report())
    if tmp is not None:
        tmp.cleanup()


LOADER_PATHS = {
    # name: (collate_fn config, data preprocessor type)
    'per image (mmseg)': (dict(type='pseudo_collate'), 'SegDataPreProcessor'),
    'stacked apart': (
        dict(type='stack_seg_collate', compact=False),
        'BatchSegDataPreProcessor',
    ),
    'stacked': (dict(type='stack_seg_collate'), 'BatchSegDataPreProcessor'),
    'stacked, uint8 masks': (
        dict(type='stack_seg_collate', mask_dtype='uint8'),
        'BatchSegDataPreProcessor',
    ),
}


def loader_times(args):
    """Main-process milliseconds per training batch of a config, per path.

    For each data path, the config's train dataloader (its data set,
    pipeline, sampler, workers and pinning) is built with that path's
    collate function, and its data preprocessor with that path's type.
    Before each batch the loop sleeps ``--loader-gap`` seconds while the
    workers fill their queue, then times taking the batch (unpickling what
    the workers sent, pinning) and pre-processing it on the device. With
    ``pin_memory=True`` on a GPU the pin-memory thread unpickles and pins
    during the wait, so the receive time is what is left of it; with
    ``--loader-contend`` the loader does not pin, so that the timed call
    is the one that unpickles, under contention. Where nothing pins (the
    CPU, ``--loader-contend``), the batch's tensors are also copied into
    buffers allocated once, as the pin-memory thread copies them into
    cached pinned memory on a GPU host: the first read of the pages a
    worker shared, then the copy, which grow with the batch's bytes.

    Returns:
        dict: Path name -> (receive times, preprocess times, copy times or
        None) in seconds.
    """
    import copy

    import torch
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner
    from mmseg.registry import MODELS

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = runner_config(args.loader, args)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    device = torch.device(args.device)
    results = {}
    with contextlib.ExitStack() as stack:
        contention = contextlib.nullcontext()
        if args.loader_contend:
            contention = GILContention()
            stack.callback(contention.close)
        for name, (collate, preprocessor) in LOADER_PATHS.items():
            loader_cfg = copy.deepcopy(cfg.train_dataloader)
            loader_cfg['collate_fn'] = copy.deepcopy(collate)
            if args.device == 'cpu' or args.loader_contend:
                loader_cfg['pin_memory'] = False
            # Batches past an epoch's end without a restart (which would be
            # timed as a slow batch).
            sampler = loader_cfg.get('sampler') or {}
            if sampler.get('type') == 'DomainMixSampler':
                sampler['infinite'] = True
            elif sampler.get('type') == 'DefaultSampler':
                sampler['type'] = 'InfiniteSampler'
            pre_cfg = copy.deepcopy(cfg.model.data_preprocessor)
            pre_cfg['type'] = preprocessor
            pre = MODELS.build(pre_cfg).to(device)
            pre._non_blocking = bool(loader_cfg.get('pin_memory'))
            loader = Runner.build_dataloader(loader_cfg, seed=0)
            batches = iter(loader)
            # The first batches start the workers and fill their caches.
            for _ in range(max(args.warmup, 1)):
                pre(next(batches), True)
            receive, process = [], []
            copies = None if loader_cfg.get('pin_memory') else []
            buffers = {}
            for _ in range(args.repeats):
                time.sleep(args.loader_gap)
                start = time.perf_counter()
                with contention:
                    batch = next(batches)
                receive.append(time.perf_counter() - start)
                if copies is not None:
                    copies.append(copy_into(batch, buffers))
                start = time.perf_counter()
                pre(batch, True)
                if device.type == 'cuda':
                    torch.cuda.synchronize()
                process.append(time.perf_counter() - start)
            del batches, loader
            results[name] = (receive, process, copies)
    return results


def copy_into(batch, buffers) -> float:
    """Seconds to copy a batch's tensors into buffers kept between calls.

    The batch's own tensors, and in a batch of per-image tensors (mmseg's
    ``pseudo_collate``) each image and each sample's mask, as torch's
    pin-memory thread would pin them (it pins tensors in dicts and lists,
    not those inside data samples; mmseg then copies those masks from
    pageable memory, so they are counted too). A sample's mask that is a
    view of a tensor already counted (the stacked masks of
    ``stack_seg_collate``) is not counted again.
    """
    import torch

    found = []

    def gather(obj):
        if isinstance(obj, torch.Tensor):
            found.append(obj)
        elif isinstance(obj, dict):
            for value in obj.values():
                gather(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                gather(value)
        elif hasattr(obj, 'gt_sem_seg') and 'gt_sem_seg' in obj:
            gather(obj.gt_sem_seg.data)

    gather(batch)
    # Largest first; a tensor inside the bytes of one already kept is a view.
    tensors, spans = [], []
    for tensor in sorted(found, key=lambda t: -t.numel() * t.element_size()):
        begin = tensor.data_ptr()
        end = begin + tensor.numel() * tensor.element_size()
        if not any(b <= begin and end <= e for b, e in spans):
            spans.append((begin, end))
            tensors.append(tensor)
    start = time.perf_counter()
    for i, tensor in enumerate(tensors):
        key = (i, tensor.shape, tensor.dtype)
        if key not in buffers:
            buffers[key] = torch.empty_like(tensor).fill_(0)
        buffers[key].copy_(tensor)
    return time.perf_counter() - start


class GILContention:
    """A thread that runs Python while the ``with`` block runs.

    It holds the GIL except when the interpreter makes it hand over (every
    ``sys.getswitchinterval()`` seconds while another thread waits for it),
    so each call of the block that releases the GIL (a blocking read, most
    torch operations) can wait up to one interval to get it back.
    """

    def __init__(self):
        import threading

        self._active = threading.Event()
        self._parked = threading.Event()
        self._closed = False
        self.spins = 0  # loops run, for tests
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while not self._closed:
            self._parked.set()
            self._active.wait()
            self._parked.clear()
            while self._active.is_set() and not self._closed:
                self.spins += 1

    def __enter__(self):
        self._parked.wait()
        self._active.set()
        return self

    def __exit__(self, *exc):
        self._active.clear()
        # Until the thread has stopped, it still competes.
        self._parked.wait()

    def close(self):
        self._closed = True
        self._active.set()  # wakes the thread to see it is closed
        self._thread.join()


def report_loader(results, args):
    """Print loader_times' figures."""
    print(environment(args.device))
    print(
        f'{args.loader}: main-process ms per training batch, workers '
        f'ahead ({args.repeats} batches after a {args.loader_gap} s wait '
        'each'
        + (
            '; received while another thread runs Python, not pinned'
            if args.loader_contend
            else ''
        )
        + f'; {process_settings()})'
    )
    for name, (receive, process, copies) in results.items():
        r, r_iqr = summarize(receive)
        p, p_iqr = summarize(process)
        line = (
            f'  {name:20s} receive {r * 1e3:6.2f} [{r_iqr * 1e3:.2f}]  '
            f'pre-process on {args.device} {p * 1e3:6.2f} [{p_iqr * 1e3:.2f}]'
        )
        if copies:
            c, c_iqr = summarize(copies)
            line += f'  copy {c * 1e3:6.2f} [{c_iqr * 1e3:.2f}]'
        print(line)
    if any(c for _, _, c in results.values()):
        print(
            '  (copy: the received tensors copied into buffers kept between '
            'batches, what the pin-memory thread does on a GPU host; not '
            'part of receive)'
        )


def paint_times(side, repeats):
    """Seconds per image of mmseg's visualiser and of the overlay writer."""
    import importlib
    import tempfile

    import numpy as np
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    from mmseg_dfq.engine.overlay import OverlayWriter

    # Only now that mmseg_dfq is loaded: mmseg.visualization imports
    # mmcv.ops, which needs the plugin's stand-ins on mmcv-lite.
    visualization = importlib.import_module('mmseg.visualization')

    # A smooth fundus-like picture with a disc and a cup (PNG-compressible,
    # like a real photograph; noise would inflate the encoding time).
    yy, xx = np.mgrid[:side, :side]
    r = np.hypot(yy - side / 2, xx - side / 2)
    img = np.dstack([np.clip(220 - r / 2, 0, 255)] * 3).astype(np.uint8)
    gt = np.where(r < side / 9, 2, np.where(r < side / 4, 1, 0))
    pred = np.roll(gt, side // 50, axis=1)
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=torch.from_numpy(gt)[None])
    sample.pred_sem_seg = PixelData(data=torch.from_numpy(pred)[None])
    palette = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        vis = visualization.SegLocalVisualizer(
            name='paint_benchmark',
            vis_backends=[dict(type='LocalVisBackend')],
            save_dir=tmp,
        )
        vis.dataset_meta = dict(classes=('bg', 'rim', 'cup'), palette=palette)
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            vis.add_datasample(f'mmseg{i}', img, sample, step=0)
            times.append(time.perf_counter() - start)
        out['mmseg SegLocalVisualizer'] = times
        # Painted and written synchronously (the work a thread does)...
        writer = OverlayWriter(osp.join(tmp, 'overlay'), palette, 1)
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            writer._write(
                osp.join(tmp, 'overlay', f'{i}.png'), pred, gt, img, None
            )
            times.append(time.perf_counter() - start)
        out['overlay, paint + PNG write'] = times
        # ...and what the test loop waits for: the submit call.
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            writer.submit(f'q{i}', pred, gt, image=img)
            times.append(time.perf_counter() - start)
        writer.close()
        out['overlay, submit (test loop)'] = times
    return out


def main():
    args = parse_args()
    if args.paint:
        print(environment('cpu'))
        for name, times in paint_times(args.paint, args.repeats).items():
            t, iqr = summarize(times)
            print(
                f'{args.paint} px, {name}: {t * 1e3:.2f} ms [{iqr * 1e3:.2f}]'
            )
        return
    if args.device == 'cuda':
        import torch

        if not torch.cuda.is_available():
            raise SystemExit('benchmark.py: --device cuda but no CUDA device')
    if args.loader or args.full_schedule:
        config = args.loader or args.full_schedule
        if not osp.isfile(config):
            raise SystemExit(f'benchmark.py: config {config!r} not found')
        set_process_options(args)
        if args.loader:
            report_loader(loader_times(args), args)
        else:
            full_schedule(args)
        return
    jobs = [
        (b, v, p, d, args)
        for b in args.backbones
        for v in args.variants
        for p in args.paths
        for d in args.dtypes
    ]
    # A fresh process per model: its own peak memory, no warm caches.
    ctx = mp.get_context('spawn')
    results = []
    for job in jobs:
        start = time.perf_counter()
        with ctx.Pool(1) as pool:
            results.append(pool.apply(run_one, (job,)))
        print(
            f'measured {" ".join(job[:4])} in '
            f'{time.perf_counter() - start:.0f} s',
            flush=True,
        )
    report(results, args)
    if args.loss_check:
        job = (
            args.backbones[0],
            args.variants[0],
            args.dtypes[0],
            args.loss_check,
            args,
        )
        with ctx.Pool(1) as pool:
            r = pool.apply(loss_check, (job,))
        print(
            f'\nloss check, {r["variant"]}-{r["backbone"]} {r["dtype"]}, '
            f'{r["steps"]} Adam steps on one batch, drop rates 0: eager '
            f'{r["eager_last"]:.6f}, fast {r["fast_last"]:.6f}, relative '
            f'difference {r["rel_last"]:.2e} at the last step, '
            f'{r["rel_max"]:.2e} at most (target <= 1e-3)'
        )


if __name__ == '__main__':
    main()
