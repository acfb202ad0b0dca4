"""Trains HGAN Table 3's ladder on a data set over several seeds and prints the table.

  python scripts/ladder.py --data_dir=demo_out/tfrecords --bert=demo_out/bert \
      --out_dir=demo_out/ladder [--config=demo] [--seeds=0,1,2] [--rows=all] [--set=...]

Rows (Table 3, each on top of the one before): "L_ide + L_pair" (no BERT: trainable
word embeddings, sentence level only), "+ BERT", "+ word", "+ phrase" (the full model);
"+phrase,s=1" (on request) is the full model with Algorithm 1's noise scale as printed.
Every (row, seed) is a ``train.py`` run in OUT_DIR/ROW/seedN (re-running resumes or skips
finished runs), evaluated by ``eval.py`` on --split with the val-selected checkpoint. The
table gives mean ± std over the seeds of the fused score's R1 / mAP both ways and of each
level ranked alone; it is written to OUT_DIR/ladder.md and ladder.json.
"""
import json
import os
import subprocess
import sys

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hgan import experiments  # noqa: E402

# Table 3's rows as hgan/experiments.py has them (scripts/experiments.py runs any row; this
# script adds the per-level columns of the ladder).
ROWS = {
    **{key: list(experiments.get(f"hgan/table3/{key}").overrides)
       for key in ("L_ide+L_pair", "+BERT", "+word", "+phrase")},
    # Not a Table 3 row: the full model with Algorithm 1's noise as printed (gumbel_scale 1)
    # where the preset says otherwise, to show what the scale does.
    "+phrase,s=1": ["gumbel_scale=1"],
}
TABLE3 = ["L_ide+L_pair", "+BERT", "+word", "+phrase"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Output dir of data_prep.")
flags.DEFINE_string("bert", None, "BERT handle or SavedModel dir.")
flags.DEFINE_string("out_dir", None, "Where the runs and the table go.")
flags.DEFINE_string("config", "demo", "train.py preset.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (config.train.seed).")
flags.DEFINE_list("rows", TABLE3, f"Rows to run, of {list(ROWS)}.")
flags.DEFINE_multi_string("set", [], "Extra overrides for every row.")
flags.DEFINE_string("split", "test", "Split the table reports.")
flags.DEFINE_bool("report_only", False, "Write the table from the runs already evaluated; "
                  "train nothing (a missing run is left out and the seeds column says so).")
flags.mark_flags_as_required(["data_dir", "out_dir"])


def _run(args):
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, cwd=ROOT)


def _one(row: str, seed: str) -> dict:
    name = row.replace("+", "plus_").replace(",", "_").replace("=", "")
    model_dir = os.path.join(FLAGS.out_dir, name, f"seed{seed}")
    result = os.path.join(model_dir, f"{FLAGS.split}.json")
    if not os.path.exists(result) and FLAGS.report_only:
        return None
    if not os.path.exists(result):
        overrides = [f"--set={o}" for o in ROWS[row] + list(FLAGS.set) + [f"seed={seed}"]]
        train = [sys.executable, "train.py", f"--config={FLAGS.config}",
                 f"--data_dir={FLAGS.data_dir}", f"--model_dir={model_dir}", *overrides]
        if FLAGS.bert:
            train.append(f"--bert={FLAGS.bert}")
        _run(train)
        _run([sys.executable, "eval.py", f"--model_dir={model_dir}",
              f"--data_dir={FLAGS.data_dir}", f"--split={FLAGS.split}",
              f"--output_json={result}", "--modes=exact", "--figures=false"])
    with open(result) as f:
        report = json.load(f)
    out = {"t2i_R1": report["exact"]["t2i"]["R1"], "t2i_mAP": report["exact"]["t2i"]["mAP"],
           "i2t_R1": report["exact"]["i2t"]["R1"], "i2t_mAP": report["exact"]["i2t"]["mAP"]}
    for level, m in report.get("levels_exact", {}).items():
        out[f"{level}_t2i_R1"] = m["t2i"]["R1"]
    return out


def _cell(values):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.rows) - set(ROWS))
    if unknown:
        raise app.UsageError(f"unknown rows {unknown}; choose from {list(ROWS)}")
    results = {row: {seed: _one(row, seed) for seed in FLAGS.seeds} for row in FLAGS.rows}
    results = {row: {s: r for s, r in runs.items() if r is not None}
               for row, runs in results.items()}
    columns = ["t2i_R1", "t2i_mAP", "i2t_R1", "i2t_mAP", "sentence_t2i_R1", "word_t2i_R1",
               "phrase_t2i_R1"]
    lines = [f"Table 3 ladder, {FLAGS.split} split of {FLAGS.data_dir}, --config={FLAGS.config}"
             f" {' '.join(FLAGS.set)}; mean ± std over seeds {','.join(FLAGS.seeds)}; "
             "checkpoint: best val text-to-image R1 of the fused score.", "",
             "| row | seeds | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for row, runs in results.items():
        lines.append(f"| {row} | {','.join(runs) or '–'} | " + " | ".join(
            _cell([r.get(c) for r in runs.values()]) for c in columns) + " |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    with open(os.path.join(FLAGS.out_dir, "ladder.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(FLAGS.out_dir, "ladder.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    app.run(main)
