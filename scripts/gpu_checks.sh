#!/usr/bin/env bash
# The prepared GPU checks of Plan-X: one time-boxed run on a lent CUDA machine (one H200, a few minutes),
# every output under $OUT, a summary of the RESULT lines in $OUT/summary.txt.
#
# Steps, each under `timeout` (one failure does not stop the rest), each tee'd into $OUT/<step>.log:
#   env        nvidia-smi, python / torch / CUDA / cuDNN versions, the packages the steps import
#   info       python -m planx_core info (presets, attention backends importable here)
#   attention  planx_core.wan.attention: every backend (sdpa, flash, sage, flex) and SDPA's own kernels
#              against SDPA math in float32 on the same bf16 inputs (parity), timed at the 5B's shape
#   wan_5b     benchmarks/bench_wan_5b.py: the 5B DiT step + Wan 2.2 VAE decode at 121x704x1280 against
#              ComfyUI's native Wan (issue 15, "On a GPU")
#   train_branch  benchmarks/bench_train_branch_5b.py: the `--stage branch` training step on the 5B (random
#              weights, bf16) at 480x832x81 and 704x1280x121, checkpointing on and off: s/step and peak memory
#              (issue 16; fills in the README's memory table); it stops starting steps before its time box ends
#   dit_diffusers  benchmarks/bench_dit_vs_diffusers.py at the 5B preset (when diffusers imports)
#   vae        benchmarks/bench_vae.py: the real Wan 2.2 VAE decode at 121x704x1280 against diffusers
#   seq_parallel  benchmarks/bench_sequence_parallel.py under torchrun, one rank per GPU (nccl): the 5B step
#              (6 blocks) at 27,280 tokens, sequence-parallel (issue 19); dry: 2 gloo CPU ranks, tiny shape
#   windows    benchmarks/bench_window_attention.py: windowed-local / windowed-global / full attention on the
#              5B's blocks as the video grows 1x to 16x (issue 19)
# The whole run stays inside GPU_CHECKS_BUDGET seconds (default 470, under 8 minutes): each step gets
# min(its cap, what is left), and a step with under 20 s left is skipped and says so. GPU_CHECKS_STEPS (names,
# space-separated) runs only those steps, e.g. GPU_CHECKS_STEPS="env train_branch" for the training benchmark
# alone with the whole budget.
#
# Without CUDA (or with GPU_CHECKS_DRY=1) the same steps run at small sizes (on CUDA if present, else
# CPU), so the script itself is tested anywhere:  GPU_CHECKS_DRY=1 bash scripts/gpu_checks.sh
# Environment: OUT (default out/gpu_checks), PYTHON (default: the first python with a CUDA torch, else
# one with torch, .venv first), COMFYUI_PATH (default: build/ComfyUI if present, else ~/ComfyUI: the
# device machine sees only this working tree, so carry a copy there, see benchmarks/README.md).
# Sources: benchmarks/README.md (what each benchmark measures), issue 15.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/out/gpu_checks}
mkdir -p "$OUT"
BUDGET=${GPU_CHECKS_BUDGET:-470}
START=$SECONDS
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}

# ----------------------------------------------------------------------------- python, mode, ComfyUI
pick_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  local c
  for c in .venv/bin/python python3 python; do  # a CUDA torch first
    command -v "$c" >/dev/null 2>&1 || continue
    "$c" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1 && { echo "$c"; return; }
  done
  for c in .venv/bin/python python3 python; do  # else any torch
    command -v "$c" >/dev/null 2>&1 || continue
    "$c" -c "import torch" >/dev/null 2>&1 && { echo "$c"; return; }
  done
  echo ""
}
PY=$(pick_python)
if [ -z "$PY" ]; then
  echo "gpu_checks: no python with torch found (set PYTHON); nothing can run" | tee "$OUT/summary.txt"
  exit 1
fi
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  CUDA=1
  DEVICE=cuda
else
  CUDA=0
  DEVICE=cpu
fi
if [ "${GPU_CHECKS_DRY:-0}" = "1" ] || [ "$CUDA" = "0" ]; then MODE=dry; else MODE=gpu; fi
if [ -z "${COMFYUI_PATH:-}" ] && [ -d "$ROOT/build/ComfyUI/comfy" ]; then
  export COMFYUI_PATH="$ROOT/build/ComfyUI"
fi
if [ "$MODE" = gpu ]; then
  DTYPE=bfloat16
elif [ "$DEVICE" = cuda ]; then
  DTYPE=bfloat16
