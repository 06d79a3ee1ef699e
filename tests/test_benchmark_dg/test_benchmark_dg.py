"""Smoke test of tools/benchmark_dg.py and checks of its domain shift."""

import importlib.util
import json
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np

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


def test_quick_run(tmp_path):
    out_json = str(tmp_path / 'bench.json')
    proc = subprocess.run(
        [sys.executable, TOOL, '--quick', '--iters', '2',
         '--out-json', out_json],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for variant in ('segformer', 'dfqhead', 'dfq'):
        assert f'\n{variant:<10} Domain1' in proc.stdout
    assert 'Total wall time' in proc.stdout
    with open(out_json) as f:
        data = json.load(f)
    assert data['args']['iters'] == 2
    assert sorted(data['results']) == ['dfq', 'dfqhead', 'segformer']
    for runs in data['results'].values():
        (run,) = runs['Domain1']
        for key in ('unseen_OD', 'unseen_OC', 'seen_OD', 'seen_OC'):
            assert 0.0 <= run[key] <= 100.0
