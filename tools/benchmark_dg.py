"""Leave-one-domain-out CPU benchmark: SegFormer, +DFQHead, DFQ variants.

``python tools/benchmark_dg.py`` generates a small synthetic fundus set with
a deliberately strong domain shift, then runs ``tools/sweep.py`` on it: for
every held-out target domain and every seed each variant trains at the same
budget (``tools/train.py`` and ``tools/test.py``, in this process) and is
tested on all four domains at the end.
It prints, per variant and target, the mean +- std over seeds of the unseen
domain's OD and OC Dice (plus the mean over the seen domains, to show the
shift), a mean-over-targets row and the wall time.

The shift: :func:`mmseg_dfq.testing.synthetic.make_fundus` draws the images
(its per-domain styles are mild: a small DFQ reaches ~97% OD Dice on the
unseen domain), then this tool re-renders every written image of its own
copy with a much stronger per-domain acquisition, see ``BENCHMARK_SHIFTS``.
Masks are untouched.

Each variant is a config of ``configs/benchmark/`` (``VARIANTS``): the
recipe ``configs/_base_/dg_shift_fundus.py`` (the fundus CPU demo's;
validation is switched off here) with the variant's model base. All train
MiT-b0 from scratch (``backbone.init_cfg=None``, no download), decode heads
with ``--channels`` channels, ``--crop`` crops, the demo's optimiser (Adam,
lr 1e-3) and a poly schedule over ``--iters`` iterations, a ``--batch``
batch split evenly over the three source domains, and the same seed; these
are set on every run explicitly. The final model is tested once on every
domain's test split. With ``--work-dir`` the runs, the sweep's tables
(``runs/sweep_table.{md,csv,json}``) and plot stay there, and a rerun keeps
the finished runs. The numbers, the table and the JSON are
``tools/benchmark_dg_report.py``'s. Results and timings are in
``docs/benchmark_dg.md``.
"""

import argparse
import importlib.util
import os
import os.path as osp
import tempfile
import time
from collections import OrderedDict

import cv2
import numpy as np
import torch
from mmengine.config import Config

import mmseg_dfq  # noqa: F401  (compat fixes + registration before mmseg)
from mmseg_dfq.testing.synthetic import make_fundus

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _load_tool(name):
    # tools/ is not a package: load tools/<name>.py by path.
    spec = importlib.util.spec_from_file_location(
        f'dfq_tools_{name}', osp.join(REPO, 'tools', f'{name}.py')
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = _load_tool('sweep')
# The per-run numbers, the table and the JSON of this benchmark.
report = _load_tool('benchmark_dg_report')

# Variant name -> its config: the benchmark recipe
# (configs/_base_/dg_shift_fundus.py, the fundus CPU demo's) with the
# variant's model. Adding a variant is one config file and one entry.
BENCHMARK_CONFIGS = osp.join(REPO, 'configs', 'benchmark')
VARIANTS = OrderedDict(
    (name, osp.join(BENCHMARK_CONFIGS, f'dg-shift_{name}_mit-b0_fundus.py'))
    for name in (
        'segformer',
        'dfqhead',
        'dfq',
        # The authors' published RDWT grouping (reshape without transpose)
        # on backbone and loss alike; everything else as 'dfq'.
        'dfq-authors-layout',
        # DFQ + RAM-DSIR's augmentation and consistency loss.
        'dfq-ram',
    )
)
DOMAINS = (1, 2, 3, 4)

# Strong per-domain acquisition applied on top of make_fundus's images, all
# on RGB in [0, 1], in this order: mix (3x3 colour matrix, rows = output
# channels: a hue rotation / channel swap / desaturation), contrast around
# the image mean, gamma, gain, blur (Gaussian sigma in pixels of a 96 px
# image, scaled with the size), noise (std). Each domain differs from the
# others in a way the three sources do not span, so the held-out one is a
# real extrapolation.
BENCHMARK_SHIFTS = (
    # Domain1: channels rotated (R <- B, G <- R, B <- G): a blue-green
    # retina, brightened by gamma < 1.
    dict(mix=((0, 0, 1), (1, 0, 0), (0, 1, 0)), contrast=1.0, gamma=0.6,
         gain=1.0, blur=0.0, noise=0.02),
    # Domain2: washed out and soft: low contrast, strong blur, noisy.
    dict(mix=((1, 0, 0), (0, 1, 0), (0, 0, 1)), contrast=0.45, gamma=1.0,
         gain=1.15, blur=1.8, noise=0.06),
    # Domain3: harsh: high contrast, dark gamma, saturated red.
    dict(mix=((1.3, 0, 0), (0, 0.8, 0), (0, 0, 0.5)), contrast=1.8,
         gamma=1.7, gain=1.0, blur=0.0, noise=0.02),
    # Domain4: nearly grey and dim, with grainy noise.
    dict(mix=((0.45, 0.45, 0.1), (0.35, 0.55, 0.1), (0.35, 0.45, 0.2)),
         contrast=1.2, gamma=1.0, gain=0.6, blur=0.6, noise=0.05),
)  # fmt: skip


def shift_image(img, shift, rng):
    """Re-render one RGB image with a domain's benchmark acquisition.

    Args:
        img (np.ndarray): RGB image, uint8, (H, W, 3).
        shift (dict): One entry of ``BENCHMARK_SHIFTS``.
        rng (np.random.Generator): Source of the noise.

    Returns:
        np.ndarray: The shifted RGB image, uint8, (H, W, 3).
    """
    rgb = img.astype(np.float64) / 255.0
    rgb = rgb @ np.asarray(shift['mix'], np.float64).T
    mean = rgb.mean()
    rgb = np.clip((rgb - mean) * shift['contrast'] + mean, 0, 1)
    rgb = np.clip(rgb ** shift['gamma'] * shift['gain'], 0, 1)
    if shift['blur'] > 0:
        sigma = shift['blur'] * img.shape[0] / 96
        rgb = cv2.GaussianBlur(rgb, (0, 0), sigma)
    rgb = rgb + rng.normal(0, shift['noise'], rgb.shape)
    return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)


