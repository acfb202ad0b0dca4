r"""hgan-beam-index: builds the gallery of ``hgan-search index`` with an Apache Beam pipeline
(``RunInference`` over the export's ``encode_image``; ``hgan.serving.beam_index``).

  hgan-beam-index --savedmodel=DIR --images=FOLDER|LIST.txt --index=GALLERY_DIR \
      [--dtype=float16|float32|int8|pq] [--codebook=GALLERY_DIR] [--pq_subdim=S] [--nopq_rotation] \
      [--batch_size=32] [--unit_size=500] [--work_dir=DIR] \
      [--quantizer=FILE.faiss] [BEAM OPTIONS]
  hgan-beam-index --savedmodel=DIR --data_dir=TFRECORDS --split=test --index=... [BEAM OPTIONS]

Every argument that is not one of the flags below is one of Beam's pipeline options:
``--runner`` (default FnApiRunner, on this machine), ``--direct_num_workers=2
--direct_running_mode=multi_processing`` for two local worker processes, or
``--runner=DataflowRunner --project=... --region=... --temp_location=gs://...`` and the
rest of Dataflow's options. Re-running the same command resumes a stopped run. Needs the
package's ``beam`` extra: pip install "hgan-person-search[beam]".
"""
from __future__ import annotations

import sys

from absl import app, flags

from hgan.cli import gallery_flags, start

FLAGS = flags.FLAGS
INSTALL = ('hgan-beam-index needs Apache Beam, the package\'s "beam" extra: '
           'pip install -e ".[beam]" (or pip install "apache-beam[tfrecord]==2.77.0")')


def define_flags():
    flags.DEFINE_string("savedmodel", None, "Exported model (hgan-export); every worker must "
                        "be able to read it.")
    flags.DEFINE_string("index", None, "Gallery directory (hgan.serving.gallery), written by "
                        "this process.")
    gallery_flags.define()
    flags.DEFINE_integer("unit_size", 500, "Images per work unit of a folder or list (a "
                         "TFRecord file is one unit): what a stopped run re-encodes at most "
                         "per unit in flight.", lower_bound=1)
    flags.DEFINE_string("work_dir", None, "The plan and the shards, reachable by every worker "
                        "(gs://... on Dataflow); default INDEX/.encoding, deleted when done.")
    flags.DEFINE_string("quantizer", None, "An ann.faiss with a trained IVF quantizer "
                        "(hgan-search quantizer): the workers fill its lists, joined by "
                        "FAISS's merge_from. Without it the IVF is trained as index does.")
    flags.mark_flags_as_required(["savedmodel", "index"])


def parse(argv: list[str]) -> list[str]:
    """absl's flags of this command; every other argument is left for Beam."""
    try:
        return FLAGS(argv, known_only=True)
    except flags.Error as e:
        sys.stderr.write(f"FATAL Flags parsing error: {e}\nPass --help for usage.\n")
        sys.exit(1)


def main(argv):
    if bool(FLAGS.images) == bool(FLAGS.data_dir):
        raise app.UsageError("hgan-beam-index needs exactly one of --images or --data_dir")
    try:
        from hgan.serving import beam_index
    except ImportError as e:
        if "apache_beam" not in str(e):
            raise
        sys.exit(f"error: {INSTALL}")
    try:
        beam_index.pipeline_options(argv[1:])  # an unknown argument is refused before any work
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    beam_index.build_index(FLAGS.savedmodel, FLAGS.index, FLAGS.images, FLAGS.data_dir,
                           FLAGS.split, work_dir=FLAGS.work_dir, unit_size=FLAGS.unit_size,
                           batch_size=FLAGS.batch_size, dtype=FLAGS.dtype,
                           quantizer=FLAGS.quantizer, beam_args=argv[1:],
                           codebook=FLAGS.codebook, pq_subdim=FLAGS.pq_subdim,
                           pq_rotation=FLAGS.pq_rotation)
    return 0


def run():
    define_flags()
    start(main, __doc__, flags_parser=parse)


if __name__ == "__main__":
    run()
