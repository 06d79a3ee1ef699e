"""tools/sweep.py end to end on generated fundus data, on CPU.

Two variants (the CPU demo's DFQ, and the same with the authors' RDWT
layout set per variant) x the four fundus held-out splits, one iteration
each. The sweep first stops after two splits (``--targets 1 2``); one more
split is run "elsewhere" from the command ``--print-commands`` gives (as a
cluster job would, in child processes); the full sweep then trains only the
three missing runs, leaving the files of the finished five untouched; a run
whose metrics are gone is tested again, not retrained; and ``--collect``
rebuilds the same table without training. The written
Markdown, CSV and JSON are checked against the ``metrics.json`` files of the
runs, re-read and averaged here with NumPy.
"""

import csv
import glob
import hashlib
import importlib.util
import json
import math
import os
import os.path as osp
import re
import subprocess

import numpy as np
import pytest
from mmengine.config import Config

from mmseg_dfq.testing.synthetic import make_fundus

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
RECIPE = osp.join(
    REPO, 'configs', 'benchmark', 'dg-shift_dfq_mit-b0_fundus.py'
)
VARIANTS = [
    ['dfq=' + RECIPE],
    ['authors=' + RECIPE, 'model.backbone.rdwt_layout=authors',
     'model.decode_head.loss_rdwt.layout=authors'],
]  # fmt: skip
LABELS = ['dfq', 'authors']
SPLITS = [f'fundus_dg_d{k}' for k in (1, 2, 3, 4)]
TARGETS = [f'Domain{k}' for k in (1, 2, 3, 4)]
COLUMNS = [f'{s}_{m}' for s in ('OD', 'OC') for m in ('Dice', 'ASD', 'HD95')]


def _load_sweep():
    spec = importlib.util.spec_from_file_location(
        'sweep_under_test', osp.join(REPO, 'tools', 'sweep.py')
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = _load_sweep()


def _argv(work_dir, data_root, *extra):
    argv = ['--benchmark', 'fundus', '--work-dir', work_dir,
            '--data-root', data_root, '--seeds', '0']  # fmt: skip
    for variant in VARIANTS:
        argv += ['--variant'] + variant
    # One iteration, a 3-image batch (one per source), a 32-channel head:
    # set explicitly, whatever the schedule bases say.
    argv += ['--cfg-options', 'train_cfg.max_iters=1',
             'param_scheduler.0.end=1', 'train_dataloader.batch_size=3',
             'train_dataloader.sampler.domain_counts=[1,1,1]',
             'model.decode_head.channels=32']  # fmt: skip
    return argv + list(extra)


def _snapshot(folder):
    """Path -> (mtime_ns, bytes) of every file below ``folder``."""
    out = {}
    for path in glob.glob(osp.join(folder, '**', '*'), recursive=True):
        if osp.isfile(path):
            with open(path, 'rb') as f:
                out[path] = (os.stat(path).st_mtime_ns, f.read())
    return out


def _expected(work_dir):
    """variant -> target -> column -> value, read from the metrics JSONs."""
    out = {}
    for label in LABELS:
        out[label] = {}
        for split, target in zip(SPLITS, TARGETS):
            path = osp.join(work_dir, label, split, 'seed0', 'metrics.json')
            with open(path) as f:
                metrics = json.load(f)
            out[label][target] = {
                c: math.nan
                if metrics[f'{target}/{c}'] is None
                else metrics[f'{target}/{c}']
                for c in COLUMNS
            }
    return out


def _check_tables(work_dir):
    expected = _expected(work_dir)
    # Reference rows: each target, then the mean over the four targets.
    ref = {}
    for label in LABELS:
        for target in TARGETS:
            ref[label, target] = expected[label][target]
        ref[label, 'mean'] = {
            c: float(np.mean([expected[label][t][c] for t in TARGETS]))
            for c in COLUMNS
        }

    with open(osp.join(work_dir, 'sweep_table.csv')) as f:
        rows = list(csv.DictReader(f))
    assert [(r['variant'], r['target']) for r in rows] == list(ref)
    for row in rows:
        assert row['n_seeds'] == '1' and row['seeds'] == '0'
        for c in COLUMNS:
            want = ref[row['variant'], row['target']][c]
            got = float(row[f'{c}_mean'])
            if math.isnan(want):
                assert math.isnan(got)
            else:
                assert got == pytest.approx(want, rel=1e-9, abs=1e-9)
                assert float(row[f'{c}_std']) == 0.0

    with open(osp.join(work_dir, 'sweep_table.json')) as f:
        data = json.load(f)
    assert data['columns'] == COLUMNS
    assert len(data['rows']) == len(ref)
    for row in data['rows']:
        for c in COLUMNS:
            want = ref[row['variant'], row['target']][c]
            got = row['values'][c]['mean']
            if math.isnan(want):
                assert got is None
            else:
                assert got == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert len(data['runs']) == 8
    assert re.fullmatch(r'[0-9a-f]{40}(\+dirty)?', data['meta']['commit'])
    assert data['meta']['devices'] and all(data['meta']['devices'])
    for run in data['runs']:
        with open(run['config'], 'rb') as f:
            assert (
                hashlib.sha256(f.read()).hexdigest() == (run['config_sha256'])
            )

    with open(osp.join(work_dir, 'sweep_table.md')) as f:
        md = f.read()
    for (label, target), values in ref.items():
        cells = [
            'n/a' if math.isnan(values[c]) else f'{values[c]:.2f}'
            for c in COLUMNS
        ]
        name = '**mean**' if target == 'mean' else target
        assert f'| {label} | {name} | ' + ' | '.join(cells) + ' |' in md
    assert '| Variant | Target | OD Dice | OD ASD | OD HD95 | OC Dice' in md
    assert 'Commit: `' in md and 'Device: ' in md
    assert osp.getsize(osp.join(work_dir, 'sweep_dice.png')) > 1000
    return rows


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('sweep') / 'fundus')
    make_fundus(root, seed=0, cases=5, size=32)
    return root


