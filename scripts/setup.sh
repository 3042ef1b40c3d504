#!/usr/bin/env bash
# Create (or reuse) a virtual environment with the CPU build of torch installed first, then
# this package with its development extras. Idempotent; VENV overrides the location.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# torch first: a plain `torch` requirement would otherwise pull several GB of CUDA packages.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "$VENV/bin/pip" install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
"$VENV/bin/pip" install -q -e ".[dev]"
# torchvision, for the tests that compare with transformers' image processors: PyPI's builds are CUDA builds
# that fail to import beside the CPU torch, so the pure-Python 0.16.2 (its compiled ops are never used).
if ! "$VENV/bin/python" -c "import torchvision" 2>/dev/null; then
  "$VENV/bin/pip" install -q --no-deps "torchvision==0.16.2"
fi
echo "environment ready: $VENV"
