"""hgan-experiments: runs named paper rows (``hgan.config.experiments``) over seeds and
writes one table.

  hgan-experiments --experiments=hgan/table3/+BERT,hgan/table3/+phrase \
      --seeds=0,1,2 --config=demo --data_dir=demo_out/tfrecords --bert=demo_out/bert \
      --out_dir=runs/seeds [--set=...] [--split=test] [--levels] [--report_only] [--list]

Every (row, seed) is a ``hgan-train --experiment=ROW --set=train.seed=S`` run in
OUT_DIR/ROW/seedS (re-running resumes unfinished runs and skips evaluated ones), evaluated
by ``hgan-eval`` on --split with the checkpoint hgan-train selected on the val split. The
table has, per row, mean ± std over the seeds of R1 / R5 / R10 / mAP both ways in the mode
the paper's figures correspond to (and where the data has them AP@50 of class queries,
the papers' figure, AP@50 per sentence and class Rank-1), the paper's text-to-image
headline figure beside it, and under it the selection rule, the seeds and the data.
``--levels`` adds HGAN's levels ranked alone (sentence / word / phrase text-to-image R1 of
the exact scores). Written to OUT_DIR/table.md, table.csv and table.json.
"""
import csv
import json
import os
import subprocess
import sys

import numpy as np
from absl import app, flags

from hgan.cli import start
from hgan.config import experiments
from hgan.config.experiments import LEVELS

COLUMNS = [("t2i", "R1"), ("t2i", "R5"), ("t2i", "R10"), ("t2i", "mAP"),
           ("t2i", "class_AP@50"), ("t2i", "AP@50"), ("i2t", "R1"), ("i2t", "mAP"),
           ("i2t", "class_R1")]
# --levels: each HGAN level ranked alone (the exact scores of that level only).
LEVEL_COLUMNS = [(level, "R1") for level in LEVELS]

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_list("experiments", [], "Rows of hgan.config.experiments (see --list).")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (train.seed).")
    flags.DEFINE_string("config", "demo", "hgan-train preset.")
    flags.DEFINE_string("data_dir", None, "Output dir of hgan-prep.")
    flags.DEFINE_string("bert", None, "BERT handle or SavedModel dir.")
    flags.DEFINE_string("out_dir", None, "Where the runs and the table go.")
    flags.DEFINE_multi_string("set", [], "Extra overrides for every run (after the row's).")
    flags.DEFINE_string("split", "test", "Split the table reports.")
    flags.DEFINE_bool("levels", False, "Add each HGAN level's text-to-image R1 ranked alone "
                      "(sentence / word / phrase).")
    flags.DEFINE_bool("report_only", False, "Write the table from the runs already evaluated.")
    flags.DEFINE_bool("list", False, "Print every experiment's name and stop.")


def _run(args):
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def run_dir_of(name: str, seed: str) -> str:
    return os.path.join(FLAGS.out_dir, name.replace("/", "_").replace("+", "plus_")
                        .replace("=", ""), f"seed{seed}")


def one(name: str, seed: str):
    """The hgan-eval report of (row, seed), training and evaluating it first if needed;
    None with --report_only when it has not been evaluated."""
    model_dir = run_dir_of(name, seed)
    result = os.path.join(model_dir, f"{FLAGS.split}.json")
    if not os.path.exists(result):
        if FLAGS.report_only:
            return None
        train = [sys.executable, "-m", "hgan.cli.train", f"--experiment={name}",
                 f"--config={FLAGS.config}", f"--data_dir={FLAGS.data_dir}",
                 f"--model_dir={model_dir}", *[f"--set={o}" for o in FLAGS.set],
                 f"--set=train.seed={seed}"]
        if FLAGS.bert:
            train.append(f"--bert={FLAGS.bert}")
        _run(train)
        _run([sys.executable, "-m", "hgan.cli.eval", f"--model_dir={model_dir}",
              f"--data_dir={FLAGS.data_dir}", f"--split={FLAGS.split}",
              f"--output_json={result}", "--figures=false"])
    with open(result) as f:
        report = json.load(f)
    from hgan.training.run_dir import BEST_FILE  # TensorFlow: not for --help
    best = os.path.join(model_dir, BEST_FILE)
    if os.path.exists(best):
        with open(best) as f:
            report["_best"] = json.load(f)
    return report


