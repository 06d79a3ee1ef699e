"""Smoke test of tools/benchmark_dg.py and checks of its domain shift."""

import importlib.util
import json
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOL = osp.join(REPO, 'tools', 'benchmark_dg.py')


def _load_tool():
    spec = importlib.util.spec_from_file_location('benchmark_dg', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shift_image_matches_numpy():
    tool = _load_tool()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    # Channel rotation alone: output channel c is input channel perm[c].
    swap = dict(mix=((0, 0, 1), (1, 0, 0), (0, 1, 0)), contrast=1.0,
                gamma=1.0, gain=1.0, blur=0.0, noise=0.0)  # fmt: skip
    out = tool.shift_image(img, swap, np.random.default_rng(0))
    np.testing.assert_array_equal(out, img[..., [2, 0, 1]])
    # Contrast, gamma and gain, computed independently.
    tone = dict(mix=np.eye(3), contrast=1.5, gamma=2.0, gain=0.8, blur=0.0,
                noise=0.0)  # fmt: skip
    out = tool.shift_image(img, tone, np.random.default_rng(0))
    x = img / 255.0
    ref = np.clip((x - x.mean()) * 1.5 + x.mean(), 0, 1) ** 2.0 * 0.8
    np.testing.assert_array_equal(out, np.round(ref * 255).astype(np.uint8))


def test_shifted_data_differ_per_domain(tmp_path):
    tool = _load_tool()
    root = str(tmp_path / 'data')
    tool.make_shifted_fundus(root, seed=0, cases=5, size=32)
    means = []
    for k in tool.DOMAINS:
        with open(osp.join(root, f'Domain{k}_train.list')) as f:
            rel_img, rel_mask = f.readline().split()
        img = cv2.imread(osp.join(root, rel_img))[..., ::-1]
        mask = cv2.imread(osp.join(root, rel_mask), cv2.IMREAD_GRAYSCALE)
        # Masks keep make_fundus's grey levels; only images are shifted.
        assert set(np.unique(mask)) <= {0, 128, 255}
        means.append(img.reshape(-1, 3).mean(0))
    # Domain1's rotated channels: its mean is bluer-greener than Domain3's.
    assert means[0][2] > means[0][0]
    assert means[2][0] > means[2][2]


def test_variants_compose_through_the_sweep(tmp_path):
    # Each VARIANTS entry becomes a sweep variant on its config file, the
    # CLI's budget on top.
    tool = _load_tool()
    args = tool.parse_args(
        ['--targets', '3', '--seeds', '5', '--iters', '7', '--crop', '48']
    )
    ns = tool.sweep_args(args, str(tmp_path / 'data'), str(tmp_path / 'runs'))
    variants = [tool.sweep.parse_variant(v) for v in ns.variant]
    assert [v['label'] for v in variants] == list(tool.VARIANTS)
    _, splits = tool.sweep.resolve_benchmark(ns.benchmark)
    models = {}
    for variant in variants:
        assert osp.isfile(variant['config']), variant
        run = tool.sweep.build_run(variant, splits[2], 5, ns, 'fundus')
        path = tmp_path / 'cfg.py'
        path.write_text(run['text'])
        cfg = Config.fromfile(str(path))
        head = cfg.model.decode_head
        models[variant['label']] = (
            cfg.model.type,
            cfg.model.backbone.type,
            head.type,
            head.get('loss_rdwt') is not None,
        )
        assert cfg.model.decode_head.channels == 128
        assert cfg.model.backbone.init_cfg is None
        assert cfg.train_dataloader.dataset.domains == [1, 2, 4]
        assert cfg.test_dataloader.dataset.unseen_domains == [3]
        assert cfg.val_dataloader is None and cfg.val_cfg is None
        # The budget's counts keyed by the split's sources, in order.
        assert cfg.train_dataloader.sampler.domain_counts == {1: 3, 2: 3, 4: 2}
        assert cfg.train_cfg.max_iters == 7
        assert cfg.param_scheduler[0]['end'] == 7
        assert cfg.randomness.seed == 5
        assert cfg.train_dataloader.dataset.data_root == str(tmp_path / 'data')
        pipeline = cfg.train_dataloader.dataset.pipeline
        crops = [t['crop_size'] for t in pipeline if 'crop_size' in t]
        assert crops == [(48, 48)]
        pipeline = cfg.test_dataloader.dataset.pipeline
        assert [t['scale'] for t in pipeline if 'scale' in t] == [(48, 48)]
        assert cfg.model.data_preprocessor.size == (48, 48)
        assert run['checkpoint'].endswith('iter_7.pth')
        if variant['label'] == 'dfq-authors-layout':
            assert cfg.model.backbone.rdwt_layout == 'authors'
            assert cfg.model.decode_head.loss_rdwt.layout == 'authors'
    mit = ('EncoderDecoder', 'MixVisionTransformer')
    dfq = ('EncoderDecoder', 'RDWTMixVisionTransformer', 'DFQHead', True)
    assert models == {
        'segformer': (*mit, 'SegformerHead', False),
        'dfqhead': (*mit, 'DFQHead', False),
        'dfq': dfq,
        'dfq-authors-layout': dfq,
        'dfq-ram': ('RAMEncoderDecoder', *dfq[1:]),
    }  # fmt: skip


def test_quick_run(tmp_path):
    tool = _load_tool()
    out_json = str(tmp_path / 'bench.json')
    work_dir = str(tmp_path / 'work')
    proc = subprocess.run(
        [sys.executable, TOOL, '--quick', '--iters', '2',
         '--out-json', out_json, '--work-dir', work_dir],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Counts keyed by domain: no deprecated positional form.
    assert 'by position' not in proc.stderr
    for variant in tool.VARIANTS:
        assert f'\n{variant:<18} Domain1' in proc.stdout
    # One folder per generated data set (--quick: 10 cases, data seed 0).
    runs_dir = osp.join(work_dir, 'cases10_seed0', 'runs')
    assert 'Total wall time' in proc.stdout
    with open(out_json) as f:
        data = json.load(f)
    assert data['args']['iters'] == 2
    assert sorted(data['results']) == sorted(tool.VARIANTS)
    for variant, runs in data['results'].items():
        (run,) = runs['Domain1']
        for key in ('unseen_OD', 'unseen_OC', 'seen_OD', 'seen_OC'):
            assert 0.0 <= run[key] <= 100.0
        # The printed number is the one the run's tools/test.py wrote.
        with open(osp.join(runs_dir, variant, 'fundus_dg_d1', 'seed0',
                           'metrics.json')) as f:  # fmt: skip
            metrics = json.load(f)
        assert run['unseen_OD'] == pytest.approx(metrics['Domain1/OD_Dice'])
        seen = [metrics[f'Domain{d}/OC_Dice'] for d in (2, 3, 4)]
        assert run['seen_OC'] == pytest.approx(np.mean(seen))
    # The sweep's own tables of the same runs.
    for ext in ('md', 'csv', 'json'):
        assert osp.isfile(osp.join(runs_dir, f'sweep_table.{ext}'))


def test_report_numbers_and_table():
    # Two seeds of one variant held out on Domain2: the unseen numbers are
    # Domain2's, the seen ones the mean over Domains 1, 3 and 4.
    tool = _load_tool()
    records = []
    for shift in (0.0, 2.0):  # seeds 0 and 1
        metrics = {
            f'Domain{d}/{s}_Dice': 10.0 * d + (s == 'OC') + shift
            for d in (1, 2, 3, 4)
            for s in ('OD', 'OC')
        }
        records.append(
            dict(k=2, variant='dfq', results=metrics, metrics='m.json',
                 train_seconds=3.0, test_seconds=None)
        )  # fmt: skip
    results = tool.report.collect(records, ['dfq'], [2], tool.DOMAINS)
    first, second = results['dfq'][2]
    assert first == dict(seconds=3.0, unseen_OD=20.0, unseen_OC=21.0,
                         seen_OD=80 / 3, seen_OC=83 / 3)  # fmt: skip
    assert second['unseen_OD'] == 22.0
    table = tool.report.summarize(results, ['dfq'], [2])
    # mean +- population std of 20 and 22.
    assert 'dfq                Domain2    21.00 +-  1.00' in table
    # A run without a domain's Dice is an error, not a gap in the table.
    del records[0]['results']['Domain3/OC_Dice']
    with pytest.raises(KeyError, match='m.json'):
        tool.report.run_result(records[0], tool.DOMAINS)
