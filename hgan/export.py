"""Exports a trained model (either family) as a SavedModel that serves raw sentences and
image bytes: HGAN's signatures are ``hgan.serving.hgan_module``'s, IATV's
``hgan.serving.iatv_module``'s.

  python -m hgan.export --model_dir=DIR --output_dir=SAVEDMODEL_DIR [--checkpoint=best]
"""
from __future__ import annotations

import sys

from absl import app, flags

from hgan import families

FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_string("model_dir", None, "A train.py model_dir.")
    flags.DEFINE_string("output_dir", None, "Where the SavedModel goes.")
    flags.DEFINE_string("checkpoint", "best", "best (val-selected), latest, or a path.")
    flags.mark_flags_as_required(["model_dir", "output_dir"])


def main(argv):
    del argv
    out = families.export(FLAGS.model_dir, FLAGS.output_dir, FLAGS.checkpoint)
    print(f"SavedModel written to {out}")


if __name__ == "__main__":
    _define_flags()
    app.run(main, argv=sys.argv)
