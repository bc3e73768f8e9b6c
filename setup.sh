#!/usr/bin/env bash
# Creates .venv and installs the pinned dependencies. Idempotent: run it again at any time.
#   bash setup.sh          runtime dependencies (requirements.txt)
#   bash setup.sh --dev    plus tests, lint and the reference implementation (requirements-dev.txt)
set -euo pipefail
cd "$(dirname "$0")"

step() { echo "==> $*"; }
fail() { echo "setup.sh: FAILED at step: $*" >&2; exit 1; }

case "${1:-}" in
  "") requirements=requirements.txt ;;
  --dev) requirements=requirements-dev.txt ;;
  *) fail "reading arguments: unknown argument '$1' (use no argument or --dev)" ;;
esac

PYTHON=${PYTHON:-python3}
supported='import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 12), sys.version'
step "checking Python (need 3.10 to 3.12)"
"$PYTHON" -c "$supported" || fail "Python version check ($("$PYTHON" --version 2>&1)); set PYTHON=python3.11"

if ! .venv/bin/python -c "$supported" 2>/dev/null; then
  step "creating .venv"
  "$PYTHON" -m venv --clear .venv || fail "creating .venv (install the python3-venv package)"
fi

step "installing $requirements into .venv"
.venv/bin/python -m pip install --quiet --upgrade pip || fail "upgrading pip"
.venv/bin/python -m pip install --quiet -r "$requirements" || fail "pip install -r $requirements"

step "checking imports"
.venv/bin/python -c "import tensorflow, keras, numpy, scipy, pycocotools, cv2, matplotlib, PIL" \
  || fail "importing the installed packages"
if [[ $requirements == requirements-dev.txt ]]; then
  step "checking the dev tools"
  .venv/bin/python -c "import pytest, torch, transformers, jax" && .venv/bin/ruff --version >/dev/null \
    && .venv/bin/hadolint --version >/dev/null || fail "checking the dev tools"
fi
echo "setup.sh: done (.venv ready; activate with: source .venv/bin/activate)"