def cell(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def summarise(results: dict, levels: bool = False) -> tuple[list[dict], list[tuple]]:
    """(rows of the table, the columns that have a value anywhere)."""
    rows = []
    columns = COLUMNS + (LEVEL_COLUMNS if levels else [])
    for name, runs in results.items():
        e = experiments.get(name)
        values = {c: [r.get(e.mode, {}).get(c[0], {}).get(c[1]) for r in runs.values()]
                  for c in COLUMNS}
        for c in columns[len(COLUMNS):]:
            values[c] = [r.get("levels_exact", {}).get(c[0], {}).get("t2i", {}).get(c[1])
                         for r in runs.values()]
        rule = sorted({r["_best"].get("selected_by", "?") if "_best" in r
                       else "last checkpoint (no validation)" for r in runs.values()})
        rows.append({"experiment": name, "mode": e.mode, "seeds": list(runs),
                     "values": values, "paper": e.paper, "selected_by": rule})
    used = [c for c in columns if any(v is not None for r in rows for v in r["values"][c])]
    return rows, used


def headline(paper: dict) -> str:
    for direction, metric in (("t2i", "R1"), ("t2i", "class_AP@50"), ("t2i", "AP@50"),
                              ("i2t", "class_R1")):
        if metric in paper.get(direction, {}):
            return f"{direction} {metric} {paper[direction][metric]:g}"
    return "–"


def _head(column: tuple) -> str:
    if column in LEVEL_COLUMNS:
        return f"{column[0]} t2i {column[1]}"
    # CUB / Flowers: the papers' AP@50 is the class query's; the per-sentence one is ours.
    return {("t2i", "AP@50"): "t2i AP@50 per sentence",
            ("t2i", "class_AP@50"): "t2i AP@50 (class queries)"}.get(column, " ".join(column))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.list:
        for name, e in experiments.EXPERIMENTS.items():
            print(f"{name:40s} {e.dataset:10s} {e.description}")
        return
    if not (FLAGS.experiments and FLAGS.data_dir and FLAGS.out_dir):
        raise app.UsageError("--experiments, --data_dir and --out_dir are required")
    for name in FLAGS.experiments:
        experiments.get(name)  # every name checked before anything runs
    results = {name: {s: one(name, s) for s in FLAGS.seeds} for name in FLAGS.experiments}
    results = {n: {s: r for s, r in runs.items() if r is not None} for n, runs in results.items()}
    rows, used = summarise(results, FLAGS.levels)
    head = [_head(c) for c in used]
    lines = ["| experiment | mode | seeds | " + " | ".join(head) + " | paper |",
             "|---|---|---|" + "---|" * (len(head) + 1)]
    for r in rows:
        lines.append(f"| `{r['experiment']}` | {r['mode']} | {','.join(r['seeds']) or '–'} | "
                     + " | ".join(cell(r["values"][c]) for c in used)
                     + f" | {headline(r['paper'])} |")
    rules = sorted({rule for r in rows for rule in r["selected_by"]})
    manifest = os.path.join(FLAGS.data_dir, "manifest.json")
    dataset = json.load(open(manifest)).get("dataset", "?") if os.path.exists(manifest) else "?"
    lines += ["", f"{FLAGS.split} split of {FLAGS.data_dir} ({dataset}); preset "
              f"--config={FLAGS.config} {' '.join(FLAGS.set)}; mean ± std (population) over "
              f"seeds {','.join(FLAGS.seeds)}. Checkpoint: the best on the val split by "
              f"{', '.join(rules)} (best.json); the {FLAGS.split} split never chose anything. "
              "The paper column is the paper's figure for its own dataset."]
    table = "\n".join(lines)
    print(table)
    os.makedirs(FLAGS.out_dir, exist_ok=True)
    with open(os.path.join(FLAGS.out_dir, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(FLAGS.out_dir, "table.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["experiment", "mode", "seeds"] + [f"{d}_{m}_{s}" for d, m in used
                                                      for s in ("mean", "std")]
                   + ["selected_by"])
        for r in rows:
            stats = []
            for c in used:
                v = [x for x in r["values"][c] if x is not None]
                stats += [f"{np.mean(v):.4f}", f"{np.std(v):.4f}"] if v else ["", ""]
            w.writerow([r["experiment"], r["mode"], " ".join(r["seeds"])] + stats
                       + [" ".join(r["selected_by"])])
    with open(os.path.join(FLAGS.out_dir, "table.json"), "w") as f:
        rows = [{**r, "values": {f"{d}_{m}": v for (d, m), v in r["values"].items()}}
                for r in rows]
        json.dump({"rows": rows, "split": FLAGS.split, "config": FLAGS.config,
                   "set": FLAGS.set, "seeds": FLAGS.seeds}, f, indent=1)


def run():
    define_flags()
    start(main, __doc__)


if __name__ == "__main__":
    run()
