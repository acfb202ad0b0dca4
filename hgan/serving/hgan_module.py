"""HGAN's serving module: a SavedModel that serves raw sentences and image bytes
(``hgan-export`` writes it). It offers the contract of ``hgan.serving.savedmodel``.

Signatures (load with ``tf.saved_model.load``; only ``import tensorflow_text`` is needed
beside TensorFlow, for its tokenizer ops):

* ``encode_text(sentences: string[N])`` → ``global`` [N, E], ``word`` [N, L, C'],
  ``word_mask`` [N, L], ``phrase`` [N, M, C'], ``phrase_mask`` [N, M];
* ``encode_image(images: string[N])`` (JPEG/PNG bytes) → ``global``, ``word``, ``phrase``;
* ``score(texts: string[T], images: string[I])`` → ``score`` [T, I] only: the fused score
  hgan-eval ranks by (w_s·sentence + w_w·word + w_p·phrase). One output, so a client that
  takes "the" output (TF Serving's REST API returns a lone output as ``outputs``) gets
  the fused score: a loaded signature's outputs come back in an order that changes from
  one process to the next;
* ``score_levels(texts, images)`` → ``sentence``, ``word``, ``phrase`` [T, I] (the enabled
  levels, each unweighted), read by name;
* ``rerank(text_global, text_word, text_word_mask, text_phrase, text_phrase_mask,
  image_global, image_word, image_phrase)`` → ``score``: the fused score from an
  ``encode_text`` output and ``encode_image`` outputs (a gallery's tables), so a search that
  encoded its sentence for stage 1 re-ranks without encoding it again;
* ``explain(texts, image_word)`` → ``selected``, ``weights`` [T, I, N, R] and ``words``
  [T, R]: which words each region picks (Fig. 4), for models with the word level and
  whole-word keys;
* ``fold_rotations(rotation_word, rotation_phrase)`` [P, P] each → ``fold_word_gamma``,
  ``fold_word_fuse``, ``fold_phrase_gamma``, ``fold_phrase_fuse`` [P, H], and
  ``rerank_rotated(<rerank's inputs>, fold_word_gamma, ..., fold_phrase_fuse)`` with
  ``image_word`` / ``image_phrase`` [I, N, P] the rows y of a pq gallery's tables before
  their rotation R (V = (y·R)[:, :C']), for models with both local levels: each level's
  image towers start with linear maps W, so V·W = y·(R[:, :C']·W) (``LocalMatching.fold``),
  and a query skips turning its candidates' rows back (two [I·N, P] × [P, P] products).

Requests are validated in-graph: an image that is not JPEG/PNG fails the call with a clear
message; an empty sentence gets a defined score; a sentence longer than ``max_len`` tokens
is truncated, as in training. Noun phrases are found in-graph (``hgan.data.phrase_graph``).
"""
from __future__ import annotations

from hgan.data.phrase_graph import GraphPhraseChunker
from hgan.modeling.hgan.model import HGAN
from hgan.modeling.hgan.visual import partition_grid
from hgan.serving.savedmodel import (ENCODE_IMAGE, ENCODE_TEXT, EXPLAIN, FOLD_ROTATIONS,
                                     RERANK, RERANK_ROTATED, SCORE, STRINGS, ServingModule,
                                     request_pixels)
from hgan.tf_compat import tf



