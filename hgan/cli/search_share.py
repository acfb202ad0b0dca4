"""hgan-search-share: how often ``hgan-search query`` ranks a caption's own identity first,
through the exported SavedModel and a search index, as a user runs it.

  hgan-search-share --savedmodel=DIR --data_dir=TFRECORDS [--split=test]

Indexes the split's images (``hgan.serving.searcher.build_index``), queries every caption
of the split (``Searcher.query``, top 1) and prints the share whose top result shows the
caption's identity, with chance (1 / identities) beside it.
"""
import os
import tempfile

from absl import app, flags

from hgan.cli import start

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("savedmodel", None, "Exported model (hgan-export).")
    flags.DEFINE_string("data_dir", None, "Output dir of hgan-prep.")
    flags.DEFINE_string("split", "test", "Split whose images are indexed and captions asked.")
    flags.DEFINE_integer("limit", 0, "Ask only the first N captions (0 = all).")
    flags.mark_flags_as_required(["savedmodel", "data_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from hgan.data import pipeline
    from hgan.serving import searcher

    examples = pipeline.split_examples(FLAGS.data_dir, FLAGS.split)
    identity = {e["path"].numpy().decode(): int(e["label"]) for e in examples}
    captions = [(c.decode(), int(e["label"])) for e in examples
                for c in e["captions"].numpy()]
    if FLAGS.limit:
        captions = captions[:FLAGS.limit]
    with tempfile.TemporaryDirectory() as tmp:
        index = os.path.join(tmp, "gallery")
        searcher.build_index(FLAGS.savedmodel, index, data_dir=FLAGS.data_dir,
                             split=FLAGS.split, log=lambda _: None)
        hits = 0
        engine = searcher.Searcher(FLAGS.savedmodel, index)
        for n, (caption, label) in enumerate(captions, 1):
            top = engine.query(caption, top_k=1)[0]
            hits += identity[top["path"]] == label
            if n % 50 == 0:
                print(f"{n}/{len(captions)} queries, {100 * hits / n:.1f}% first", flush=True)
    ids = len(set(identity.values()))
    print(f"search: the caption's identity ranked first for {hits}/{len(captions)} captions "
          f"({100 * hits / len(captions):.1f}%; chance {100 / ids:.1f}%)")


def run():
    define_flags()
    start(main, __doc__)


if __name__ == "__main__":
    run()
