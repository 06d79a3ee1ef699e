"""The first-contact commands: Makefile, tools/setup_env.sh, .ci/run, README.

``make demo`` / ``make test`` must run the set-up script and then the
commands README.md documents, and CI must run the same set-up and README's
test command. The set-up script itself runs here against a stand-in
``bin/python`` that records what it is asked to do (nothing is installed), so
the order (torch pair first, then the package), the settings and the stamp
that skips a second set-up are checked for real and fast.
"""

import os
import os.path as osp
import re
import shutil
import subprocess

import pytest

REPO = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))

needs_make = pytest.mark.skipif(
    shutil.which('make') is None, reason='GNU make is not installed'
)

# Stand-in interpreter: logs each call, answers the version query, and fails
# the torch/torchvision pair check or pip when told to.
FAKE_PYTHON = r"""#!/usr/bin/env bash
if [ "$1" = - ]; then
  body=$(cat)
  if printf '%s' "$body" | grep -q 'torchvision.ops.nms'; then
    echo 'pair-check' >>"$FAKE_LOG"
    exit "${FAKE_PAIR_RC:-1}"
  fi
  echo 'import-check' >>"$FAKE_LOG"
  exit 0
fi
if [ "$1" = -c ]; then
  echo 'fake 3.11'
  exit 0
fi
echo "$*" >>"$FAKE_LOG"
if [ "$1 $2" = '-m pip' ]; then exit "${FAKE_PIP_RC:-0}"; fi
exit 0
"""


def _readme():
    with open(osp.join(REPO, 'README.md')) as f:
        return f.read()


def _section_block(heading):
    """Lines of the first ```bash block under the README heading."""
    text = _readme()
    start = text.index(heading + '\n')
    block = re.search(r'```bash\n(.*?)```', text[start:], re.S)
    assert block, f'README.md: no bash block under {heading!r}'
    lines = [ln.split('#')[0].strip() for ln in block.group(1).splitlines()]
    return [ln for ln in lines if ln]


def _make_dry_run(target, *settings):
    """Commands ``make -n`` prints, continuation lines joined."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('MAKE')}
    out = subprocess.run(
        ['make', '-n', target, *settings],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [
        ' '.join(ln.split())
        for ln in out.replace('\\\n', ' ').splitlines()
        if ln.strip()
    ]


@needs_make
@pytest.mark.parametrize(
    'target, heading',
    [('demo', '## Quick start (no data, no GPU)'), ('test', '## Test')],
)
def test_make_target_sets_up_then_runs_readme_command(
    tmp_path, target, heading
):
    venv = str(tmp_path / 'env')
    commands = _make_dry_run(target, f'VENV={venv}')
    assert len(commands) == 2, commands
    assert commands[0].endswith('bash tools/setup_env.sh'), commands
    assert f"VENV='{venv}'" in commands[0]
    (readme_cmd,) = _section_block(heading)
    assert readme_cmd.startswith('python ')
    assert commands[1] == f'{venv}/bin/{readme_cmd}'


def test_readme_first_contact_and_ci_use_the_same_commands():
    assert _section_block('## First contact: two commands') == [
        'make demo',
        'make test',
    ]
    with open(osp.join(REPO, '.ci', 'run')) as f:
        ci = [ln.strip() for ln in f]
    (test_cmd,) = _section_block('## Test')
    assert test_cmd in ci
    # From scratch, with the Makefile's set-up, and the demo target proven.
    assert 'rm -rf "$venv"' in ci
    assert ci.index('rm -rf "$venv"') < ci.index('make env VENV="$venv"')
    assert 'make demo VENV="$venv"' in ci
    assert 'ruff format --check .' in ci and 'ruff check .' in ci


def test_setup_script_has_valid_syntax():
    subprocess.run(
        ['bash', '-n', osp.join(REPO, 'tools', 'setup_env.sh')], check=True
    )


def _fake_env(tmp_path, **extra):
    venv = tmp_path / 'env'
    (venv / 'bin').mkdir(parents=True)
    python = venv / 'bin' / 'python'
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    log = tmp_path / 'calls.log'
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(('MAKE', 'TORCH_', 'FAKE_'))
        and k not in ('VIRTUAL_ENV', 'FORCE', 'VENV')
    }
    env.update(FAKE_LOG=str(log), **extra)
    return str(venv), env, log


def _calls(log):
    return log.read_text().splitlines() if log.exists() else []


def _pip_installs(calls):
    prefix = '-m pip install --disable-pip-version-check '
    return [c[len(prefix) :] for c in calls if c.startswith(prefix)]


def _run_setup(venv, env, *settings):
    """``make env VENV=venv *settings`` (the script directly without make)."""
    if shutil.which('make') is None:
        cmd = ['bash', 'tools/setup_env.sh']
        env = dict(env, VENV=venv, **dict(s.split('=', 1) for s in settings))
    else:
        cmd = ['make', 'env', f'VENV={venv}', *settings]
    return subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True
    )


def test_setup_installs_readme_pair_first_and_skips_reruns(tmp_path):
    venv, env, log = _fake_env(tmp_path)
    # README's manual install: the same pair, installed before the package.
    install = _section_block('## Install')
    assert install[1] == "pip install -e '.[tests]'"
    readme_pair = install[0][len('pip install ') :]
    assert 'torchvision==' in readme_pair

    first = _run_setup(venv, env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert _pip_installs(_calls(log)) == [readme_pair, '-e .[tests]']
    assert _calls(log)[-1] == 'import-check'

    # A second run finds the stamp and does nothing.
    log.unlink()
    again = _run_setup(venv, env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert 'set up already' in again.stdout
    assert _calls(log) == []

    # Other torch settings (through make's variables) redo the set-up with
    # exactly that pair from that index, although a working pair is there.
    spec = 'torch==2.9.1 torchvision==0.24.1'
    url = 'https://download.pytorch.org/whl/cpu'
    other = _run_setup(
        venv,
        dict(env, FAKE_PAIR_RC='0'),
        f'TORCH_SPEC={spec}',
        f'TORCH_INDEX_URL={url}',
    )
    assert other.returncode == 0, other.stdout + other.stderr
    assert _pip_installs(_calls(log)) == [
        f'{spec} --index-url {url}',
        '-e .[tests]',
    ]


def test_setup_keeps_a_working_pair(tmp_path):
    venv, env, log = _fake_env(tmp_path, FAKE_PAIR_RC='0')
    result = _run_setup(venv, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'keeping the torch + torchvision' in result.stdout
    assert _pip_installs(_calls(log)) == ['-e .[tests]']


def test_setup_failure_leaves_no_stamp(tmp_path):
    venv, env, log = _fake_env(tmp_path, FAKE_PIP_RC='1')
    failed = _run_setup(venv, env)
    assert failed.returncode != 0
    assert len(_pip_installs(_calls(log))) == 1  # stopped at the torch pair
    # Nothing recorded as done: the next run tries again.
    env['FAKE_PIP_RC'] = '0'
    retry = _run_setup(venv, env)
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert 'set up already' not in retry.stdout
    assert len(_pip_installs(_calls(log))) == 3