def make_shifted_fundus(out_dir, seed=0, cases=20, size=96):
    """Write the benchmark's fundus set: make_fundus + strong domain shift.

    Args:
        out_dir (str): Data root to write into (created if missing).
        seed (int): Seed of the drawn images and of the noise. Default: 0.
        cases (int): Images per domain (40% test). Default: 20.
        size (int): Image height and width. Default: 96.

    Raises:
        FileNotFoundError: If an image listed by make_fundus cannot be read.

    Returns:
        dict: Number of images per domain name and split.
    """
    summary = make_fundus(out_dir, seed=seed, cases=cases, size=size)
    for k, shift in zip(DOMAINS, BENCHMARK_SHIFTS):
        for split_id, split in enumerate(('train', 'test')):
            with open(osp.join(out_dir, f'Domain{k}_{split}.list')) as f:
                rel_imgs = [line.split()[0] for line in f if line.strip()]
            for i, rel in enumerate(rel_imgs):
                path = osp.join(out_dir, rel)
                bgr = cv2.imread(path, cv2.IMREAD_COLOR)
                if bgr is None:
                    raise FileNotFoundError(
                        f'{path}: listed by make_fundus but not readable'
                    )
                rng = np.random.default_rng([seed, 1000 + k, split_id, i])
                rgb = shift_image(bgr[..., ::-1], shift, rng)
                cv2.imwrite(path, rgb[..., ::-1])
    return summary


def _crop_overrides(cfg, crop):
    """Config keys that set every pipeline's resize and crop to ``crop``.

    Args:
        cfg (mmengine.Config): The benchmark recipe.
        crop (int): Training crop and test resize, pixels.

    Returns:
        dict: Dotted keys (list positions included) -> ``(crop, crop)``.
    """
    size = (crop, crop)
    out = {'model.data_preprocessor.size': size}

    def walk(transforms, prefix):
        for i, t in enumerate(transforms):
            for key in ('scale', 'crop_size'):
                if key in t:
                    out[f'{prefix}.{i}.{key}'] = size
            if 'transforms' in t:
                walk(t['transforms'], f'{prefix}.{i}.transforms')

    for loader in ('train_dataloader', 'test_dataloader'):
        walk(cfg[loader].dataset.pipeline, f'{loader}.dataset.pipeline')
    # The top-level copies too, so the written config does not contradict
    # itself.
    out['crop_size'] = size
    for name in ('train_pipeline', 'test_pipeline'):
        if cfg.get(name):
            walk(cfg[name], name)
    return out


def sweep_args(args, data_root, work_dir):
    """The tools/sweep.py command line of this benchmark, parsed.

    Every variant is its config of :data:`VARIANTS`; the CLI's budget
    (iterations, batch, crop, head channels) is set on every run
    explicitly, so the schedule bases may change underneath.

    Args:
        args (argparse.Namespace): This tool's parsed command line.
        data_root (str): The benchmark data set.
        work_dir (str): The sweep's work dir.

    Returns:
        argparse.Namespace: Arguments for :func:`sweep.sweep`.
    """
    iters = args.iters
    # A smaller batch than the authors' 16 keeps 36 runs within the CPU
    # budget; the three sources share it as evenly as possible (the first
    # sources get the remainder), the same mix for every variant.
    share, extra = divmod(args.batch, 3)
    options = {
        'model.backbone.init_cfg': None,
        'model.decode_head.channels': args.channels,
        'model.decode_head.num_classes': 3,
        'train_cfg': dict(type='IterBasedTrainLoop', max_iters=iters),
        'param_scheduler': [
            dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=iters,
                 by_epoch=False)
        ],
        # Test once at the end only.
        'val_dataloader': None,
        'val_cfg': None,
        'val_evaluator': None,
        'train_dataloader.batch_size': args.batch,
        # One count per source domain, in each split's domain order (the
        # sweep keys them by the split's domains).
        'train_dataloader.sampler.domain_counts': [
            share + (i < extra) for i in range(3)
        ],
    }  # fmt: skip
    # Every variant shares the recipe's pipelines: any of them tells where
    # the crop goes.
    recipe = Config.fromfile(VARIANTS[args.variants[0]])
    options.update(_crop_overrides(recipe, args.crop))
    variants = []
    for name in args.variants:
        variants += ['--variant', f'{name}={VARIANTS[name]}']
    ns = sweep.build_parser().parse_args(
        ['--benchmark', 'fundus', '--work-dir', work_dir,
         '--data-root', data_root]
        + variants
        + ['--targets'] + [str(t) for t in args.targets]
        + ['--seeds'] + [str(s) for s in args.seeds]
    )  # fmt: skip
    ns.cfg_options = options
    return ns


