#!/usr/bin/env bash
# Set up litseg in ./.venv (idempotent: a second run only checks).
# torch / torchvision are pinned in pyproject.toml; sam2 is a source package that needs torch at
# build time, so it is installed afterwards without build isolation and without its CUDA extension.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if ! .venv/bin/python -c "import litseg, lit_modules, torch, lightning" 2>/dev/null || [ ! -x .venv/bin/ruff ]; then
    .venv/bin/pip install --quiet -e '.[test]'
fi
if ! .venv/bin/python -c "import sam2" 2>/dev/null; then
    SAM2_BUILD_CUDA=0 .venv/bin/pip install --quiet --no-build-isolation sam2==1.1.0
fi
