#!/usr/bin/env bash
# Creates .venv and installs the pinned dependencies. Idempotent: run it again at any time.
#   bash setup.sh          runtime dependencies (requirements.txt)
#   bash setup.sh --dev    plus tests, lint and the reference implementation (requirements-dev.txt)
set -euo pipefail
cd "$(dirname "$0")"

step() { echo "==> $*"; }
fail() { echo "setup.sh: FAILED at step: $*" >&2; exit 1; }

requirements=requirements.txt
[[ "${1:-}" == "--dev" ]] && requirements=requirements-dev.txt

PYTHON=${PYTHON:-python3}
step "checking Python (need 3.10 to 3.12)"
"$PYTHON" -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 12), sys.version' \
  || fail "Python version check ($("$PYTHON" --version 2>&1)); set PYTHON=python3.11"

if [[ ! -x .venv/bin/python ]]; then
  step "creating .venv"
  "$PYTHON" -m venv .venv || fail "creating .venv (install the python3-venv package)"
fi

step "installing $requirements into .venv"
.venv/bin/python -m pip install --quiet --upgrade pip || fail "upgrading pip"
.venv/bin/python -m pip install --quiet -r "$requirements" || fail "pip install -r $requirements"

step "checking imports"
.venv/bin/python -c "import tensorflow, keras, numpy, scipy, pycocotools, cv2, matplotlib" \
  || fail "importing the installed packages"
echo "setup.sh: done (.venv ready; activate with: source .venv/bin/activate)"