def test_sweep_resume_elsewhere_and_collect(data_root, tmp_path, capsys):
    work_dir = str(tmp_path / 'sweep')
    argv = _argv(work_dir, data_root)

    # The commands a cluster would run, one line per run (all 8 to do).
    array = str(tmp_path / 'jobs.sh')
    sweep.main(argv + ['--print-commands', '--job-array', array])
    lines = capsys.readouterr().out.strip().splitlines()
    lines = [line for line in lines if 'tools/train.py' in line]
    assert len(lines) == 8
    with open(array) as f:
        script = f.read()
    assert '#SBATCH --array=0-7' in script
    subprocess.run(['bash', '-n', array], check=True)

    # Interrupted sweep: only two of the four splits.
    sweep.main(argv + ['--targets', '1', '2'])
    first = {}
    for label in LABELS:
        for split in SPLITS[:2]:
            run_dir = osp.join(work_dir, label, split, 'seed0')
            assert osp.isfile(osp.join(run_dir, 'iter_1.pth'))
            first.update(_snapshot(run_dir))
    assert not osp.exists(osp.join(work_dir, LABELS[0], SPLITS[2]))

    # One run done elsewhere: its printed command, in child processes.
    (line,) = [x for x in lines if f'/dfq/{SPLITS[2]}/' in x]
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        ['bash', '-c', line], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first.update(_snapshot(osp.join(work_dir, 'dfq', SPLITS[2], 'seed0')))

    # The full sweep trains the three missing runs only.
    capsys.readouterr()
    sweep.main(argv)
    out = capsys.readouterr().out
    assert out.count('done before, kept') == 5
    assert out.count('trained and tested') == 3
    assert _snapshot_subset(first) == first
    rows = _check_tables(work_dir)

    # Trained but not tested (a job killed after training): test only.
    run_dir = osp.join(work_dir, LABELS[1], SPLITS[3], 'seed0')
    ckpt = osp.join(run_dir, 'iter_1.pth')
    stamp = os.stat(ckpt).st_mtime_ns
    os.remove(osp.join(run_dir, 'metrics.json'))
    capsys.readouterr()
    sweep.main(argv)
    out = capsys.readouterr().out
    assert out.count('done before, kept') == 7
    assert out.count(': tested (') == 1
    assert os.stat(ckpt).st_mtime_ns == stamp
    rows = _check_tables(work_dir)

    # --collect: same table from the files, nothing trained or rewritten.
    runs = _snapshot(osp.join(work_dir, LABELS[1]))
    sweep.main(argv + ['--collect'])
    assert _snapshot(osp.join(work_dir, LABELS[1])) == runs
    assert _check_tables(work_dir) == rows


def _snapshot_subset(snapshot):
    """Re-read exactly the files of an earlier snapshot."""
    out = {}
    for path in snapshot:
        with open(path, 'rb') as f:
            out[path] = (os.stat(path).st_mtime_ns, f.read())
    return out


def _fake_run(work_dir, label, split, seed, metrics):
    run_dir = osp.join(work_dir, label, split, f'seed{seed}')
    os.makedirs(run_dir, exist_ok=True)
    open(osp.join(run_dir, 'iter_1.pth'), 'wb').close()
    with open(osp.join(run_dir, 'metrics.json'), 'w') as f:
        json.dump(metrics, f)


