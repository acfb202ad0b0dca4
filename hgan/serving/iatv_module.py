"""IATV's serving module: a SavedModel serving raw sentences and image bytes.

``hgan-export --model_dir=DIR --output_dir=OUT`` comes here when DIR's config has
``family: iatv``. The signatures of every family's export (``hgan.serving.savedmodel``),
then IATV's own (``tf.saved_model.load`` + ``import tensorflow_text``):

* ``encode_text(sentences: string[N])`` → ``global`` [N, E], stage 1 (l2-normalised);
* ``encode_image(images: string[N])`` (JPEG/PNG bytes) → ``global`` [N, E] (stage 1)
  and ``regions`` [N, R, C] (stage 2's CNN, what the matcher reads);
* ``rerank(texts, image_global, image_regions)`` → ``score``: what two-stage retrieval
  orders the re-ranked candidates by (``IATV.two_stage_score``: the stage-2 logit plus
  ``model.stage1_weight`` · cos/τ; §4.2's stage-2 logit alone when the weight is 0), from
  ``encode_image`` outputs; hgan-search re-ranks with it, as hgan-eval's two_stage does;
* ``score(texts: string[T], images: string[I])`` → ``score`` [T, I], the stage-1 cosine
  (rank a gallery with it);
* ``rerank_score(texts: string[T], images: string[I])`` → ``score`` [T, I]: stage 2's
  logit for **every** text × image pair, the quantity to rank by (σ of it saturates to
  ties). It runs T·I pairs through the co-attention network: meant for a query's stage-1
  shortlist (§4.2: the top 20);
* ``rerank_confidence(texts, images)`` → ``confidence`` [T, I], σ(logit): Eq. 12's C.

Every signature has one output, so a client that takes "the" output (TF Serving's REST
API returns a lone output as ``outputs``) gets what the name says: a loaded signature's
outputs come back in an order that changes from one process to the next.

Images are checked in-graph (not JPEG/PNG: a clear error), preprocessed with
``hgan.data.pipeline.preprocess_image`` as in training; sentences longer than ``max_len`` tokens are
truncated, as in training.
"""
from __future__ import annotations

from hgan.data.tokenization import longest_caption
from hgan.modeling.iatv.model import IATV
from hgan.serving.savedmodel import (ENCODE_IMAGE, ENCODE_TEXT, GLOBAL, RERANK, SCORE,
                                     STRINGS, ServingModule, request_pixels)
from hgan.tf_compat import tf


class IATVServing(ServingModule):
    """The serving functions around a trained IATV model, traced without AutoGraph as
    HGAN's are (``hgan.serving.hgan_module``)."""

    def __init__(self, model: IATV):
        super().__init__(model, name="iatv_serving")

    def _pixels(self, images):
        return request_pixels(images, self.config)

    # Traced once and called by every signature that reads sentences (see HGANServing).
    @tf.function(autograph=False, input_signature=[STRINGS])
    def _tokens(self, sentences):
        return self.tokenizer(sentences)

    # Stage 1's text tower on the request's longest sentence, not max_len slots: its masked
    # LSTM carries the state over padding, so the embedding is the same (as HGAN's export
    # runs BERT on the longest caption). Stage 2 reads the full-length tokens.
    @tf.function(autograph=False, input_signature=[STRINGS])
    def _text_global(self, sentences):
        tokens = self._tokens(sentences)
        longest = longest_caption(tokens["input_mask"])
        return self.model.encode_text({k: tokens[k][:, :longest]
                                       for k in ("input_word_ids", "input_mask")})

    @tf.function(autograph=False, input_signature=[STRINGS])
    def encode_text(self, sentences):
        return {GLOBAL: self._text_global(sentences)}

    @tf.function(autograph=False, input_signature=[STRINGS])
    def encode_image(self, images):
        pixels = self._pixels(images)
        return {GLOBAL: self.model.encode_image(pixels),
                "regions": self.model.encode_regions(pixels)}

    @tf.function(autograph=False, input_signature=[STRINGS, STRINGS])
    def score(self, texts, images):
        text = self._text_global(texts)
        image = self.model.encode_image(self._pixels(images))
        return {"score": tf.matmul(tf.math.l2_normalize(text, -1),
                                   tf.math.l2_normalize(image, -1), transpose_b=True)}

    @tf.function(autograph=False, input_signature=[STRINGS, STRINGS])
    def rerank_score(self, texts, images):
        return {"score": self._pair_logits(texts, self.model.encode_regions(
            self._pixels(images)))}

    @tf.function(autograph=False, input_signature=[STRINGS, STRINGS])
    def rerank_confidence(self, texts, images):
        return {"confidence": tf.sigmoid(self._pair_logits(
            texts, self.model.encode_regions(self._pixels(images))))}

    @tf.function(autograph=False, input_signature=[
        STRINGS, tf.TensorSpec([None, None], tf.float32),
        tf.TensorSpec([None, None, None], tf.float32)])
    def rerank(self, texts, image_global, image_regions):
        """The two-stage score of every (sentence, image) pair from ``encode_image``
        outputs (stage 2's logit, plus stage 1's weighted CMCE logit)."""
        text = tf.math.l2_normalize(self._text_global(texts), -1)
        cosine = tf.matmul(text, tf.math.l2_normalize(image_global, -1), transpose_b=True)
        return {"score": self.model.two_stage_score(self._pair_logits(texts, image_regions),
                                                    cosine)}

    def _pair_logits(self, texts, regions):
        tokens = self._tokens(texts)
        t, i = tf.shape(texts)[0], tf.shape(regions)[0]
        text_index = tf.repeat(tf.range(t), i)  # pair p = (p // I, p % I)
        image_index = tf.tile(tf.range(i), [t])
        pair_tokens = {k: tf.gather(tokens[k], text_index)
                       for k in ("input_word_ids", "input_mask")}
        logits = self.model.pair_logits(tf.gather(regions, image_index), pair_tokens)
        return tf.reshape(logits, tf.stack([t, i]))


def servable(model: IATV) -> tuple[tf.Module, dict]:
    """The serving module of a trained IATV model and its signatures (``tf.function``s with
    input signatures, traced by the save: ``savedmodel.save_servable``)."""
    module = IATVServing(model)
    return module, {
        ENCODE_TEXT: module.encode_text,
        ENCODE_IMAGE: module.encode_image,
        SCORE: module.score,
        "rerank_score": module.rerank_score,
        "rerank_confidence": module.rerank_confidence,
        RERANK: module.rerank,
    }