def parse_args(argv=None):
    """Parse the command line (``argv``; None reads ``sys.argv``)."""
    parser = argparse.ArgumentParser(
        description='Leave-one-domain-out benchmark of SegFormer, +DFQHead '
        'and DFQ on synthetic fundus data with a strong domain shift (CPU).'
    )
    parser.add_argument(
        '--seeds', type=int, nargs='+', default=[0, 1, 2],
        help='training seeds (default: 0 1 2)',
    )  # fmt: skip
    parser.add_argument(
        '--targets', type=int, nargs='+', default=list(DOMAINS),
        choices=DOMAINS, help='held-out domains (default: 1 2 3 4)',
    )  # fmt: skip
    parser.add_argument(
        '--variants', nargs='+', default=list(VARIANTS),
        choices=list(VARIANTS), help='models (default: all)',
    )  # fmt: skip
    parser.add_argument(
        '--iters', type=int, default=None,
        help='training iterations per run (default: 300, --quick: 4)',
    )  # fmt: skip
    parser.add_argument(
        '--batch', type=int, default=8,
        help='training batch size, split evenly over the three source '
        'domains (default: 8)',
    )  # fmt: skip
    parser.add_argument(
        '--crop', type=int, default=64, help='crop / test size (default: 64)'
    )
    parser.add_argument(
        '--channels', type=int, default=128,
        help='decode head channels of every variant (default: 128)',
    )  # fmt: skip
    parser.add_argument(
        '--cases', type=int, default=20,
        help='generated images per domain, 40%% test (default: 20)',
    )  # fmt: skip
    parser.add_argument(
        '--data-seed', type=int, default=0,
        help='seed of the generated data (default: 0)',
    )  # fmt: skip
    parser.add_argument(
        '--threads', type=int, default=1,
        help='torch CPU threads (default: 1: on a shared 2-core machine, '
        'two spinning threads next to another busy process ran several '
        'times slower than one)',
    )  # fmt: skip
    parser.add_argument('--out-json', help='write all per-run numbers here')
    parser.add_argument(
        '--work-dir',
        help='keep data, configs and logs here (default: a temporary '
        'folder, removed at the end)',
    )
    parser.add_argument(
        '--quick', action='store_true',
        help='smoke test: 1 seed, 1 target, 4 iterations, 10 cases',
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:1]
        args.targets = args.targets[:1]
        args.cases = 10
        args.iters = args.iters or 4
    elif args.iters is None:
        args.iters = 300
    if args.iters < 1:
        parser.error(f'--iters must be >= 1, got {args.iters}')
    if args.batch < 3:
        parser.error(
            f'--batch must be >= 3 (one image per source), got {args.batch}'
        )
    return args


def benchmark(args, root):
    """Generate the data in ``root``, run every combination, return results.

    Args:
        args (argparse.Namespace): Parsed command line.
        root (str): Folder for the data and the runs.

    Returns:
        dict: ``results[variant][target]``: list of
        :func:`benchmark_dg_report.run_result` outputs in seed order.
    """
    # One folder per data set: runs trained on other generated data are
    # never taken for these (the sweep keeps finished runs of a folder).
    root = osp.join(root, f'cases{args.cases}_seed{args.data_seed}')
    data_root = osp.join(root, 'fundus_shifted')
    start = time.time()
    make_shifted_fundus(data_root, seed=args.data_seed, cases=args.cases)
    print(
        f'Generated {args.cases} shifted images per domain in {data_root} '
        f'({time.time() - start:.1f} s)',
        flush=True,
    )
    result = sweep.sweep(
        sweep_args(args, data_root, osp.join(root, 'runs')),
        log=lambda line: print(line, flush=True),
    )
    return report.collect(
        result['records'], args.variants, args.targets, DOMAINS
    )


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    cpu_start = time.process_time()
    if args.work_dir:
        os.makedirs(args.work_dir, exist_ok=True)
        results = benchmark(args, args.work_dir)
    else:
        with tempfile.TemporaryDirectory(prefix='benchmark_dg_') as root:
            results = benchmark(args, root)
    wall = time.time() - start
    cpu = time.process_time() - cpu_start

    report.write(args, results, wall, cpu)


if __name__ == '__main__':
    main()