def test_collect_mean_and_std_over_seeds(data_root, tmp_path):
    # Runs "produced elsewhere" with known values: 2 variants x 4 targets x
    # 3 seeds; the table must be their mean +- population std over seeds,
    # and the mean row the per-seed mean over targets, then over seeds.
    work_dir = str(tmp_path / 'collect')
    rng = np.random.default_rng(0)
    values = {}
    for label in LABELS:
        for split, target in zip(SPLITS, TARGETS):
            for seed in (0, 1, 2):
                v = rng.uniform(0, 100, len(COLUMNS))
                values[label, target, seed] = v
                metrics = {f'{t}/{c}': 1.0 for t in TARGETS for c in COLUMNS}
                metrics.update(
                    {f'{target}/{c}': float(x) for c, x in zip(COLUMNS, v)}
                )
                _fake_run(work_dir, label, split, seed, metrics)
    argv = _argv(work_dir, data_root, '--collect')
    argv[argv.index('--seeds') + 1 : argv.index('--seeds') + 2] = [
        '0', '1', '2'
    ]  # fmt: skip
    sweep.main(argv)
    with open(osp.join(work_dir, 'sweep_table.csv')) as f:
        rows = {(r['variant'], r['target']): r for r in csv.DictReader(f)}
    for label in LABELS:
        for target in TARGETS:
            v = np.stack([values[label, target, s] for s in (0, 1, 2)])
            row = rows[label, target]
            for i, c in enumerate(COLUMNS):
                assert float(row[f'{c}_mean']) == pytest.approx(v[:, i].mean())
                assert float(row[f'{c}_std']) == pytest.approx(v[:, i].std())
        per_seed = np.stack(
            [
                np.mean([values[label, t, s] for t in TARGETS], axis=0)
                for s in (0, 1, 2)
            ]
        )
        row = rows[label, 'mean']
        assert row['seeds'] == '0 1 2'
        for i, c in enumerate(COLUMNS):
            assert float(row[f'{c}_mean']) == pytest.approx(
                per_seed[:, i].mean()
            )
            assert float(row[f'{c}_std']) == pytest.approx(
                per_seed[:, i].std()
            )
    with open(osp.join(work_dir, 'sweep_table.md')) as f:
        md = f.read()
    v = np.stack([values['dfq', 'Domain3', s] for s in (0, 1, 2)])
    assert f'{v[:, 0].mean():.2f} +- {v[:, 0].std():.2f}' in md
    with open(osp.join(work_dir, 'sweep_table.json')) as f:
        data = json.load(f)
    assert {r['device'] for r in data['runs']} == {'not recorded'}

    # A cluster run's device comes from mmengine's environment log.
    log_dir = osp.join(work_dir, 'dfq', SPLITS[1], 'seed2', '20261127_000000')
    os.makedirs(log_dir)
    with open(osp.join(log_dir, '20261127_000000.log'), 'w') as f:
        f.write('System environment:\n    sys.platform: linux\n'
                '    CUDA available: True\n    GPU 0,1: NVIDIA H100 80GB\n'
                '    GPU number: 2\n')  # fmt: skip
    sweep.main(argv)
    with open(osp.join(work_dir, 'sweep_table.json')) as f:
        data = json.load(f)
    devices = {(r['variant'], r['split'], r['seed']): r['device']
               for r in data['runs']}  # fmt: skip
    assert devices.pop(('dfq', SPLITS[1], 2)) == 'NVIDIA H100 80GB'
    assert set(devices.values()) == {'not recorded'}
    assert data['meta']['devices'] == ['NVIDIA H100 80GB', 'not recorded']


def test_collect_refuses_missing_runs(data_root, tmp_path):
    work_dir = str(tmp_path / 'partial')
    _fake_run(work_dir, 'dfq', SPLITS[0], 0, {})
    with pytest.raises(SystemExit, match='7 of 8 runs have no final'):
        sweep.main(_argv(work_dir, data_root, '--collect'))