class HGANServing(ServingModule):
    """The serving functions around a trained model. They are traced without AutoGraph
    (``autograph=False``): they and the layers they call branch on Python values only, and
    converting the source of every function and layer they reach would cost a fifth of
    the export's time."""

    def __init__(self, model: HGAN):
        super().__init__(model, name="hgan_serving")
        self.chunker = GraphPhraseChunker()
        self._levels = self._levels_fn()

    # The encoders are functions of their own, traced once and called by every signature:
    # inlined, the tokenizer, chunker and BERT were traced again for each of them.
    # BERT runs on the request's longest caption, not max_len (``HGAN.encode_text``'s
    # ``trim``): a served query is one sentence, mostly far shorter than max_len.
    @tf.function(autograph=False, input_signature=[STRINGS])
    def _text_features(self, sentences):
        inputs = self.tokenizer(sentences, self.chunker(sentences))
        return self.model.encode_text(inputs, training=False, trim=True)

    @tf.function(autograph=False, input_signature=[STRINGS])
    def _image_features(self, images):
        pixels = request_pixels(images, self.config)
        return self.model.encode_image(pixels, training=False)

    # The encoders' outputs are float32 whatever the model's compute dtype: they are what
    # ``rerank`` takes (a mixed-precision model encodes in float16).
    @tf.function(autograph=False, input_signature=[STRINGS])
    def encode_text(self, sentences):
        return _float32(self._text_features(sentences))

    @tf.function(autograph=False, input_signature=[STRINGS])
    def encode_image(self, images):
        return _float32(self._image_features(images))

    def _scores(self, texts, images):
        text = _float32(self._text_features(texts))
        image = _float32(self._image_features(images))
        return self._levels(text["global"], text["word"], text["word_mask"], text["phrase"],
                            text["phrase_mask"], image["global"], image["word"],
                            image["phrase"])

    @tf.function(autograph=False, input_signature=[STRINGS, STRINGS])
    def score(self, texts, images):
        return {"score": self._scores(texts, images)["total"]}

    @tf.function(autograph=False, input_signature=[STRINGS, STRINGS])
    def score_levels(self, texts, images):
        return {k: v for k, v in self._scores(texts, images).items() if k != "total"}

    def _levels_fn(self):
        """The heads on encoded features → every level's score and the fused ``total``: one
        function that ``score``, ``score_levels`` and ``rerank`` call, so the save traces
        the heads once."""
        c = self.config
        # The region count follows from the partition config (Table 4).
        regions = []
        for pool, stride in ((c.model.word_pool, c.model.word_stride),
                             (c.model.phrase_pool, c.model.phrase_stride)):
            h, w = (partition_grid(tuple(c.model.partition_map), pool, stride)
                    if c.model.partition_map else (None, None))
            regions.append(h * w if h else None)

        @tf.function(autograph=False, input_signature=[
            tf.TensorSpec([None, c.model.embed_dim], tf.float32),
            tf.TensorSpec([None, None, c.model.local_dim], tf.float32),
            tf.TensorSpec([None, None], tf.float32),
            tf.TensorSpec([None, None, c.model.local_dim], tf.float32),
            tf.TensorSpec([None, None], tf.float32),
            tf.TensorSpec([None, c.model.embed_dim], tf.float32),
            tf.TensorSpec([None, regions[0], c.model.local_dim], tf.float32),
            tf.TensorSpec([None, regions[1], c.model.local_dim], tf.float32)])
        def levels(*features):
            return self.model.score(*_features(*features), training=False)
        return levels

    def rerank_fn(self):
        """``rerank``: the fused score of pre-computed text features (``encode_text``)
        against pre-computed image features (a gallery's tables)."""
        @tf.function(autograph=False, input_signature=self._levels.input_signature)
        def rerank(text_global, text_word, text_word_mask, text_phrase, text_phrase_mask,
                   image_global, image_word, image_phrase):
            return {"score": self._levels(text_global, text_word, text_word_mask, text_phrase,
                                          text_phrase_mask, image_global, image_word,
                                          image_phrase)["total"]}
        return rerank

    def rotated_fns(self):
        """``fold_rotations`` and ``rerank_rotated`` (module docstring), for models with
        both local levels."""
        c = self.config
        dim = c.model.local_dim
        rotation = tf.TensorSpec([None, None], tf.float32)
        kernel = tf.TensorSpec([None, c.model.mlp_hidden], tf.float32)
        heads = (("word", self.model.word_head), ("phrase", self.model.phrase_head))

        @tf.function(autograph=False, input_signature=[rotation, rotation])
        def fold_rotations(rotation_word, rotation_phrase):
            out = {}
            for (level, head), turn in zip(heads, (rotation_word, rotation_phrase)):
                # A decoded row is (y·R)[:, :C'] = y·R[:, :C'].
                out[f"fold_{level}_gamma"], out[f"fold_{level}_fuse"] = head.fold(turn[:, :dim])
            return out

        spec = self._levels.input_signature
        rows = [tf.TensorSpec([None, s.shape[1], None], tf.float32) for s in spec[6:]]

        @tf.function(autograph=False, input_signature=[*spec[:6], *rows, *[kernel] * 4])
        def rerank_rotated(text_global, text_word, text_word_mask, text_phrase,
                           text_phrase_mask, image_global, image_word, image_phrase,
                           fold_word_gamma, fold_word_fuse, fold_phrase_gamma,
                           fold_phrase_fuse):
            folded = {"word": (fold_word_gamma, fold_word_fuse),
                      "phrase": (fold_phrase_gamma, fold_phrase_fuse)}
            features = _features(text_global, text_word, text_word_mask, text_phrase,
                                 text_phrase_mask, image_global, image_word, image_phrase)
            return {"score": self.model.score(*features, training=False,
                                              folded=folded)["total"]}
        return fold_rotations, rerank_rotated

    def explain_fn(self):
        """``explain(texts, image_word)`` → the word level's inference-time
        selections (Fig. 4): ``selected`` [T, I, N, R] (1 where region n of image i picks
        word r of text t; k1 per region), ``weights`` (Eq. 7's softmax over them) and
        ``words`` [T, R], the word keys' strings."""
        c = self.config
        h, w = (partition_grid(tuple(c.model.partition_map), c.model.word_pool,
                               c.model.word_stride) if c.model.partition_map else (None, None))

        @tf.function(autograph=False, input_signature=[
            STRINGS, tf.TensorSpec([None, h * w if h else None, c.model.local_dim],
                                   tf.float32)])
        def explain(texts, image_word):
            text = self._text_features(texts)
            selected, weights = self.model.word_head.selections(text["word"],
                                                                text["word_mask"], image_word)
            return {"selected": selected, "weights": weights,
                    "words": self.tokenizer.word_strings(texts)}
        return explain


