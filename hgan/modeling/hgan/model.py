"""The HGAN model: image and text encoders, the three matching levels, the losses (§3)."""
from __future__ import annotations


from hgan.config import Config
from hgan.data import pipeline
from hgan.layers.matching import LocalMatching, cosine_scores
from hgan.modeling import losses
from hgan.modeling.checkpoints import resolve_checkpoint, restore_model
from hgan.modeling.hgan.text import HEAD_INPUTS, build_text_encoder, trimmed_tokens
from hgan.modeling.hgan.visual import build_image_encoder
from hgan.tf_compat import autograph_off, keras, tf

TEXT_KEYS = ("input_word_ids", "input_mask", "input_type_ids", "phrase_token_mask",
             "token_word_index")
SENTENCE_LOSSES = ("cmpm", "cmce")


class HGAN(keras.Model):
    """Hierarchical Gumbel Attention Network.

    ``encode_image(image)`` → {global [B, E], word [B, N_v, C'], phrase [B, N_v, C']};
    ``encode_text(inputs)`` → {global [B, E], word [B, L, C'], word_mask [B, L],
    phrase [B, M, C'], phrase_mask [B, M]}; ``score(text, image)`` → a [Bt, Bi] matrix per
    enabled level and their weighted sum ``total``; ``compute_losses`` → every term of
    L = L_pair + λ L_ide + L_w + L_p (§3.4).
    """

    def __init__(self, config: Config, vocab_size: int, num_classes: int = 0, **kwargs):
        super().__init__(name=kwargs.pop("name", "hgan"), **kwargs)
        if not (config.model.use_word or config.model.use_phrase or config.model.use_sentence):
            raise ValueError("at least one of use_word / use_phrase / use_sentence is needed")
        if config.model.sentence_loss not in SENTENCE_LOSSES:
            raise ValueError(f"sentence_loss must be one of {SENTENCE_LOSSES}, "
                             f"got {config.model.sentence_loss!r}")
        self.config = config
        self.vocab_size = vocab_size
        self.num_classes = num_classes
        self.image_encoder = build_image_encoder(config)
        self.text_encoder = build_text_encoder(config, vocab_size)
        head = dict(hidden=config.model.mlp_hidden, temperature=config.model.temperature,
                    attention=config.model.attention, gumbel_scale=config.model.gumbel_scale,
                    gumbel_norm_epsilon=config.model.gumbel_norm_epsilon)
        self.word_head = (LocalMatching(name="word_matching", k1=config.model.k1,
                                        k2=config.model.k2,
                                        **head) if config.model.use_word else None)
        self.phrase_head = (LocalMatching(name="phrase_matching",
                                          k1=config.model.phrase_k1 or config.model.k1,
                                          k2=config.model.phrase_k2 or config.model.k2, **head)
                            if config.model.use_phrase else None)
        # Eq. 10: one classifier over the training identities shared by both modalities.
        self.classifier = (keras.layers.Dense(num_classes, name="id_classifier")
                           if num_classes and config.model.use_sentence else None)

    def get_config(self):
        return {"config": self.config.to_dict(), "vocab_size": self.vocab_size,
                "num_classes": self.num_classes}

    @classmethod
    def from_config(cls, config):
        return cls(Config.from_dict(config["config"]), config["vocab_size"],
                   config["num_classes"])

    def encode_image(self, image, training=None):
        return self.image_encoder(image, training=training)

    def encode_text(self, inputs, training=None, tokens=None, trim: bool = False):
        """Text features; ``tokens`` [B, L, D]: the batch's token embeddings when computed
        already (``hgan.training.hgan_token_cache``), so only the text head runs. ``trim``:
        BERT runs on the batch's longest caption, not ``max_len`` (``trimmed_tokens``; the
        export's encoders: the same features to float rounding)."""
        if tokens is None and trim:
            tokens = trimmed_tokens(self.text_encoder.get_layer("token_embeddings"), inputs,
                                    self.config.data.max_len, training=training)
        if tokens is None:
            return self.text_encoder({k: inputs[k] for k in TEXT_KEYS}, training=training)
        head = self.text_encoder.get_layer("text_head")
        return head({"tokens": tokens, **{k: inputs[k] for k in HEAD_INPUTS}},
                    training=training)

    def call(self, inputs, training=None):
        """Both modalities' features of a batch of (image, caption) pairs (with
        ``bert_tokens`` in ``inputs``, the cached token embeddings of its captions)."""
        image = self.encode_image(inputs["image"], training=training)
        text = self.encode_text(inputs, training=training, tokens=inputs.get("bert_tokens"))
        if self.classifier is not None:
            self.classifier(image["global"])
        return {"image": image, "text": text}

    def score(self, text, image, training=None, folded=None) -> dict:
        """Score matrices [Bt, Bi] of every text with every image, per level and ``total``.
        ``folded`` {level: ``LocalMatching.fold(A)``}: that level's image table holds rows
        y of V = y·A (a gallery's pq tables before their rotation)."""
        out = {}
        folded = folded or {}
        weights = dict(zip(("sentence", "word", "phrase"), self.config.eval.score_weights))
        if self.config.model.use_sentence:
            out["sentence"] = cosine_scores(text["global"], image["global"])
        if self.word_head is not None:
            out["word"] = self.word_head((text["word"], text["word_mask"], image["word"],
                                          *folded.get("word", ())), training=training)
        if self.phrase_head is not None:
            out["phrase"] = self.phrase_head(
                (text["phrase"], text["phrase_mask"], image["phrase"],
                 *folded.get("phrase", ())), training=training)
        # float32 whatever the compute dtype: the losses and rankings read these (Keras's
        # mixed-precision guide keeps a model's outputs in float32).
        out = {k: tf.cast(v, tf.float32) for k, v in out.items()}
        out["total"] = tf.add_n([weights[k] * v for k, v in out.items()])
        return out

    @property
    def uses_buffers(self) -> bool:
        """True when L_pair is IATV's CMCE, which needs ``IdentityBuffers``."""
        c = self.config
        return (c.model.use_sentence and bool(c.model.weight_pair)
                and c.model.sentence_loss == "cmce")

    def compute_losses(self, text, image, labels, training=True, buffers=None) -> dict:
        """Every loss term on a batch of matched pairs (text i drawn with image i).

        ``buffers``: the ``hgan.training.buffers.IdentityBuffers`` CMCE compares with, needed
        when ``uses_buffers`` (the caller updates them after the step).
        """
        c = self.config
        terms = {}
        if c.model.use_sentence:
            if self.uses_buffers:
                if buffers is None:
                    raise ValueError("sentence_loss='cmce' needs the identity buffers")
                terms["cmce"] = c.model.weight_pair * losses.cmce_loss(
                    image["global"], text["global"], labels, buffers.image, buffers.text,
                    c.model.cmce_temperature)
            elif c.model.weight_pair:
                terms["pair"] = c.model.weight_pair * losses.cmpm_loss(
                    image["global"], text["global"], labels, temperature=c.model.pair_temperature)
            if c.model.weight_ide and self.classifier is not None:
                # One pass of the shared classifier over both modalities (one weight gradient).
                logits = self.classifier(tf.concat([image["global"], text["global"]], 0))
                image_logits, text_logits = tf.split(
                    logits, [tf.shape(image["global"])[0], -1])
                terms["ide"] = c.model.weight_ide * losses.identification_loss(
                    image_logits, text_logits, labels)
        for level, head, weight in (("word", self.word_head, c.model.weight_word),
                                    ("phrase", self.phrase_head, c.model.weight_phrase)):
            if head is None or not weight:
                continue
            words, mask = text[level], text[f"{level}_mask"]
            if not c.train.jit_compile:  # XLA keeps the static slots
                words, mask = _trim_to_used(words, mask)
            scores = head((words, mask, image[level]), training=training)
            terms[level] = weight * losses.triplet_ranking_loss(
                scores, labels, labels, c.model.margin, c.model.hardest_negative)
        terms["total"] = tf.add_n(list(terms.values()))
        return terms


