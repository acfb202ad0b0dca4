"""hgan-prep: checks a copy of a dataset, or converts it to sharded TFRecords and a
manifest (also ``python -m data_prep``).

    hgan-prep check --dataset=cuhk_pedes --data_dir=DIR
    hgan-prep --dataset=cuhk_pedes --data_dir=DIR --output_dir=OUT \
        [--bert=HANDLE|DIR|none] [--vocab_file=FILE] [--strict] [--images_per_shard=1000] \
        [--tagger=auto|perceptron|fallback]

``check`` says what DIR holds and whether it can produce the dataset's standard protocol
(``data_prep.check``), and writes nothing: exit status 0 when it can, 1 when it cannot.
The import runs the same check first and stops, before writing anything, when the copy
cannot be imported at all.

``--dataset`` names the layout of DIR (see ``data_prep.importers``); ``demo`` is the
CUHK-PEDES layout written by ``hgan-demo-data``. ``--bert`` (as hgan-train's, default the
paper's) or ``--vocab_file`` gives the WordPiece vocabulary the caption lengths are counted
with (manifest.json's ``caption_lengths``); ``--bert=none`` counts words only. With
``--strict`` the exit status is 1 when any record was skipped (the shards and manifest are
written all the same). ``--tagger`` picks the noun-phrase tagger (``hgan.phrases``):
``auto`` takes NLTK's perceptron when its data is installed, else the fallback lexicon; a
named tagger that is not installed is an error before anything is written. manifest.json
records both.
"""
import sys

from absl import app, flags

from data_prep import check, importers
from hgan.cli import start
from hgan.config import HGANModel
from hgan.data import phrases

FLAGS = flags.FLAGS
# writer's default, repeated: importing writer imports TensorFlow, which --help does not need
# (tests/test_writer.py keeps the two equal).
DEFAULT_IMAGES_PER_SHARD = 1000
NO_BERT = "none"


def define_flags():
    flags.DEFINE_enum("dataset", None, list(importers.LAYOUTS), "Layout of --data_dir.")
    flags.DEFINE_string("data_dir", None, "Folder of the dataset as downloaded.")
    flags.DEFINE_string("output_dir", None, "Folder for the shards and manifest.json "
                        "(not for check).")
    flags.DEFINE_bool("strict", False, "Exit with status 1 if any record was skipped.")
    flags.DEFINE_integer("images_per_shard", DEFAULT_IMAGES_PER_SHARD,
                         "About this many images per shard.", lower_bound=1)
    flags.DEFINE_enum("tagger", "auto", list(phrases.TAGGER_REQUESTS),
                      "Noun-phrase tagger: auto (perceptron if its NLTK data is installed, "
                      "else fallback), perceptron (NLTK's; its data must be installed) or "
                      "fallback (the domain lexicon). The manifest records the one used.")
    flags.DEFINE_string("bert", HGANModel.bert, "The BERT you will train with (TF-Hub handle "
                        "or SavedModel dir, as hgan-train's --bert): caption lengths are "
                        f"counted in its WordPieces. '{NO_BERT}': count words only.")
    flags.DEFINE_string("vocab_file", "", "A WordPiece vocab.txt to count caption lengths "
                        "with, instead of --bert's.")
    flags.mark_flags_as_required(["dataset", "data_dir"])


def main(argv: list[str]) -> int:
    if argv[1:] == ["check"]:
        report = check.check(FLAGS.dataset, FLAGS.data_dir)
        print(report.text())
        return 0 if report.standard else 1
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]} (the one command is check)")
    if not FLAGS.output_dir:
        raise app.UsageError("the import needs --output_dir (hgan-prep check needs none)")
    try:
        phrases.resolve_tagger(FLAGS.tagger)  # fail before anything is read or written
    except LookupError as e:
        sys.exit(f"error: --tagger={FLAGS.tagger}: {e}")  # status 1, the message on stderr
    vocab = _vocab_file()
    try:
        from data_prep import writer  # TensorFlow
        manifest = writer.write_dataset(FLAGS.dataset, FLAGS.data_dir, FLAGS.output_dir,
                                        images_per_shard=FLAGS.images_per_shard,
                                        tagger=FLAGS.tagger, vocab_file=vocab)
    except check.CopyError as e:
        sys.exit(f"error: {e}")
    return 1 if FLAGS.strict and manifest["skipped"] else 0


def _vocab_file() -> str:
    """The vocab the caption lengths are counted with ("" for words only), or exit."""
    if not FLAGS.vocab_file and FLAGS.bert == NO_BERT:
        return ""
    try:
        from hgan.data import tokenization  # TensorFlow
        return tokenization.vocab_path(FLAGS.bert, FLAGS.vocab_file)
    # A TF-Hub handle fails in many ways offline (URLError, OSError, ValueError, ...).
    except Exception as e:  # noqa: BLE001
        given = f"--vocab_file={FLAGS.vocab_file}" if FLAGS.vocab_file else f"--bert={FLAGS.bert}"
        sys.exit(f"error: {given}: cannot read its WordPiece vocabulary ({type(e).__name__}: "
                 f"{e}). Caption lengths are counted with the vocabulary you will train "
                 "with: pass --bert=DIR of that BERT (hgan-convert-bert makes one) or "
                 f"--vocab_file=vocab.txt, or --bert={NO_BERT} to count words only")


def run():
    define_flags()
    start(main, __doc__)


if __name__ == "__main__":
    run()
