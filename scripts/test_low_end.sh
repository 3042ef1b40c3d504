#!/usr/bin/env bash
# The lower end of the supported transformers range (pyproject: >= 4.50.3): a second, small venv with
# transformers 4.50.3 runs the tests of everything that touches transformers (text encoder, planner, TA-Tok,
# the semantic encoder). The main suite (scripts/test.sh) runs the upper end.
set -euo pipefail
cd "$(dirname "$0")/.."
LO=${VENV_LO:-.venv-lo}
PY=${PYTHON:-python3}
if [ ! -x "$LO/bin/python" ]; then
  "$PY" -m venv "$LO"
fi
if ! "$LO/bin/python" -c "import transformers, sys; sys.exit(transformers.__version__ != '4.50.3')" 2>/dev/null; then
  "$LO/bin/pip" install -q "torch==${TORCH_VERSION:-2.13.0}"
  "$LO/bin/pip" install -q "transformers==4.50.3" "einops>=0.7" "safetensors>=0.4.2" "kornia>=0.7" \
    "opencv-python-headless>=4.8" "numpy>=1.25" "tqdm>=4.60" "pytest>=8" pillow "ftfy>=6" "sentencepiece>=0.2"
  "$LO/bin/pip" install -q --no-deps "torchvision==0.16.2"
fi
"$LO/bin/python" -c "import transformers; print('transformers', transformers.__version__)"
"$LO/bin/python" -m pytest -q -p no:cacheprovider tests/test_text_encoder.py tests/test_text_encoder_files.py \
  tests/test_planner.py tests/test_planner_tar.py tests/test_tokenizer.py tests/test_semantic_encoder.py "$@"
