"""Converts one dataset to sharded TFRecords and a manifest.

    python -m data_prep --dataset=cuhk_pedes --data_dir=DIR --output_dir=OUT \
        [--strict] [--images_per_shard=1000]

``--dataset`` names the layout of DIR (see ``data_prep.importers``); ``demo`` is the
CUHK-PEDES layout written by ``python -m data_prep.demo``. With ``--strict`` the exit status
is 1 when any record was skipped (the shards and manifest are written all the same).
"""
from absl import app, flags

from data_prep import importers, writer

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", None, list(importers.LAYOUTS), "Layout of --data_dir.")
flags.DEFINE_string("data_dir", None, "Folder of the dataset as downloaded.")
flags.DEFINE_string("output_dir", None, "Folder for the shards and manifest.json.")
flags.DEFINE_bool("strict", False, "Exit with status 1 if any record was skipped.")
flags.DEFINE_integer("images_per_shard", writer.DEFAULT_IMAGES_PER_SHARD,
                     "About this many images per shard.", lower_bound=1)
flags.mark_flags_as_required(["dataset", "data_dir", "output_dir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    manifest = writer.write_dataset(FLAGS.dataset, FLAGS.data_dir, FLAGS.output_dir,
                                    images_per_shard=FLAGS.images_per_shard)
    return 1 if FLAGS.strict and manifest["skipped"] else 0


if __name__ == "__main__":
    app.run(main)
