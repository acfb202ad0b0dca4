"""hgan-eval: evaluates a trained model on a split, both retrieval directions.

  hgan-eval --model_dir=DIR --data_dir=TFRECORDS_DIR --split=test --output_json=FILE \
      [--checkpoint=best|latest|PATH] [--rerank_k=100] [--modes=exact,two_stage]

Writes FILE ({"t2i", "i2t", "config", "timing", ...}), FILE with .md (a Markdown table),
and, beside it, the Fig. 3 top-10 grid and the Fig. 4 word-selection map as PNG, and FILE
with .html: one self-contained page that shows why the figures are what they are (each
level alone, R1 by caption length and noun phrases, the queries that fail worst).
"""
from absl import app, flags

from hgan.cli import print_report, start

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model_dir", None, "A hgan-train model_dir.")
    flags.DEFINE_string("data_dir", None, "Output dir of hgan-prep.")
    flags.DEFINE_string("split", "test", "Split to evaluate.")
    flags.DEFINE_string("output_json", None, "Where the metrics JSON goes.")
    flags.DEFINE_string("checkpoint", "best", "best (val-selected), latest, or a path.")
    flags.DEFINE_integer("rerank_k", None, "Two-stage: gallery items re-ranked per query.")
    flags.DEFINE_list("modes", ["exact", "two_stage"], "Scoring modes to report.")
    flags.DEFINE_bool("figures", True, "Write the Fig. 3 / Fig. 4 PNGs and the HTML page.")
    flags.DEFINE_string("experiment", None, "Paper row to compare with (default: the one "
                        "hgan-train --experiment recorded in model_dir).")
    flags.DEFINE_list("stage1_weights", [], "IATV: also the two-stage R1 with stage 1's "
                      "weight in the two-stage score set to each of these (e.g. "
                      "0,0.1,0.25,0.5,1,2), stage 2's logits computed once.")
    flags.mark_flags_as_required(["model_dir", "data_dir", "output_json"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from hgan import families
    report = families.evaluate(FLAGS.model_dir, FLAGS.data_dir, FLAGS.split, FLAGS.output_json,
                               checkpoint=FLAGS.checkpoint, rerank_k=FLAGS.rerank_k,
                               modes=tuple(FLAGS.modes), figures=FLAGS.figures,
                               experiment=FLAGS.experiment,
                               stage1_weights=[float(w) for w in FLAGS.stage1_weights])
    print_report(report, FLAGS.output_json)


def run():
    define_flags()
    start(main, __doc__)


if __name__ == "__main__":
    run()
