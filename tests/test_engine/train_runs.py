"""Background runs of ``tools/train.py`` for the reliability tests.

The runs of :func:`tests.helpers.train_args` (tiny fundus demo, CPU, 6
iterations, deterministic), started as subprocesses that can be killed, with
one thread each.

A plain module rather than the folder's conftest: test modules import it.
"""

import subprocess
import sys
import time

from ..helpers import REPO_ROOT, tool_env


def start(script, args, log_path):
    """Start a tool in the background, its output going to ``log_path``."""
    log = open(log_path, 'w')
    proc = subprocess.Popen(
        [sys.executable, script, *args],
        cwd=REPO_ROOT,
        env=tool_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.log_file = log
    return proc


def finish(proc, timeout=300):
    """Wait for a started tool; return (exit status, its output)."""
    try:
        rc = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.log_file.close()
    with open(proc.log_file.name) as f:
        return rc, f.read()


def wait_for(condition, proc, timeout=240, what=''):
    """Poll ``condition()`` until it holds; fail if the process ends."""
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return
        if proc.poll() is not None:
            rc, out = finish(proc)
            raise AssertionError(
                f'the run ended (status {rc}) before {what}:\n{out[-3000:]}'
            )
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f'timed out waiting for {what}')


def log_has(proc, text):
    """A condition: ``text`` appeared in the run's output."""

    def check():
        with open(proc.log_file.name) as f:
            return text in f.read()

    return check