def _features(text_global, text_word, text_word_mask, text_phrase, text_phrase_mask,
              image_global, image_word, image_phrase) -> tuple:
    """The ``rerank`` inputs, in their order, as ``HGAN.score``'s (text, image) dicts."""
    return ({"global": text_global, "word": text_word, "word_mask": text_word_mask,
             "phrase": text_phrase, "phrase_mask": text_phrase_mask},
            {"global": image_global, "word": image_word, "phrase": image_phrase})


def _float32(features: dict) -> dict:
    """Floating features as float32, as ``rerank`` takes them (a mixed-precision model
    encodes in float16)."""
    return {k: tf.cast(v, tf.float32) if v.dtype.is_floating else v
            for k, v in features.items()}


def servable(model: HGAN) -> tuple[tf.Module, dict]:
    """The serving module of a trained HGAN and its signatures (``tf.function``s with input
    signatures, traced by the save: ``savedmodel.save_servable``)."""
    module = HGANServing(model)
    module.rerank = module.rerank_fn()
    optional = {}
    if model.word_head is not None and model.config.model.word_keys == "words":
        module.explain = module.explain_fn()
        optional[EXPLAIN] = module.explain
    if model.word_head is not None and model.phrase_head is not None:
        module.fold_rotations, module.rerank_rotated = module.rotated_fns()
        optional[FOLD_ROTATIONS] = module.fold_rotations
        optional[RERANK_ROTATED] = module.rerank_rotated
    return module, {
        **optional,
        ENCODE_TEXT: module.encode_text,
        ENCODE_IMAGE: module.encode_image,
        SCORE: module.score,
        "score_levels": module.score_levels,
        RERANK: module.rerank,
    }
