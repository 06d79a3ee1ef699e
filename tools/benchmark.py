"""Compare the compute cost of DFQ with SegFormer: step time, speed, memory.

For every backbone size it builds, from ``configs/_base_/models``:

- ``segformer-256``: SegFormer with mmseg's stock 256-channel MLP head;
- ``segformer-768``: our SegFormer base (768-channel head, as in the paper);
- ``dfq``: full DFQ (RDWT backbone + DFQHead + RDWT loss), fusion applied
  at each level's resolution (``fuse_at_level_resolution=True``);
- ``dfq-plainfuse``: the same with the concatenate-then-fuse path;
- ``dfqhead``: DFQ with RDWT disabled (MiT + DFQHead), for the RDWT share.

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
output shapes), and the step time of ``dfq`` minus ``dfqhead``. With
``--profile`` the top operators of one DFQ train step are printed.

Norm layers use plain BN (the configs' SyncBN needs no process group on one
device either way, but BN keeps the comparison free of its checks).

Example:
    python tools/benchmark.py --device cpu --backbones b0 b2 --repeats 3
"""

import argparse
import multiprocessing as mp
import os
import os.path as osp
import resource
import statistics
import time

MODEL_DIR = osp.join(
    osp.dirname(osp.abspath(__file__)), '..', 'configs', '_base_', 'models'
)
# name -> (base config prefix, edits to the model config).
VARIANTS = {
    'segformer-256': ('segformer', dict(decode_head=dict(channels=256))),
    'segformer-768': ('segformer', dict()),
    'dfq': ('dfq', dict(decode_head=dict(fuse_at_level_resolution=True))),
    'dfq-plainfuse': (
        'dfq',
        dict(decode_head=dict(fuse_at_level_resolution=False)),
    ),
    'dfqhead': ('dfqhead', dict()),
}
TARGETS = (
    'targets (b2): DFQ train step <= 1.0x SegFormer-256 and <= 0.5x '
    'SegFormer-768; peak memory <= 1.0x SegFormer-256; RDWT <= 3% of step'
)


def parse_args():
    parser = argparse.ArgumentParser(
        description='Train-step time, inference speed and peak memory of '
        'DFQ vs SegFormer'
    )
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--batch', type=int, default=4, help='batch size')
    parser.add_argument('--size', type=int, default=256, help='image side')
    parser.add_argument(
        '--repeats', type=int, default=5, help='timed runs per measure'
    )
    parser.add_argument(
        '--warmup', type=int, default=2, help='untimed runs first'
    )
    parser.add_argument(
        '--backbones',
        nargs='+',
        default=['b0', 'b2'],
        choices=[f'b{i}' for i in range(6)],
    )
    parser.add_argument(
        '--variants',
        nargs='+',
        default=list(VARIANTS),
        choices=list(VARIANTS),
        help='models to measure (default: all)',
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
        help='print the top operators of one DFQ train step per backbone',
    )
    return parser.parse_args()


def summarize(times):
    """Median and inter-quartile range of a list of seconds."""
    if len(times) < 2:
        return times[0], 0.0
    q1, _, q3 = statistics.quantiles(times, n=4, method='inclusive')
    return statistics.median(times), q3 - q1


def timed(fn, warmup, repeats, sync):
    """Run ``fn`` warmup + repeats times; return the timed seconds."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def current_rss():
    """Resident set size of this process in bytes (Linux)."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def peak_rss():
    """Peak resident set size of this process in bytes (Linux: KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_model(backbone, variant, num_classes):
    """Build one benchmark model from the base configs, offline."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import mmseg_dfq  # noqa: F401  (registers DFQ; before mmseg.models)

    init_default_scope('mmseg')
    prefix, edits = VARIANTS[variant]
    cfg = Config.fromfile(osp.join(MODEL_DIR, f'{prefix}_mit-{backbone}.py'))
    cfg.merge_from_dict(
        dict(
            model=dict(
                backbone=dict(init_cfg=None),
                decode_head=dict(
                    num_classes=num_classes,
                    norm_cfg=dict(type='BN', requires_grad=True),
                    **edits.get('decode_head', {}),
                ),
            )
        )
    )
    return MODELS.build(cfg.model)


def rdwt_seconds(model, images, warmup, repeats, sync):
    """Time the RDWT work alone: instance norms + loss, forward + backward.

    Maps of the DFQ backbone's (pre-norm) output shapes stand in for the
    stage outputs; the cost of RDWT does not depend on their values.
    """
    import torch

    from mmseg_dfq.models.losses import instance_norm

    with torch.no_grad():
        shapes = [f.shape for f in model.backbone(images)]
    eps = model.backbone.rdwt_eps
    loss_fn = model.decode_head.loss_rdwt
    feats = [
        torch.randn(s, device=images.device, requires_grad=True)
        for s in shapes
    ]

    def step():
        normed = [instance_norm(f, eps) for f in feats]
        loss = loss_fn(normed)
        # The whitened maps also carry the segmentation gradient back.
        loss = loss + sum(n.sum() for n in normed) * 0
        loss.backward()
        for f in feats:
            f.grad = None

    return timed(step, warmup, repeats, sync)


