#!/usr/bin/env bash
# The README's test command: set up the environment, then run the whole suite.
# Layers 2 and 3 (ComfyUI) run when a checkout is found (COMFYUI_PATH or ~/ComfyUI) and are
# reported as SKIPPED, loudly, when not. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
bash scripts/setup_comfyui.sh || exit 1
VENV=${VENV:-.venv}
"$VENV/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests (exit 5): treating as failure, the suite must not be empty" >&2
  exit 1
fi
exit "$rc"