else
  DTYPE=float32  # CPU bf16 matmuls are slow and not what is measured
fi

# ----------------------------------------------------------------------------- running a step
STATUS="$OUT/.status"
: >"$STATUS"
left() { echo $((BUDGET - (SECONDS - START))); }

# step NAME CAP_SECONDS COMMAND...: run under timeout, tee into $OUT/NAME.log, record its status
step() {
  local name=$1 cap=$2
  shift 2
  local remaining t0 rc secs
  remaining=$(left)
  local t=$((cap < remaining ? cap : remaining))
  echo
  echo "=================== $name (up to ${t} s; $(left) s of the budget left) ==================="
  if [ -n "${GPU_CHECKS_STEPS:-}" ] && [[ " $GPU_CHECKS_STEPS " != *" $name "* ]]; then
    echo "(not in GPU_CHECKS_STEPS)"
    echo "$name skipped (not in GPU_CHECKS_STEPS)" >>"$STATUS"
    return
  fi
  if [ "$t" -lt 20 ]; then
    echo "SKIPPED: under 20 s of the ${BUDGET} s budget left" | tee "$OUT/$name.log"
    echo "$name skipped (budget spent)" >>"$STATUS"
    return
  fi
  t0=$SECONDS
  export STEP_TIMEOUT=$t  # a step that budgets itself (train_branch) reads its time box
  timeout --kill-after=10 "$t" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  secs=$((SECONDS - t0))
  case $rc in
    0) echo "$name ok (${secs} s)" >>"$STATUS" ;;
    124 | 137) echo "$name TIMED OUT after ${t} s (partial log in $name.log)" >>"$STATUS" ;;
    *) echo "$name FAILED rc $rc (${secs} s; see $name.log)" >>"$STATUS" ;;
  esac
}

env_report() {
  echo "date $(date -u +%Y-%m-%dT%H:%M:%SZ)  host $(hostname)  mode $MODE  device $DEVICE  dtype $DTYPE  python $PY"
  if command -v git >/dev/null 2>&1 && git rev-parse HEAD >/dev/null 2>&1; then
    echo "git $(git rev-parse --short HEAD), $(git status --short | wc -l) changed/untracked paths"
  else
    echo "git: no repository here (a copy of the working tree)"
  fi
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  else
    echo "nvidia-smi: not found"
  fi
  "$PY" - <<'PYEOF'
import importlib.metadata as md
import importlib.util
import os
import platform
import sys

import torch

print(f"python {platform.python_version()} ({sys.executable})")
cuda = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, cuda available {cuda}, "
      f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'n/a'}")
if cuda:
    p = torch.cuda.get_device_properties(0)
    print(f"device 0: {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}, {p.multi_processor_count} SMs")
else:
    print("CUDA: NOT AVAILABLE here; the checks run their small (dry) variant")
print(f"COMFYUI_PATH {os.environ.get('COMFYUI_PATH', '(unset: ~/ComfyUI)')}")
wanted = ["torch", "transformers", "diffusers", "safetensors", "einops", "accelerate", "numpy", "triton",
          "flash_attn", "sageattention", "opencv-python-headless", "kornia",
          # what ComfyUI's `comfy` package imports beyond torch (0.3.64): without them bench_wan_5b runs ours alone
          "av", "torchvision", "pillow", "pyyaml", "psutil", "tokenizers", "torchsde"]
missing = []
for name in wanted:
    try:
        print(f"  {name:<24} {md.version(name)}")
    except md.PackageNotFoundError:
        module = name.replace("-", "_")
        if importlib.util.find_spec(module) is not None:
            print(f"  {name:<24} (importable, no metadata)")
        else:
            missing.append(name)
print(f"RESULT env torch {torch.__version__} cuda {torch.version.cuda} available {cuda} "
      f"missing {','.join(missing) or 'none'}")
PYEOF
}

