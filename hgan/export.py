"""Exports a trained model as a SavedModel that serves raw sentences and image bytes.

  python -m hgan.export --model_dir=DIR --output_dir=SAVEDMODEL_DIR [--checkpoint=best]

Signatures (load with ``tf.saved_model.load``; only ``import tensorflow_text`` is needed
beside TensorFlow, for its tokenizer ops):

* ``encode_text(sentences: string[N])`` → ``global`` [N, E], ``word`` [N, L, C'],
  ``word_mask`` [N, L], ``phrase`` [N, M, C'], ``phrase_mask`` [N, M];
* ``encode_image(images: string[N])`` (JPEG/PNG bytes) → ``global``, ``word``, ``phrase``;
* ``score(texts: string[T], images: string[I])`` → ``score`` [T, I] (the weighted sum used
  by eval.py) and one [T, I] matrix per enabled level;
* ``score_features(texts, image_global, image_word, image_phrase)`` → the same, against
  image features from ``encode_image`` (what ``hgan.search`` keeps in its index).

Requests are validated in-graph: an image that is not JPEG/PNG fails the call with a clear
message; an empty sentence gets a defined score; a sentence longer than ``max_len`` tokens
is truncated, as in training. Noun phrases are found in-graph (``hgan.phrase_graph``).
"""
from __future__ import annotations

import os
import shutil
import sys

from absl import app, flags

from hgan import data
from hgan.checkpoints import load_model
from hgan.config import Config
from hgan.model import HGAN
from hgan.phrase_graph import GraphPhraseChunker
from hgan.tf_compat import tf

STRINGS = tf.TensorSpec([None], tf.string)


def request_pixels(images, config) -> tf.Tensor:
    """string[N] of JPEG/PNG bytes → [N, H, W, 3] model input; other bytes fail the request
    with a clear message (checked in-graph, before decoding)."""
    def one(encoded):
        known = (tf.equal(tf.strings.substr(encoded, 0, 3), b"\xff\xd8\xff")
                 | tf.equal(tf.strings.substr(encoded, 0, 8), b"\x89PNG\r\n\x1a\n"))
        with tf.control_dependencies([tf.debugging.Assert(
                known, ["encode_image: the bytes are not a JPEG or PNG image"])]):
            return data.preprocess_image(data.decode_image(encoded), config)

    return tf.map_fn(one, images, fn_output_signature=tf.TensorSpec(
        [config.image_height, config.image_width, 3], tf.float32))


class HGANServing(tf.Module):
    """The serving functions around a trained model."""

    def __init__(self, model: HGAN):
        super().__init__(name="hgan_serving")
        self.model = model
        self.config = model.config
        self.tokenizer = data.make_tokenizer(model.config)
        self.chunker = GraphPhraseChunker()

    def _text_features(self, sentences):
        inputs = self.tokenizer(sentences, self.chunker(sentences))
        return self.model.encode_text(inputs, training=False)

    def _image_features(self, images):
        pixels = request_pixels(images, self.config)
        return self.model.encode_image(pixels, training=False)

    @tf.function(input_signature=[STRINGS])
    def encode_text(self, sentences):
        return dict(self._text_features(sentences))

    @tf.function(input_signature=[STRINGS])
    def encode_image(self, images):
        return dict(self._image_features(images))

    @tf.function(input_signature=[STRINGS, STRINGS])
    def score(self, texts, images):
        scores = self.model.score(self._text_features(texts), self._image_features(images),
                                  training=False)
        return {"score" if k == "total" else k: v for k, v in scores.items()}


    def score_features_fn(self):
        """``score_features(texts, image_global, image_word, image_phrase)`` → scores of
        sentences against pre-computed image features (a search index)."""
        c = self.config
        # The region count follows from the partition config (Table 4).
        from hgan.visual import partition_grid
        regions = []
        for pool, stride in ((c.word_pool, c.word_stride), (c.phrase_pool, c.phrase_stride)):
            h, w = partition_grid(tuple(c.partition_map), pool, stride) if c.partition_map \
                else (None, None)
            regions.append(h * w if h else None)

        @tf.function(input_signature=[
            STRINGS, tf.TensorSpec([None, c.embed_dim], tf.float32),
            tf.TensorSpec([None, regions[0], c.local_dim], tf.float32),
            tf.TensorSpec([None, regions[1], c.local_dim], tf.float32)])
        def score_features(texts, image_global, image_word, image_phrase):
            image = {"global": image_global, "word": image_word, "phrase": image_phrase}
            scores = self.model.score(self._text_features(texts), image, training=False)
            return {"score" if k == "total" else k: v for k, v in scores.items()}
        return score_features


def export(model_dir: str, output_dir: str, checkpoint: str = "best") -> str:
    """Writes the SavedModel atomically (a temp dir renamed into place); returns its path.
    An IATV model_dir is exported by ``hgan.iatv.export`` (its own signatures)."""
    if Config.load(model_dir).model == "iatv":
        from hgan.iatv import export as iatv_export
        return iatv_export.export(model_dir, output_dir, checkpoint)
    model, config, path = load_model(model_dir, checkpoint)
    module = HGANServing(model)
    module.score_features = module.score_features_fn()
    return save_servable(module, {
        "encode_text": module.encode_text.get_concrete_function(),
        "encode_image": module.encode_image.get_concrete_function(),
        "score": module.score.get_concrete_function(),
        "score_features": module.score_features.get_concrete_function(),
    }, output_dir, config, path)


def save_servable(module: tf.Module, signatures: dict, output_dir: str, config,
                  checkpoint_path: str) -> str:
    """Saves ``module`` with ``signatures`` atomically (a temp dir renamed into place), with
    the config and the checkpoint it came from beside it; returns ``output_dir``."""
    tmp = output_dir.rstrip("/") + ".tmp"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    tf.saved_model.save(module, tmp, signatures=signatures)
    with tf.io.gfile.GFile(os.path.join(tmp, "assets.extra_config.json"), "w") as f:
        f.write(config.to_json())
    with tf.io.gfile.GFile(os.path.join(tmp, "checkpoint.txt"), "w") as f:
        f.write(checkpoint_path + "\n")
    if tf.io.gfile.exists(output_dir):
        shutil.rmtree(output_dir)
    os.replace(tmp, output_dir)
    return output_dir


FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_string("model_dir", None, "A train.py model_dir.")
    flags.DEFINE_string("output_dir", None, "Where the SavedModel goes.")
    flags.DEFINE_string("checkpoint", "best", "best (val-selected), latest, or a path.")
    flags.mark_flags_as_required(["model_dir", "output_dir"])


def main(argv):
    del argv
    out = export(FLAGS.model_dir, FLAGS.output_dir, FLAGS.checkpoint)
    print(f"SavedModel written to {out}")


if __name__ == "__main__":
    _define_flags()
    app.run(main, argv=sys.argv)
