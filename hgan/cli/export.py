"""hgan-export: writes a trained model (either family) as a SavedModel that serves raw
sentences and image bytes (the signatures: ``hgan.serving.savedmodel``).

  hgan-export --model_dir=DIR --output_dir=SAVEDMODEL_DIR [--checkpoint=best]
"""
from __future__ import annotations

from absl import app, flags

from hgan.cli import start

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model_dir", None, "A hgan-train model_dir.")
    flags.DEFINE_string("output_dir", None, "Where the SavedModel goes.")
    flags.DEFINE_string("checkpoint", "best", "best (val-selected), latest, or a path.")
    flags.mark_flags_as_required(["model_dir", "output_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from hgan import families
    out = families.export(FLAGS.model_dir, FLAGS.output_dir, FLAGS.checkpoint)
    print(f"SavedModel written to {out}")


def run():
    define_flags()
    start(main, __doc__)


if __name__ == "__main__":
    run()