# ----------------------------------------------------------------------------- the attention check
attention_check() {
  GPU_CHECKS_MODE=$MODE "$PY" - <<'PYEOF'
"""planx_core.wan.attention's backends against SDPA math (float32, same bf16 inputs): parity and time."""
import logging
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from planx_core.wan import attention as A

dry = os.environ["GPU_CHECKS_MODE"] == "dry"
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
dtype = torch.bfloat16
H, D = (2, 64) if dry else (24, 128)  # the 5B: 24 heads of 128
L, LT = (256, 32) if dry else (4096, 512)  # parity: video tokens, text tokens
LTIME = 512 if dry else 27280  # timing: the 5B's self-attention at 121x704x1280 (31 x 22 x 40 tokens)
sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
print(f"device {device}, bf16, heads {H} x {D}; parity at {L} (self) and {L}x{LT} (cross); timing at {LTIME}")
print(f"importable backends: {', '.join(A.available_backends())}")

fallbacks: list[str] = []


class Catch(logging.Handler):
    def emit(self, record):
        fallbacks.append(record.getMessage())


logging.getLogger("planx_core.attention").addHandler(Catch())
gen = torch.Generator(device=device).manual_seed(0)


def qkv(lq, lk):
    q = torch.randn(1, lq, H, D, generator=gen, device=device).to(dtype)  # [B, Lq, H, D]
    k = torch.randn(1, lk, H, D, generator=gen, device=device).to(dtype)  # [B, Lk, H, D]
    v = torch.randn(1, lk, H, D, generator=gen, device=device).to(dtype)
    return q, k, v


def exact(q, k, v):
    with sdpa_kernel([SDPBackend.MATH]):
        return F.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)


def timed(fn, n=5):
    fn()
    sync()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


cases = {"self": qkv(L, L), "cross": qkv(L, LT)}
refs = {name: exact(*c) for name, c in cases.items()}
big = qkv(LTIME, LTIME)
shape = f"[1, {LTIME}, {H}, {D}]"


def block_mask(lq, lk):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(lambda b, h, qi, ki: qi >= 0, B=None, H=None, Q_LEN=lq, KV_LEN=lk, device=str(device))


def run_backend(name):
    if name not in A.available_backends():
        print(f"RESULT attention {name} not installed here (calls fall back to sdpa)")
        return
    errs, path = {}, name
    try:
        for case, (q, k, v) in cases.items():
            kw = {"block_mask": block_mask(q.shape[1], k.shape[1])} if name == "flex" else {}
            before = len(fallbacks)
            out = A.attention(q, k, v, backend=name, **kw)  # [B, Lq, H, D]
            if len(fallbacks) > before:
                path = f"sdpa (fell back: {fallbacks[-1]})"
            errs[case] = (out.float() - refs[case]).abs().max().item()
    except Exception as err:  # report, go on with the next backend
        print(f"RESULT attention {name} ERROR {type(err).__name__}: {str(err)[:200]}")
        return
    if name == "flex":
        ms = "n/a (eager flex materialises the scores; not timed)"
    else:
        try:
            ms = f"{timed(lambda: A.attention(*big, backend=name)):.2f} ms at {shape}"
        except Exception as err:
            ms = f"timing failed: {type(err).__name__}: {str(err)[:120]}"
    print(f"RESULT attention {name} path {path} parity self {errs['self']:.2e} cross {errs['cross']:.2e} time {ms}")


for name in A.BACKENDS:
    run_backend(name)

# SDPA's own kernels (which one "sdpa" takes depends on torch; ComfyUI puts cuDNN first on CUDA)
kernels = ["MATH"] + (["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"] if device.type == "cuda" else [])
for kname in kernels:
    kernel = getattr(SDPBackend, kname)

    def call(q, k, v, kernel=kernel):
        with sdpa_kernel([kernel]):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

    try:
        errs = {c: (call(*qkv_).transpose(1, 2).float() - refs[c]).abs().max().item() for c, qkv_ in cases.items()}
    except Exception as err:
        print(f"RESULT attention sdpa:{kname} unsupported here: {type(err).__name__}: {str(err)[:160]}")
        continue
    ms = "n/a (the math kernel at this size is the reference's cost)"
    if kname != "MATH" or dry:
        try:
            ms = f"{timed(lambda call=call: call(*big)):.2f} ms at {shape}"
        except Exception as err:
            ms = f"timing failed: {type(err).__name__}: {str(err)[:120]}"
    print(f"RESULT attention sdpa:{kname} parity self {errs['self']:.2e} cross {errs['cross']:.2e} time {ms}")
PYEOF
}

# ----------------------------------------------------------------------------- the training benchmark
train_branch_check() {  # its own --budget-s: the step's time box less the start-up and a margin
  local budget=$((STEP_TIMEOUT - 20))
  if [ "$MODE" = gpu ]; then
    "$PY" benchmarks/bench_train_branch_5b.py --device cuda --dtype bfloat16 --repeats 3 --budget-s "$budget"
  else
    "$PY" benchmarks/bench_train_branch_5b.py --dry --device "$DEVICE" --dtype "$DTYPE" --budget-s "$budget"
  fi
}