def _trim_to_used(features, mask):
    """Drops the slots after the last real one of any row: padding changes no score, and
    the heads' cost grows with the slots."""
    positions = tf.range(1, tf.shape(mask)[1] + 1)
    used = tf.maximum(tf.reduce_max(tf.where(mask > 0, positions[None], 0)), 1)
    return features[:, :used], mask[:, :used]


def build_model(config: Config, vocab_size: int, num_classes: int = 0,
                strategy=None) -> HGAN:
    """Builds and creates every weight of the model (one dummy batch).

    Under a distribution strategy the dummy batch runs in replica context: a restored
    TF-Hub SavedModel (the BERT) cannot be called in cross-replica context.
    """
    with autograph_off():  # the same model, built without converting every layer
        model = HGAN(config, vocab_size, num_classes)

    def create_weights():
        out = model(dummy_batch(config, 2), training=False)
        model.score(out["text"], out["image"])  # the heads' weights are created on first use

    if strategy is None:
        create_weights()
    else:
        strategy.run(tf.function(create_weights))
    return model


def dummy_batch(config: Config, batch: int) -> dict:
    L, M = config.data.max_len, config.data.max_phrases
    return {
        "image": tf.zeros([batch, config.data.image_height, config.data.image_width, 3]),
        "input_word_ids": tf.zeros([batch, L], tf.int32),
        "input_mask": tf.ones([batch, L], tf.int32),
        "input_type_ids": tf.zeros([batch, L], tf.int32),
        "phrase_token_mask": tf.zeros([batch, M, L]),
        "token_word_index": tf.tile(tf.range(-1, L - 1)[None], [batch, 1]),
    }


def load_model(model_dir: str, which: str = "best") -> tuple[HGAN, Config, str]:
    """The model of ``model_dir`` with the chosen checkpoint's weights (inference only)."""
    config = Config.load(model_dir)
    manifest_classes = config.model.num_classes
    tokenizer = pipeline.make_tokenizer(config)
    path = resolve_checkpoint(model_dir, which)
    reader = tf.train.load_checkpoint(path)
    if not manifest_classes:
        # The classifier width is read back from the checkpoint rather than the data.
        shapes = reader.get_variable_to_shape_map()
        kernels = [s for name, s in shapes.items() if "classifier" in name and len(s) == 2]
        manifest_classes = kernels[0][1] if kernels else 0
    # Synchronised BatchNorm only changes training statistics; at inference the fused
    # per-replica layer computes the same with the same variables, faster.
    model = build_model(config.replace(sync_batchnorm=False), tokenizer.vocab_size + 1,
                        manifest_classes)
    restore_model(model, path)
    return model, config, path