def test_bad_arguments(data_root, tmp_path):
    work_dir = str(tmp_path / 'bad')
    with pytest.raises(SystemExit, match='neither a variant'):
        sweep.main(['--work-dir', work_dir, '--variant', 'no-such-model'])
    with pytest.raises(SystemExit, match='matches no file'):
        sweep.main(['--benchmark', str(tmp_path / 'x_d*.py'),
                    '--variant', 'dfq'])  # fmt: skip
    split = tmp_path / 'my_split.py'
    split.write_text(
        "_base_ = '%s'\ntest_dataloader = dict(dataset=dict("
        'unseen_domains=[1, 2]))\n'
        % osp.join(REPO, 'configs', '_base_', 'datasets', 'fundus_dg_d1.py')
    )
    with pytest.raises(SystemExit, match='exactly one held-out domain'):
        sweep.main(['--benchmark', str(split), '--variant', 'dfq'])
    # A batch that breaks the domain mix stops the sweep before any run.
    with pytest.raises(SystemExit, match='split fundus_dg_d1: .*batch_size'):
        sweep.main(
            [
                '--variant',
                'dfq',
                '--work-dir',
                work_dir,
                '--cfg-options',
                'train_dataloader.batch_size=5',
            ]
        )
    with pytest.raises(SystemExit, match=r'--targets \[7\]'):
        sweep.main(['--variant', 'dfq', '--targets', '7'])
    # dfq has no per-split config for a user's benchmark: say so.
    custom = tmp_path / 'mine_d1.py'
    custom.write_text(
        "_base_ = '%s'\n"
        % osp.join(REPO, 'configs', '_base_', 'datasets', 'fundus_dg_d2.py')
    )
    with pytest.raises(SystemExit, match='has no config for split mine_d1'):
        sweep.main(['--benchmark', str(custom), '--variant', 'dfq'])


def test_builtin_variants_resolve_every_split(tmp_path):
    # Every named variant has a repo config for every split of both
    # benchmarks; two of them composed: the split's domains and the
    # variant's overrides end up in the run's config.
    args = sweep.build_parser().parse_args(
        ['--variant', 'dfq', '--work-dir', str(tmp_path)]
    )
    for benchmark, n in (('fundus', 4), ('prostate', 6)):
        name, splits = sweep.resolve_benchmark([benchmark])
        assert [s['k'] for s in splits] == list(range(1, n + 1))
        for entry in sweep.VARIANTS.values():
            for k in range(1, n + 1):
                path = entry['config'].format(benchmark=name, k=k)
                assert osp.isfile(osp.join(REPO, path)), path
    _, splits = sweep.resolve_benchmark(['prostate'])
    split = splits[4]
    assert split['target'] == 'BIDMC'
    run = sweep.build_run(
        sweep.parse_variant(['dfq-authors-layout']), split, 3, args,
        'prostate',
    )  # fmt: skip
    assert not osp.exists(run['config'])  # build_run writes nothing
    path = tmp_path / 'run.py'
    path.write_text(run['text'])
    cfg = Config.fromfile(str(path))
    assert cfg.train_dataloader.dataset.domains == [1, 2, 3, 4, 6]
    # The split's counts replace the recipe's (a dict merge would keep its
    # other domains).
    assert cfg.train_dataloader.sampler.domain_counts == {
        d: 2 for d in (1, 2, 3, 4, 6)
    }
    assert cfg.test_dataloader.dataset.unseen_domains == [5]
    assert cfg.model.backbone.rdwt_layout == 'authors'
    assert cfg.model.decode_head.loss_rdwt.layout == 'authors'
    assert cfg.randomness.seed == 3
    # The split configs train 200 epochs (EpochBasedTrainLoop).
    assert run['checkpoint'].endswith(f'epoch_{cfg.train_cfg.max_epochs}.pth')


def test_split_counts_replace_the_recipe_counts():
    # A recipe written for held-out 1 (counts {2: 3, 3: 6, 4: 7}) run on
    # split 2: the split's counts replace the recipe's, key for key.
    _, splits = sweep.resolve_benchmark(['fundus'])
    cfg = Config.fromfile(
        osp.join(REPO, 'configs', 'dfq', 'dfq_mit-tiny_demo_fundus.py')
    )
    assert cfg.train_dataloader.sampler.domain_counts == {2: 3, 3: 6, 4: 7}
    cfg.merge_from_dict(dict(splits[1]['keys']))
    assert cfg.train_dataloader.sampler.domain_counts == {1: 2, 3: 7, 4: 7}
    assert cfg.train_dataloader.dataset.domains == [1, 3, 4]


def test_a_run_whose_metrics_do_not_parse_is_tested_again(tmp_path):

    run = dict(
        checkpoint=str(tmp_path / 'iter_4.pth'),
        metrics=str(tmp_path / 'metrics.json'),
    )
    assert sweep.run_state(run) == 'todo'
    (tmp_path / 'iter_4.pth').write_bytes(b'x')
    assert sweep.run_state(run) == 'trained'
    (tmp_path / 'metrics.json').write_text('{"Domain1/OD_Dice": 9')
    assert sweep.run_state(run) == 'trained'
    (tmp_path / 'metrics.json').write_text('{"Domain1/OD_Dice": 91.5}')
    assert sweep.run_state(run) == 'done'