export PY MODE DEVICE DTYPE
export -f env_report attention_check train_branch_check  # `timeout` runs programs: the functions run in `bash -c`

has_diffusers() { "$PY" -c "import diffusers" >/dev/null 2>&1; }

# ----------------------------------------------------------------------------- the steps
echo "gpu_checks: mode $MODE (device $DEVICE, $DTYPE), python $PY, budget ${BUDGET} s, outputs in $OUT"
[ "$MODE" = dry ] && echo "DRY run: small sizes; these numbers are NOT the GPU measurements"

step env 30 bash -c env_report
step info 60 "$PY" -m planx_core info
step attention 90 bash -c attention_check
if [ "$MODE" = gpu ]; then
  step wan_5b 300 "$PY" benchmarks/bench_wan_5b.py --preset wan2.2-ti2v-5b --device cuda --dtype bfloat16 \
    --video 121x704x1280 --repeats 3 --vae-repeats 2 --fp32-reference
else
  step wan_5b 300 "$PY" benchmarks/bench_wan_5b.py --device "$DEVICE" --dtype "$DTYPE" --repeats 2 --fp32-reference
fi
step train_branch 180 bash -c train_branch_check
if has_diffusers; then
  if [ "$MODE" = gpu ]; then
    step dit_diffusers 150 "$PY" benchmarks/bench_dit_vs_diffusers.py --preset wan2.2-ti2v-5b --device cuda \
      --dtype bfloat16 --repeats 3
    step vae 200 "$PY" benchmarks/bench_vae.py --preset wan2.2 --device cuda --dtype bfloat16 \
      --video 121x704x1280 --skip-encode --repeats 1
  else
    step dit_diffusers 150 "$PY" benchmarks/bench_dit_vs_diffusers.py --preset tiny --latent 2x16x16 \
      --device "$DEVICE" --dtype "$DTYPE" --repeats 2
    step vae 200 "$PY" benchmarks/bench_vae.py --preset tiny2.2 --video 5x64x64 --device "$DEVICE" \
      --dtype "$DTYPE" --skip-encode --repeats 1
  fi
else
  echo "diffusers does not import with $PY: dit_diffusers and vae (both against diffusers) skipped"
  echo "dit_diffusers skipped (diffusers not importable)" >>"$STATUS"
  echo "vae skipped (diffusers not importable)" >>"$STATUS"
fi

if [ "$MODE" = gpu ]; then  # one rank per GPU; 24 heads: 1, 2, 3, 4, 6 or 8 GPUs
  SP_ARGS="--nproc_per_node $(nvidia-smi -L | grep -c GPU) benchmarks/bench_sequence_parallel.py --device cuda --shape 5b --layers 6"
else
  SP_ARGS="--nproc_per_node 2 benchmarks/bench_sequence_parallel.py --device cpu"
fi
# shellcheck disable=SC2086  # SP_ARGS is a list of words
step seq_parallel 150 "$PY" -m torch.distributed.run $SP_ARGS --repeats 2
if [ "$MODE" = gpu ]; then  # the 5B's blocks at 8 to 128 latent frames (7,040 to 112,640 video tokens), Tw 4
  step windows 120 "$PY" benchmarks/bench_window_attention.py --device cuda --shape 5b --layers 2 --frames 8 \
    --scales 1,2,4,8,16 --repeats 2
else
  step windows 120 "$PY" benchmarks/bench_window_attention.py --device "$DEVICE" --frames 2 --scales 1,2 --repeats 1
fi

# ----------------------------------------------------------------------------- summary
{
  echo "gpu_checks summary: mode $MODE, device $DEVICE, dtype $DTYPE, $((SECONDS - START)) s of a ${BUDGET} s budget"
  [ "$MODE" = dry ] && echo "DRY run (small sizes): not the GPU measurements"
  echo "-- steps"
  cat "$STATUS"
  echo "-- results"
  for log in env info attention wan_5b train_branch dit_diffusers vae seq_parallel windows; do
    [ -f "$OUT/$log.log" ] || continue
    grep -hE '^RESULT|^attention backends importable' "$OUT/$log.log" | awk -v s="$log" '!seen[$0]++ { print "[" s "] " $0 }'
  done
} >"$OUT/summary.txt"
rm -f "$STATUS"
echo
echo "=================== $OUT/summary.txt ==================="
cat "$OUT/summary.txt"
