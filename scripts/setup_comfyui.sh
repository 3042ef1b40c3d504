#!/usr/bin/env bash
# Install a ComfyUI checkout's requirements into our venv, for test layers 2 and 3.
# ComfyUI is not on PyPI: point COMFYUI_PATH at a checkout (default ~/ComfyUI). Its code is
# never copied into this repository. torch stays the CPU build already installed; torchvision
# is the pure-Python 0.16.2 (newer PyPI builds are CUDA builds that fail to import on CPU torch).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
COMFY=${COMFYUI_PATH:-$HOME/ComfyUI}
if [ ! -d "$COMFY/comfy" ]; then
  echo "no ComfyUI checkout at $COMFY (set COMFYUI_PATH); ComfyUI layers will be SKIPPED" >&2
  exit 0
fi
stamp="$VENV/.comfyui-requirements-2"  # bump the suffix when this script installs more
if [ -f "$stamp" ] && cmp -s "$stamp" "$COMFY/requirements.txt"; then
  exit 0
fi
grep -vE '^(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$VENV/comfy-reqs.txt"
torch_version=$("$VENV/bin/python" -c "import torch; print(torch.__version__)")
echo "torch==$torch_version" > "$VENV/comfy-constraints.txt"
"$VENV/bin/pip" install -q -c "$VENV/comfy-constraints.txt" -r "$VENV/comfy-reqs.txt"
"$VENV/bin/pip" uninstall -q -y torchvision 2>/dev/null || true
"$VENV/bin/pip" install -q --no-deps torchvision==0.16.2
"$VENV/bin/pip" install -q requests
# Layer 3: the server is driven over its websocket; the plan editor through Playwright (its Python
# package only: the browser is Debian's chromium, `apt-get install chromium`; without it the browser
# test is SKIPPED loudly).
"$VENV/bin/pip" install -q "websocket-client>=1.6" "playwright==1.65.2" \
  || echo "warning: websocket-client / playwright not installed; server and browser tests will be skipped" >&2
cp "$COMFY/requirements.txt" "$stamp"
echo "ComfyUI requirements installed from $COMFY"
