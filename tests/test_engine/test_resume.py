"""Interrupted runs resume to exactly the uninterrupted model.

One chain of runs in a work dir, each stopped differently, then resumed:
SIGKILL at a random moment, SIGTERM at a random moment (checkpoint + exit
status 75), SIGKILL in the middle of a (slowed) checkpoint write; the
final weights equal the uninterrupted run's bit for bit. A truncated latest
checkpoint is passed over with a warning; a broken checkpoint given
explicitly is one error line naming it.
"""

import glob
import os
import os.path as osp
import random
import shutil
import signal
import time

import pytest
import torch

from mmseg_dfq.engine import PREEMPTED_EXIT_CODE

from ..helpers import (
    REPO_ROOT,
    TRAIN,
    TRAIN_ITERS,
    assert_same_weights,
    run_tool,
    train_args,
)
from .train_runs import finish, log_has, start, wait_for

# Runs tools/train.py with a checkpoint writer that stops half-way through
# the first large file, leaves a mark, and sleeps (to be killed there).
SLOW_WRITER = """
import os, runpy, sys, time
import mmseg_dfq.compat as compat

write = compat._write_and_sync


def slow(f, data):
    if len(data) < 1_000_000:
        return write(f, data)
    f.write(data[: len(data) // 2])
    f.flush()
    os.fsync(f.fileno())
    with open(os.environ['SLOW_WRITE_MARK'], 'w') as mark:
        mark.write(f.name)
    time.sleep(300)
    write(f, data[len(data) // 2 :])


compat._write_and_sync = slow
sys.argv = [{train!r}] + sys.argv[1:]
runpy.run_path({train!r}, run_name='__main__')
"""


def loadable(path):
    try:
        torch.load(path, map_location='cpu', weights_only=True)
    except Exception:
        return False
    return True


