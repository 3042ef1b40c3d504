#!/usr/bin/env bash
# Train the whole embedded tiny Plan-X stack in the shipped model's order, then assemble and evaluate it.
#
#   bash scripts/train_tiny.sh                 # full step counts (a GPU: minutes; this 2-core CPU: about a day)
#   SCALE=0.002 EVAL_CLIPS=2 bash scripts/train_tiny.sh   # a smoke run: every stage a few steps, small pools
#
# The stages and settings are those of planx_core/embedded/MODEL_CARD.md (vae, decoder, tatok, planner, dit,
# e2e, then the renderer fine-tune on ground-truth plans and the planner fine-tunes, the last eight with keyframe
# cues, the last five of them with move rows), with the step counts the shipped runs ended at. Every stage resumes
# when run again (the same command), so a stopped script is rerun.
# Environment: RUNS (run folders and the bundle, default runs/tiny), SCALE (share of every step count,
# default 1), DEVICE (auto, cpu or cuda; default auto), THREADS (torch CPU threads, default 0 = all),
# PY (python, default .venv/bin/python), EVAL_CLIPS (held-out clips of the final evaluation, default 32).
# The result is "$RUNS/bundle" (pass it as --bundle; copy it over planx_core/embedded to ship it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs/tiny}
SCALE=${SCALE:-1}
DEVICE=${DEVICE:-auto}
THREADS=${THREADS:-0}
EVAL_CLIPS=${EVAL_CLIPS:-32}
mkdir -p "$RUNS"

steps() {  # the step count scaled, at least 2
  awk -v n="$1" -v s="$SCALE" 'BEGIN { v = int(n * s + 0.5); print (v < 2 ? 2 : v) }'
}
small() {  # a pool or clip count: scaled in a smoke run (SCALE x 10, at most 1), never below the floor $2
  awk -v n="$1" -v f="$2" -v s="$SCALE" 'BEGIN { k = s * 10; if (k > 1) k = 1; v = int(n * k + 0.5); print (v < f ? f : v) }'
}
train() {  # train STAGE OUT STEPS [options...]
  local stage=$1 out=$2 n=$3
  shift 3
  echo "== $stage -> $RUNS/$out ($n steps)"
  "$PY" -m planx_core train --stage "$stage" --out "$RUNS/$out" --steps "$n" --device "$DEVICE" \
    --threads "$THREADS" --no-progress --eval-clips "$(small 8 2)" "$@"
}
warm=$(steps 20)  # warm-up of the fine-tunes (10-50 in the shipped runs)

train vae vae "$(steps 3806)" --batch 8 --lr 1e-3 --vae-frames 5 --stats-clips "$(small 64 4)"
train vae vae_dec "$(steps 754)" --batch 8 --lr 5e-4 --warmup "$warm" --init-from "$RUNS/vae" \
  --vae-decoder-only --vae-frames 17 --vae-crop 32
train tatok tatok "$(steps 450)" --batch 4
train planner planner "$(steps 5764)" --batch 8 --tatok "$RUNS/tatok" --eval-decode 2
train dit dit "$(steps 5483)" --batch 8 --lr 1e-3 --switch "$(steps 1500)" --first-frame 0.5 \
  --vae "$RUNS/vae" --tatok "$RUNS/tatok" --pool "$(small 2048 16)"
train e2e e2e "$(steps 150)" --batch 8 --lr 1e-4 --warmup "$warm" --switch 0 --vae "$RUNS/vae" \
  --tatok "$RUNS/tatok" --init-from "$RUNS/dit" --planner "$RUNS/planner" --pool "$(small 128 8)"

echo "== assemble $RUNS/bundle0 (planner, decoder, e2e DiT)"
"$PY" -m planx_core assemble --planner "$RUNS/planner" --vae "$RUNS/vae_dec" --dit "$RUNS/e2e" \
  --no-e2e "$RUNS/dit" --out "$RUNS/bundle0" --text-scale 1

# The renderer on ground-truth plans from the e2e DiT, cooled and averaged; the planner on its moving cells,
# both orders of a scene and part of its own draws (the shipped recipe; the card says why).
train dit ft_cool "$(steps 600)" --batch 8 --lr 3e-4 --warmup "$warm" --cooldown "$(steps 600)" --ema 0.99 \
  --switch 0 --first-frame 0.5 --vae "$RUNS/bundle0" --tatok "$RUNS/bundle0" --init-from "$RUNS/bundle0" \
  --pool "$(small 2048 16)"
finetune() {  # finetune OUT STEPS COOLDOWN FROM [options...]: a planner fine-tune with the shipped recipe
  local out=$1 n=$2 cool=$3 from=$4
  shift 4
  train planner "$out" "$n" --batch 8 --lr 3e-4 --warmup "$warm" --cooldown "$cool" --ema 0.99 --init-from "$from" \
    --tatok "$RUNS/bundle0" --motion-weight 10 --order-pairs 0.5 --self-feed 0.3 "$@"
}
finetune planner_ft "$(steps 1500)" "$(steps 800)" "$RUNS/bundle0"
# Then keyframe cues, three times 2000 steps with the same recipe (the shipped first run had cues of their own
# length, an option that no longer exists; the card says why; all runs here take 24 ids), the last cues-only.
from=planner_ft
for cue in planner_cue planner_cue24 planner_cue24co; do
  only=()
  [ "$cue" = planner_cue24co ] && only=(--cues-only)
  finetune "$cue" "$(steps 2000)" "$(steps 800)" "$RUNS/$from" --keyframe-cues 24 ${only[@]+"${only[@]}"}
  from=$cue
done
# Then move rows (a word per object before each keyframe's cells), 1200 steps, and four rounds of 800 with
# binding pairs (two objects, one start, each object's actions given to the other), each round a new --seed's
# batches.
rows=(--keyframe-cues 24 --cues-only --move-rows 10)
finetune planner_mr2 "$(steps 1200)" "$(steps 600)" "$RUNS/$from" "${rows[@]}"
from=planner_mr2
seed=0
for out in planner_mrD planner_mrD2 planner_mrD3 planner_mrD4; do
  finetune "$out" "$(steps 800)" "$(steps 400)" "$RUNS/$from" "${rows[@]}" --swap-pairs 0.25 --seed "$seed"
  from=$out
  seed=$((seed + 1))
done

echo "== assemble $RUNS/bundle"
"$PY" -m planx_core assemble --planner "$RUNS/$from" --vae "$RUNS/vae_dec" --dit "$RUNS/ft_cool" \
  --no-e2e "$RUNS/dit" --out "$RUNS/bundle" --text-scale 1 --plan-scale 3 --t2v-temperature 0.5
echo "== evaluate $RUNS/bundle"
"$PY" -m planx_core.eval --bundle "$RUNS/bundle" --rows full,text_only,no_rope,gt_plan \
  --clips "$EVAL_CLIPS" --pairs "$(small 12 2)" --out "$RUNS/eval_report"
echo "done: $RUNS/bundle, its table in $RUNS/eval_report/report.md"
