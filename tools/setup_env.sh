#!/usr/bin/env bash
# Set up the Python environment that `make demo`, `make test` and `.ci/run`
# use: one script, so that CI proves what the two first-contact commands do.
#
#   bash tools/setup_env.sh
#
# Settings (environment variables; the Makefile passes its own):
#   VENV             environment to use; created with `$PYTHON -m venv` when it
#                    has no bin/python. Default: the active one ($VIRTUAL_ENV),
#                    else .venv in the checkout.
#   PYTHON           interpreter that creates a new environment. Default:
#                    python3.
#   TORCH_SPEC       torch/torchvision requirements to install first.
#                    Default: DEFAULT_TORCH_SPEC below.
#   TORCH_INDEX_URL  package index for that install, e.g. one of PyTorch's
#                    per-CUDA indexes (README, "Choosing a CUDA build").
#                    With neither of the two set, a torch + torchvision pair
#                    that the environment already has and that works together
#                    is kept; with either set, the pair is always installed.
#   FORCE=1          redo the set-up even when the stamp says it is done.
#
# Re-runs skip everything when the stamp in the environment matches setup.py,
# the torch settings, the interpreter and this checkout's path (an
# environment shared by two checkouts is pointed at the one that set it up
# last: `pip install -e` links one).
set -euo pipefail
cd "$(dirname "$0")/.."

# PyPI's torch 2.14.1 for Linux x86_64 is a CUDA 13.0 build that also runs on
# CPU-only hosts, and PyPI's torchvision 0.29.1 is built against it (mmpretrain
# imports torchvision). A CPU-only torch build without the torchvision built
# for it fails at `import torchvision` ("operator torchvision::nms does not
# exist"): torch and torchvision always come as a pair.
DEFAULT_TORCH_SPEC='torch==2.14.1 torchvision==0.29.1'

venv=${VENV:-${VIRTUAL_ENV:-.venv}}
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-}
index_url=${TORCH_INDEX_URL:-}

say() { printf '[setup_env] %s\n' "$*"; }

if [ ! -x "$venv/bin/python" ]; then
  say "creating the virtual environment $venv ($python -m venv)"
  "$python" -m venv "$venv"
fi
py=$venv/bin/python

stamp=$venv/.mmseg-dfq-setup
key=$(
  {
    cat setup.py
    printf 'torch_spec=%s\nindex_url=%s\ncheckout=%s\n' "$torch_spec" \
      "$index_url" "$(pwd -P)"
    "$py" -c 'import sys; print(sys.version)'
  } | cksum
)
if [ "${FORCE:-0}" != 1 ] && [ -f "$stamp" ] \
  && [ "$(cat "$stamp")" = "$key" ]; then
  say "$venv is set up already (FORCE=1 redoes it)"
  exit 0
fi

pip_install() { "$py" -m pip install --disable-pip-version-check "$@"; }

# torch first: a package that asks for plain torch with none installed pulls
# whichever build the index resolves to, and a later torchvision must match.
pair_works() {
  "$py" - <<'PY' >/dev/null 2>&1
import torch
import torchvision

# The operator registration is what breaks when the two do not match.
torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
PY
}
if [ -z "$torch_spec$index_url" ] && pair_works; then
  say "keeping the torch + torchvision already in $venv" \
    "(TORCH_SPEC=... installs another pair)"
else
  spec=${torch_spec:-$DEFAULT_TORCH_SPEC}
  say "installing $spec${index_url:+ from $index_url}"
  # shellcheck disable=SC2086  # the spec is a list of requirements
  pip_install $spec ${index_url:+--index-url "$index_url"}
fi

say "installing mmseg-dfq from $(pwd -P) with its test extras" \
  "(pip install -e '.[tests]')"
pip_install -e '.[tests]'

say 'checking the imports'
"$py" - <<'PY'
import mmcv
import mmengine
import mmpretrain.models  # noqa: F401  (needs a working torchvision)
import mmseg
import torch
import torchvision

import mmseg_dfq  # noqa: F401

print(
    f'[setup_env] torch {torch.__version__} (CUDA build: '
    f'{torch.version.cuda or "none"}, GPU visible: '
    f'{torch.cuda.is_available()}) | torchvision {torchvision.__version__} '
    f'| mmseg {mmseg.__version__} | mmengine {mmengine.__version__} | '
    f'mmcv {mmcv.__version__} | mmpretrain {mmpretrain.__version__}'
)
PY

printf '%s\n' "$key" >"$stamp"
say "$venv is ready"
