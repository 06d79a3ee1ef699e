"""tools/benchmark.py's MiT size table, against mmseg's and our own configs.

The benchmark builds every size from the MiT-b0 bases; the table must give
the models that mmseg's SegFormer configs (the published sizes) and the
sized bases this repo keeps (b2, b3) give.
"""

import importlib.util
import os.path as osp
import time

import mmseg
import pytest
from mmengine.config import Config

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
MODELS = osp.join(REPO, 'configs', '_base_', 'models')
MMSEG_SEGFORMER = osp.join(
    osp.dirname(mmseg.__file__), '.mim', 'configs', 'segformer'
)


def _load_benchmark():
    # tools/ is not a package: load tools/benchmark.py by path.
    spec = importlib.util.spec_from_file_location(
        'dfq_tools_benchmark', osp.join(REPO, 'tools', 'benchmark.py')
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sized(base, backbone):
    benchmark = _load_benchmark()
    cfg = Config.fromfile(osp.join(MODELS, base))
    cfg.merge_from_dict(dict(model=benchmark.mit_size_edits(backbone)))
    return cfg.model


@pytest.mark.parametrize('backbone', ['b1', 'b2', 'b3', 'b4', 'b5'])
def test_sizes_match_mmseg_segformer_configs(backbone):
    # mmseg's own ADE20K SegFormer configs set each size on their b0 file.
    path = osp.join(
        MMSEG_SEGFORMER,
        f'segformer_mit-{backbone}_8xb2-160k_ade20k-512x512.py',
    )
    if not osp.isfile(path):
        pytest.fail(f'{path}: mmseg config missing (mmseg install changed?)')
    theirs = Config.fromfile(path).model
    ours = _sized('segformer_mit-b0.py', backbone)
    for key in ('embed_dims', 'num_layers', 'num_heads'):
        assert ours.backbone[key] == theirs.backbone[key], key
    assert ours.decode_head.in_channels == theirs.decode_head.in_channels


def test_b0_keeps_the_base():
    benchmark = _load_benchmark()
    base = Config.fromfile(osp.join(MODELS, 'dfq_mit-b0.py')).model
    sized = _sized('dfq_mit-b0.py', 'b0')
    assert sized.to_dict() == base.to_dict()
    assert benchmark.MIT_SIZES['b0']['embed_dims'] == 32
    assert sized.decode_head.in_channels == [32, 64, 160, 256]


@pytest.mark.parametrize(
    'family, backbone', [(f, b) for f in ('dfq', 'dfqhead', 'segformer')
                         for b in ('b2', 'b3')
                         if osp.isfile(osp.join(MODELS, f'{f}_mit-{b}.py'))]
)  # fmt: skip
def test_sizes_match_the_kept_bases(family, backbone):
    # The repo's sized bases (kept for the configs that train them) and
    # the table give the same model, the pretrained weights apart.
    kept = Config.fromfile(osp.join(MODELS, f'{family}_mit-{backbone}.py'))
    kept = kept.model.to_dict()
    sized = _sized(f'{family}_mit-b0.py', backbone).to_dict()
    for model in (kept, sized):
        model['backbone'].pop('init_cfg')
    assert sized == kept


def test_unknown_size_is_refused(monkeypatch):
    benchmark = _load_benchmark()
    monkeypatch.setattr('sys.argv', ['benchmark.py', '--backbones', 'b9'])
    with pytest.raises(SystemExit):
        benchmark.parse_args()


def test_device_busy_time_counts_each_kernel_once():
    """The profiler lists a kernel twice: as a device event and inside the
    CPU operator that launched it. Busy time counts device events only,
    as torch's own table footer does, and leaves annotations out."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    benchmark = _load_benchmark()

    def event(device, us, annotation=False):
        return SimpleNamespace(
            device_type=device,
            self_device_time_total=us,
            is_user_annotation=annotation,
        )

    events = [
        event(DeviceType.CPU, 30.0),  # aten::conv2d, its kernel's time
        event(DeviceType.CUDA, 30.0),  # the kernel
        event(DeviceType.CUDA, 12.5),  # a kernel of a CUDA-graph replay
        event(DeviceType.CUDA, 99.0, annotation=True),  # record_function
    ]
    assert benchmark.device_busy_us(events) == 42.5


@pytest.mark.parametrize('variant', ['segformer-256', 'dfqhead'])
def test_variants_share_dfqs_attention(variant):
    """The SegFormer / DFQHead variants' MiT is mmseg's MiT with DFQ's fused
    attention: no stage whitened, mmseg's MiT state dict."""
    from mmseg.models.backbones import MixVisionTransformer

    benchmark = _load_benchmark()
    model = benchmark.build_model('b0', variant, num_classes=3)
    dfq = benchmark.build_model('b0', 'dfq', num_classes=3)
    assert model.backbone.rdwt_stages == ()
    assert model.backbone.fused_attention == dfq.backbone.fused_attention
    assert dfq.backbone.fused_attention == 'auto'
    plain = MixVisionTransformer(
        embed_dims=32, num_layers=[2, 2, 2, 2], num_heads=[1, 2, 5, 8]
    )
    assert model.backbone.state_dict().keys() == plain.state_dict().keys()


def test_steady_state_leaves_out_warm_up_and_profiled_iterations():
    """The profiled iterations and the one that takes the profiler's
    post-processing as data time are not in the steady-state figures."""
    benchmark = _load_benchmark()
    # 12 iterations: 0-3 warm-up, 4-6 profiled, 7 takes the post-processing.
    step = [float(i) for i in range(12)]
    data = [10.0 + i for i in range(12)]
    kept_step, kept_data, kept = benchmark.steady_iterations(
        step, data, iters=12, skip=4, profiled=3
    )
    assert kept_step == [8.0, 9.0, 10.0, 11.0]
    assert kept_data == [18.0, 19.0, 20.0, 21.0]
    assert kept == 4
    # No profile: everything after the warm-up.
    assert benchmark.steady_iterations(step, data, 12, 4, 0)[0] == step[4:]
    # A buffer that dropped its oldest entries: step[0] is iteration 2.
    assert (
        benchmark.steady_iterations(step[2:], data[2:], 12, 4, 0)[0]
        == (step[4:])
    )
    with pytest.raises(SystemExit, match='no steady-state iteration'):
        benchmark.steady_iterations(step, data, 12, 8, 3)


def test_warning_sites_name_the_caller_outside_the_library(tmp_path):
    """--sync-check names the innermost caller outside torch of each
    matching warning, with the library line that raised it (the sync debug
    mode's warnings point into torch)."""
    import sys

    library = tmp_path / 'fake_torch'
    library.mkdir()
    (library / 'fake_sync.py').write_text(
        'import warnings\n'
        'def item():\n'
        "    warnings.warn('called a synchronizing CUDA operation')\n"
        'def outer():\n'
        '    item()\n'
    )
    sys.path.insert(0, str(library))
    try:
        import fake_sync
    finally:
        sys.path.remove(str(library))
    benchmark = _load_benchmark()

    def caller():
        fake_sync.outer()

    line = caller.__code__.co_firstlineno + 1
    sites = benchmark.warning_sites(caller, 'synchronizing', str(library))
    assert len(sites) == 1
    where, via = sites[0].split(' (via ')
    assert where.endswith(f'test_benchmark_sizes.py:{line}')
    assert via.endswith('fake_sync.py:3)')
    assert benchmark.warning_sites(caller, 'no such', str(library)) == []


def test_schedule_sync_check_spans_one_whole_iteration():
    """The Runner-level sync check records from the first before-iteration
    hook to the last after-iteration hook of one iteration only."""
    import types
    import warnings

    benchmark = _load_benchmark()
    check = benchmark.ScheduleSyncCheck(iteration=3, cuda=False)
    assert check.closer.priority == 'LOWEST' and check.priority == 'HIGHEST'
    for it in range(6):
        runner = types.SimpleNamespace(iter=it)
        check.before_train_iter(runner, it)
        warnings.warn(
            f'called a synchronizing CUDA operation ({it})', stacklevel=1
        )
        check.closer.after_train_iter(runner, it)
    assert len(check.recorder.sites) == 1
    assert 'test_benchmark_sizes.py' in check.recorder.sites[0]
    assert check.checked
    assert check.report() == '  host synchronisations: checked on CUDA only'
    assert (
        benchmark.ScheduleSyncCheck(2, False)
        .report()
        .startswith('  (the schedule ended')
    )


def test_sync_check_skips_the_debug_modes_notice():
    """The sync debug mode's one-time notice holds the word
    'synchronizing' but is not a synchronisation (it was counted as one on
    the H200); the warning at a real one is."""
    import warnings

    benchmark = _load_benchmark()

    def notices():
        warnings.warn(
            'Synchronization debug mode is a prototype feature and does not '
            'yet detect all synchronizing operations',
            stacklevel=1,
        )
        warnings.warn('called a synchronizing CUDA operation', stacklevel=1)

    sites = benchmark.warning_sites(notices, benchmark.SYNC_WARNING)
    assert len(sites) == 1
    line = notices.__code__.co_firstlineno + 6
    assert sites[0].endswith(f'test_benchmark_sizes.py:{line}')


def test_gil_contention_runs_only_inside_its_block_and_closes():
    benchmark = _load_benchmark()
    contention = benchmark.GILContention()
    try:
        time.sleep(0.05)
        idle = contention.spins
        time.sleep(0.05)
        assert contention.spins == idle
        with contention:
            deadline = time.monotonic() + 5
            while contention.spins == idle and time.monotonic() < deadline:
                time.sleep(0.01)
        assert contention.spins > idle
        time.sleep(0.02)
        after = contention.spins
        time.sleep(0.05)
        assert contention.spins == after
    finally:
        contention.close()
    assert not contention._thread.is_alive()


def test_data_time_split_attributes_hooks_as_iter_timer_hook_counts(
    monkeypatch,
):
    """next() and the hooks around IterTimerHook, on a fake clock."""
    benchmark = _load_benchmark()
    clock = [0.0]
    monkeypatch.setattr(benchmark.time, 'perf_counter', lambda: clock[0])

    class Work:
        before = after = 0.0

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            clock[0] += self.before

        def after_train_iter(
            self, runner, batch_idx, data_batch=None, outputs=None
        ):
            # Costs that grow with the iteration: which iteration a hook
            # is charged to shows in the means.
            clock[0] += self.after * (runner.iter + 1)

    def hook(name, before, after):
        return type(name, (Work,), dict(before=before, after=after))()

    def batches():
        while True:
            clock[0] += 0.016
            yield {}

    class Loop:
        dataloader_iterator = batches()

    class FakeRunner:
        iter = 0
        train_loop = Loop()
        passed = []

        def call_hook(self, fn_name, **kwargs):
            self.passed.append(fn_name)

    runner = FakeRunner()
    runner._hooks = [
        hook('EarlyHook', 0.001, 0.002),
        hook('IterTimerHook', 0.0, 0.0),
        hook('LateHook', 0.004, 0.008),
    ]
    split = benchmark.DataTimeSplit(runner)
    runner._hooks.append(split)
    runner.call_hook('before_train')
    assert runner.passed == ['before_train']
    split.before_train_epoch(runner)
    for k in range(5):
        runner.iter = k
        next(runner.train_loop.dataloader_iterator)
        runner.call_hook('before_train_iter', batch_idx=k, data_batch={})
        runner.call_hook(
            'after_train_iter', batch_idx=k, data_batch={}, outputs={}
        )
    n, mean_next, hooks, counted = split.split(range(1, 5))
    assert n == 4
    assert abs(mean_next - 0.016) < 1e-12
    assert counted == {
        ('before_train_iter', 'EarlyHook'),
        ('after_train_iter', 'LateHook'),
        ('after_train_iter', 'DataTimeSplit'),
    }
    # In the data time: EarlyHook.before of the same iteration, and
    # LateHook.after of the iteration before (iterations 0-3: 8 ms x 2.5).
    # In the step time: EarlyHook.after of the same iteration (2 ms x 3.5)
    # and LateHook.before.
    assert abs(hooks[('after_train_iter', 'LateHook')] - 0.020) < 1e-12
    assert abs(hooks[('after_train_iter', 'EarlyHook')] - 0.007) < 1e-12
    inside = sum(v for k, v in hooks.items() if k in counted)
    outside = sum(v for k, v in hooks.items() if k not in counted)
    assert abs(inside - 0.021) < 1e-12
    assert abs(outside - 0.011) < 1e-12
    report = split.report(range(1, 5), 0.040)
    assert 'next(dataloader) 16.00 + hooks 21.00 + the rest 3.00 ms' in report
    assert 'LateHook.after 20.00, EarlyHook.before 1.00' in report
    assert 'EarlyHook.after 7.00, LateHook.before 4.00' in report
    # Installed once, around the loop's iterator.
    wrapped = runner.train_loop.dataloader_iterator
    split.before_train_epoch(runner)
    assert runner.train_loop.dataloader_iterator is wrapped


@pytest.mark.parametrize('mask_dtype', [None, 'uint8'])
def test_loader_copy_counts_each_byte_once(mask_dtype):
    # --loader's copy column: what the pin-memory thread copies. A stacked
    # batch's sample masks are views of its mask batch: counted once.
    import copy

    import torch
    from mmengine.dataset import pseudo_collate
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    from mmseg_dfq.datasets import stack_seg_collate

    benchmark = _load_benchmark()
    items = []
    for _ in range(4):
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=torch.ones(1, 8, 8).long())
        items.append(
            dict(
                inputs=torch.zeros(3, 8, 8, dtype=torch.uint8),
                data_samples=sample,
            )
        )
    mask_bytes = 4 * 64 * (1 if mask_dtype else 8)
    for collate in (pseudo_collate, stack_seg_collate):
        kwargs = (
            dict(mask_dtype=mask_dtype) if collate is stack_seg_collate else {}
        )
        batch = collate(copy.deepcopy(items), **kwargs)
        buffers = {}
        assert benchmark.copy_into(batch, buffers) >= 0
        copied = sum(b.numel() * b.element_size() for b in buffers.values())
        expected = 4 * 3 * 64 + (mask_bytes if kwargs else 4 * 64 * 8)
        assert copied == expected, collate.__name__