def run_one(job):
    """Measure one model in this (fresh) process; return a result dict."""
    import torch
    from mmengine.structures import PixelData

    backbone, variant, args = job
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == 'cuda'

    def sync():
        if cuda:
            torch.cuda.synchronize()

    model = build_model(backbone, variant, args.num_classes).to(device)
    # Imported once build_model has loaded mmseg_dfq's mmcv.ops stand-ins.
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
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        losses = model.loss(images, samples)
        loss = sum(v for k, v in losses.items() if 'loss' in k)
        loss.backward()
        optimizer.step()

    def infer():
        with torch.no_grad():
            model(images, mode='tensor')

    result = dict(
        backbone=backbone, variant=variant, threads=torch.get_num_threads()
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    base_rss = current_rss()

    # Inference first: on CPU the peak RSS only grows, and training's is
    # the larger one.
    model.eval()
    result['infer'] = timed(infer, args.warmup, args.repeats, sync)
    if cuda:
        result['infer_mem'] = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        result['infer_mem'] = peak_rss() - base_rss
    model.train()
    result['train'] = timed(train_step, args.warmup, args.repeats, sync)
    if cuda:
        result['train_mem'] = torch.cuda.max_memory_allocated(device)
    else:
        result['train_mem'] = peak_rss() - base_rss

    if variant.startswith('dfq') and model.decode_head.loss_rdwt is not None:
        result['rdwt'] = rdwt_seconds(
            model, images, args.warmup, args.repeats, sync
        )
    if args.profile and variant == 'dfq':
        result['profile'] = profile_step(train_step, cuda)
    return result


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


def report(results, args):
    """Print the table, the ratios against SegFormer and the RDWT share."""
    mem_kind = (
        'max_memory_allocated'
        if args.device == 'cuda'
        else 'peak RSS rise (getrusage)'
    )
    print(
        f'\ndevice {args.device}, batch {args.batch}, {args.size}x'
        f'{args.size}, warmup {args.warmup}, repeats {args.repeats}, '
        f'torch threads {results[0]["threads"]}; '
        f'times median [IQR]; memory = {mem_kind}, MiB'
    )
    header = (
        f'{"backbone":<8} {"model":<14} {"train ms":>18} '
        f'{"infer img/s":>18} {"train mem":>10} {"infer mem":>10}'
    )
    print(header)
    print('-' * len(header))
    by_key = {}
    for r in results:
        by_key[r['backbone'], r['variant']] = r
        t, t_iqr = summarize(r['train'])
        ips = [args.batch / s for s in r['infer']]
        v, v_iqr = summarize(ips)
        print(
            f'{r["backbone"]:<8} {r["variant"]:<14} '
            f'{t * 1e3:>9.1f} [{t_iqr * 1e3:>6.1f}] '
            f'{v:>9.2f} [{v_iqr:>6.2f}] '
            f'{mib(r["train_mem"]):>10.0f} {mib(r["infer_mem"]):>10.0f}'
        )
    print()
    for backbone in args.backbones:
        print(f'{backbone}:')
        for name in ('dfq', 'dfq-plainfuse'):
            dfq = by_key.get((backbone, name))
            if dfq is None:
                continue
            for ref_name in ('segformer-256', 'segformer-768'):
                ref = by_key.get((backbone, ref_name))
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
        dfq = by_key.get((backbone, 'dfq'))
        if dfq is not None and 'rdwt' in dfq:
            step = summarize(dfq['train'])[0]
            alone = summarize(dfq['rdwt'])[0]
            line = (
                f'  RDWT share of the dfq train step: norms + loss alone '
                f'{alone * 1e3:.1f} ms = {100 * alone / step:.1f}%'
            )
            ablation = by_key.get((backbone, 'dfqhead'))
            if ablation is not None:
                diff = step - summarize(ablation['train'])[0]
                line += (
                    f'; dfq - dfqhead step {diff * 1e3:.1f} ms = '
                    f'{100 * diff / step:.1f}%'
                )
            print(line)
        if dfq is not None and 'profile' in dfq:
            print(f'  top operators of one dfq-{backbone} train step:')
            print(dfq['profile'])
    print(TARGETS)


def main():
    args = parse_args()
    if args.device == 'cuda':
        import torch

        if not torch.cuda.is_available():
            raise SystemExit('benchmark.py: --device cuda but no CUDA device')
    jobs = [(b, v, args) for b in args.backbones for v in args.variants]
    # A fresh process per model: its own peak memory, no warm caches.
    ctx = mp.get_context('spawn')
    results = []
    for job in jobs:
        start = time.perf_counter()
        with ctx.Pool(1) as pool:
            results.append(pool.apply(run_one, (job,)))
        print(
            f'measured {job[0]} {job[1]} in '
            f'{time.perf_counter() - start:.0f} s',
            flush=True,
        )
    report(results, args)


if __name__ == '__main__':
    main()
