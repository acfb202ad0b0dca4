"""hgan-diagnose: prints why an HGAN model_dir does or does not learn
(``hgan.evaluation.diagnostics``).

  hgan-diagnose --model_dir=DIR --data_dir=TFRECORDS [--split=val] [--checkpoint=best]

Per level (sentence, word, phrase, fused): R1 both ways, the hub share of image-to-text
top-1s; the spread of the sentence-level embeddings of both modalities (and of the images
with BatchNorm on batch statistics: stale moving statistics show as a gap); the words the
word level's regions select (content / punctuation shares, Fig. 4 as numbers); how much of
the noiseless top-k the training-time Gumbel top-k keeps; the gradient norms of one
training batch, per loss term and for the largest variables.
"""
import json

from absl import app, flags

from hgan.cli import start

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model_dir", None, "A hgan-train model_dir (HGAN).")
    flags.DEFINE_string("data_dir", None, "Output dir of hgan-prep.")
    flags.DEFINE_string("split", "val", "Split to read.")
    flags.DEFINE_string("checkpoint", "best", "best, latest, or a path.")
    flags.DEFINE_string("output_json", None, "Also write the numbers here.")
    flags.mark_flags_as_required(["model_dir", "data_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from hgan.data import pipeline
    from hgan.evaluation import diagnostics, hgan_report, hgan_scoring, metrics
    from hgan.modeling.hgan.model import load_model

    model, config, path = load_model(FLAGS.model_dir, FLAGS.checkpoint)
    texts, images = hgan_scoring.encode_split(model, FLAGS.data_dir, config, FLAGS.split)
    scores = hgan_scoring.Scorer(model).exact(texts, images)
    out = {"checkpoint": path, "split": FLAGS.split, "levels": {}}
    for level, m in scores.items():
        t2i = metrics.retrieval_metrics(m, texts["label"], images["label"])
        i2t = metrics.retrieval_metrics(m.T, images["label"], texts["label"])
        out["levels"][level] = {"t2i_R1": t2i["R1"], "i2t_R1": i2t["R1"],
                                "t2i_mAP": t2i["mAP"], **diagnostics.hubness(m.T)}
    out["spread"] = {"image_global": diagnostics.spread(images["global"]),
                     "text_global": diagnostics.spread(texts["global"])}
    # The same images through the image tower with BatchNorm on the batch's own statistics:
    # a much lower mean cosine than above says the moving statistics are stale.
    pixels = next(iter(pipeline.gallery_dataset(FLAGS.data_dir, config, FLAGS.split,
                                            batch_size=256)))["image"]
    out["spread"]["image_global_batch_stats"] = diagnostics.spread(
        model.encode_image(pixels, training=True)["global"].numpy())
    if model.word_head is not None:
        out["selection"] = diagnostics.selection_words(model.word_head, texts, images,
                                                       hgan_report.word_keys_of(config))
        out["gumbel"] = diagnostics.gumbel_overlap(model.word_head, texts, images)
    if not model.uses_buffers:  # one training batch (CMCE would need its buffers)
        batch = next(iter(pipeline.train_dataset(FLAGS.data_dir, config,
                                              pipeline.make_tokenizer(config))))
        out["gradients"] = diagnostics.gradient_table(model, batch)
    print(json.dumps(out, indent=1, default=str))
    if FLAGS.output_json:
        with open(FLAGS.output_json, "w") as f:
            json.dump(out, f, indent=1, default=str)


def run():
    define_flags()
    start(main, __doc__)


if __name__ == "__main__":
    run()