def test_killed_and_resumed_equals_uninterrupted(
    tmp_path, fundus_root, reference_run, monkeypatch
):
    rng = random.Random(int(time.time()))
    seed = rng.randrange(10**6)
    rng = random.Random(seed)
    note = f'(random seed {seed})'
    work_dir = str(tmp_path / 'work')
    log = str(tmp_path / 'run{}.log')

    # 1. SIGKILL at a random moment after the first checkpoint.
    proc = start(TRAIN, train_args(fundus_root, work_dir), log.format(1))
    first = osp.join(work_dir, 'iter_2.pth')
    wait_for(lambda: osp.isfile(first), proc, what='iter_2.pth')
    time.sleep(rng.uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    rc, _ = finish(proc)
    assert rc == -signal.SIGKILL, note

    # 2. Resume; SIGTERM at a random moment -> checkpoint, status 75.
    proc = start(
        TRAIN, train_args(fundus_root, work_dir, resume=True), log.format(2)
    )
    wait_for(log_has(proc, 'Iter(train)'), proc, what='a trained iteration')
    time.sleep(rng.uniform(0.0, 0.3))
    proc.send_signal(signal.SIGTERM)
    rc, out = finish(proc)
    if rc == 0:  # finished before the signal arrived: nothing to check
        assert f'Iter(train) [{TRAIN_ITERS}/{TRAIN_ITERS}]' in out, note
    else:
        assert rc == PREEMPTED_EXIT_CODE, (note, out[-3000:])
        assert 'preempted: checkpoint' in out, note
        with open(osp.join(work_dir, 'last_checkpoint')) as f:
            saved = f.read().strip()
        assert loadable(saved), note
        step = int(osp.basename(saved)[len('iter_') : -len('.pth')])
        assert f'Iter(train) [{step}/{TRAIN_ITERS}]' in out, note
        assert f'Iter(train) [{step + 1}/{TRAIN_ITERS}]' not in out, note

        # 3. Resume with a slow writer; SIGKILL in the middle of a write
        # (only if a checkpoint is left to write after the preempted one).
        if step < TRAIN_ITERS:
            launcher = tmp_path / 'slow_train.py'
            launcher.write_text(SLOW_WRITER.format(train=TRAIN))
            mark = str(tmp_path / 'writing')
            monkeypatch.setenv('SLOW_WRITE_MARK', mark)
            proc = start(
                str(launcher),
                train_args(fundus_root, work_dir, resume=True),
                log.format(3),
            )
            wait_for(lambda: osp.isfile(mark), proc, what='a checkpoint write')
            proc.send_signal(signal.SIGKILL)
            rc, _ = finish(proc)
            assert rc == -signal.SIGKILL
            with open(mark) as f:
                partial = f.read().strip()
            assert osp.isfile(partial) and '.tmp-' in partial
            # No checkpoint under its own name is cut short.
            for path in glob.glob(osp.join(work_dir, '*.pth')):
                assert loadable(path), (path, note)

    # 4. Resume to the end.
    proc = start(
        TRAIN, train_args(fundus_root, work_dir, resume=True), log.format(4)
    )
    rc, out = finish(proc)
    assert rc == 0, out[-3000:]
    assert 'Advance dataloader' not in out or 'loads no data' in out
    assert not glob.glob(osp.join(work_dir, '.*.tmp-*'))  # cleaned up
    final = f'iter_{TRAIN_ITERS}.pth'
    assert_same_weights(
        osp.join(reference_run, final), osp.join(work_dir, final)
    )


def test_truncated_latest_checkpoint_falls_back(
    tmp_path, fundus_root, reference_run
):
    work_dir = str(tmp_path / 'work')
    os.makedirs(work_dir)
    for k in (2, 4):
        shutil.copy(osp.join(reference_run, f'iter_{k}.pth'), work_dir)
    latest = osp.join(work_dir, 'iter_4.pth')
    with open(latest, 'r+b') as f:
        f.truncate(os.path.getsize(latest) // 2)
    with open(osp.join(work_dir, 'last_checkpoint'), 'w') as f:
        f.write(latest)
    proc = start(
        TRAIN,
        train_args(fundus_root, work_dir, resume=True),
        str(tmp_path / 'out.log'),
    )
    rc, out = finish(proc)
    assert rc == 0, out[-3000:]
    assert f'Not resuming from {latest}' in out
    assert 'truncated or corrupt' in out
    assert 'resumed epoch: 0, iter: 2' in out
    assert_same_weights(
        osp.join(reference_run, f'iter_{TRAIN_ITERS}.pth'),
        osp.join(work_dir, f'iter_{TRAIN_ITERS}.pth'),
    )


def test_broken_explicit_checkpoint_is_one_error(tmp_path, fundus_root):
    broken = str(tmp_path / 'broken.pth')
    with open(broken, 'wb') as f:
        f.write(b'PK\x03\x04 not a whole checkpoint')
    proc = start(
        TRAIN,
        train_args(
            fundus_root,
            str(tmp_path / 'work'),
            resume=True,
            extra=[f'load_from={broken}'],
        ),
        str(tmp_path / 'out.log'),
    )
    rc, out = finish(proc)
    assert rc == 1, out[-3000:]
    assert f"error: checkpoint '{broken}'" in out
    assert 'truncated or corrupt' in out
    assert 'Traceback' not in out


def test_two_process_resume_equals_uninterrupted(
    tmp_path, fundus_root, fundus_dist_run
):
    # DDP on CPU (gloo): per-rank RNG states and sampler streams. The
    # uninterrupted run is the suite's shared 2-process run (the same
    # arguments); this one restarts it from its first checkpoint.
    full, _ = fundus_dist_run
    resumed = str(tmp_path / 'resumed')
    os.makedirs(resumed)
    shutil.copy(osp.join(full, 'iter_2.pth'), resumed)
    out = run_tool(
        TRAIN, train_args(fundus_root, resumed, resume=True), nproc=2
    )
    assert 'resumed epoch: 0, iter: 2' in out, out[-3000:]
    assert 'iter_2.pth' in out  # the checkpoint it resumed from
    # Iterations 1 and 2 are not run again; 3 to the end are.
    assert 'Iter(train) [1/' not in out and 'Iter(train) [2/' not in out
    for it in range(3, TRAIN_ITERS + 1):
        assert f'Iter(train) [{it}/{TRAIN_ITERS}]' in out, it
    with open(osp.join(resumed, 'last_checkpoint')) as f:
        assert f.read().strip().endswith(f'iter_{TRAIN_ITERS}.pth')
    assert_same_weights(
        osp.join(full, f'iter_{TRAIN_ITERS}.pth'),
        osp.join(resumed, f'iter_{TRAIN_ITERS}.pth'),
    )


def test_segformer_resume_equals_uninterrupted(tmp_path, fundus_root):
    # The hooks are model-agnostic: the SegFormer baseline (plain MiT,
    # SegformerHead with dropout) resumes as exactly as DFQ.
    config = osp.join(
        REPO_ROOT, 'configs', 'ablation', 'segformer_mit-tiny_demo_fundus.py'
    )
    full, resumed = str(tmp_path / 'full'), str(tmp_path / 'resumed')
    run_tool(TRAIN, [config, *train_args(fundus_root, full)[1:]])
    os.makedirs(resumed)
    shutil.copy(osp.join(full, 'iter_2.pth'), resumed)
    args = train_args(fundus_root, resumed, resume=True)
    out = run_tool(TRAIN, [config, *args[1:]])
    assert 'resumed epoch: 0, iter: 2' in out
    # The SegFormer model logs no RDWT loss.
    assert 'decode.loss_ce' in out and 'decode.loss_rdwt' not in out
    assert_same_weights(
        osp.join(full, f'iter_{TRAIN_ITERS}.pth'),
        osp.join(resumed, f'iter_{TRAIN_ITERS}.pth'),
    )


def _preempt_rank(rank, init_file, out_dir, signal_at):
    """One gloo rank driving PreemptionHook over fake iterations."""
    import json
    import types

    import torch.distributed as dist
    from mmengine.logging import MessageHub

    from mmseg_dfq.engine import PreemptionHook
    from mmseg_dfq.engine.preemption_hook import Preempted

    dist.init_process_group(
        'gloo', init_method=f'file://{init_file}', rank=rank, world_size=2
    )
    saved = []
    runner = types.SimpleNamespace(
        iter=0,
        work_dir=out_dir,
        hooks=[],
        message_hub=MessageHub.get_instance(f'preempt_rank{rank}'),
        save_checkpoint=lambda work_dir, name, **kwargs: saved.append(name),
    )
    hook = PreemptionHook()
    hook.before_train(runner)
    stopped = None
    try:
        for it in range(8):
            runner.iter = it
            if rank == 1 and it == signal_at:
                os.kill(os.getpid(), signal.SIGUSR1)
            try:
                hook.after_train_iter(runner, it)
            except Preempted as exc:
                stopped = (it, exc.code)
                break
    finally:
        hook.after_train(runner)
        dist.destroy_process_group()
    with open(osp.join(out_dir, f'rank{rank}.json'), 'w') as f:
        json.dump(dict(stopped=stopped, saved=saved), f)


@pytest.mark.parametrize('signal_at', [2, 7])
def test_ranks_agree_on_the_preempted_iteration_a_step_later(
    tmp_path, signal_at
):
    """A signal on one rank only: both ranks stop after the same iteration,
    the one after the signal's (the agreement is read one iteration late,
    so the host never waits on the step it just queued), and save it. A
    signal in the last of the 8 iterations stops nothing: training ends."""
    import json

    import torch.multiprocessing as mp

    mp.spawn(
        _preempt_rank,
        args=(str(tmp_path / 'init'), str(tmp_path), signal_at),
        nprocs=2,
    )
    results = [
        json.loads((tmp_path / f'rank{r}.json').read_text()) for r in (0, 1)
    ]
    if signal_at == 7:
        for result in results:
            assert result == dict(stopped=None, saved=[])
        return
    for result in results:
        assert result['stopped'] == [3, PREEMPTED_EXIT_CODE]
        assert result['saved'] == ['iter_4.pth']
    last = (tmp_path / 'last_checkpoint').read_text().strip()
    assert last.endswith('iter_4.pth')
