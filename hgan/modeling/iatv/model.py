"""The whole trained IATV model: stage 1, and stage 2's CNN and co-attention matcher.

Stage 2 is its own network, stage 1 its "initial point" (§3.2): ``stage2_cnn`` is a copy of
stage 1's CNN up to the region features (VGG-16 "pool5", §4.2), and the matcher's word
embedding and word-LSTM start from stage 1's. Stage 2's joint phase fine-tunes its CNN copy
while stage 1 keeps the weights it was trained with, so stage 1 still screens candidates
(§4.2) with the features it learnt. ``load_model`` rebuilds the model of a hgan-train
model_dir for evaluation and export.
"""
from __future__ import annotations

from hgan.data import pipeline
from hgan.modeling.checkpoints import resolve_checkpoint, restore_model
from hgan.config import Config
from hgan.modeling.iatv import stage1
from hgan.modeling.iatv import stage2
from hgan.tf_compat import keras, tf


def build_region_cnn(config: Config, pretrained: bool = False) -> keras.Model:
    """Image [B, H, W, 3] → region features [B, N, C]: stage 1's image tower cut at its
    ``regions`` output (the pool5 map of §4.2, flattened). Built without pretrained weights
    (they are copied from stage 1, ``IATV.initialize_stage2``, or restored) unless
    ``pretrained``: "w/o stage-1" starts stage 2's CNN from ``backbone_weights``."""
    tower = stage1.build_image_tower(config if pretrained else stage1.without_pretrained(config))
    return keras.Model(tower.input, tower.get_layer("regions").output, name="iatv_stage2_cnn")


class IATV(tf.Module):
    """Both stages of IATV.

    ``stage1``: ``hgan.modeling.iatv.stage1.Stage1``; ``stage2_cnn``: image → regions [B, N, C];
    ``matcher``: ``hgan.modeling.iatv.stage2.CoAttentionMatcher``. Checkpoint it as
    ``tf.train.Checkpoint(model=iatv)``. ``pretrained=False`` skips the backbone's pretrained
    weights (the checkpoint is about to overwrite them).
    """

    def __init__(self, config: Config, vocab_size: int, pretrained: bool = True):
        super().__init__(name="iatv")
        self.config = config
        self.vocab_size = int(vocab_size)
        build_config = config if pretrained else stage1.without_pretrained(config)
        self.stage1 = stage1.build_stage1(build_config, vocab_size)
        self.stage2_cnn = build_region_cnn(
            config, pretrained=pretrained and not config.model.stage1_init)
        self.matcher = stage2.build_matcher(config, vocab_size,
                                            region_dim=int(self.stage2_cnn.output.shape[-1]))

    def encode_text(self, inputs, training=False):
        """Stage-1 sentence embedding [B, E] (l2-normalised) from tokenizer outputs."""
        return self.stage1.encode_text(inputs, training=training)

    def encode_image(self, image, training=False):
        """Stage-1 image embedding [B, E] (l2-normalised)."""
        return self.stage1.encode_image(image, training=training)

    def encode_regions(self, image, training=False):
        """Stage-2 region features [B, N, C] from stage 2's own CNN."""
        return self.stage2_cnn(image, training=training)

    def pair_logits(self, regions, inputs, training=False):
        """Stage-2 matching logits [P] of pairs: regions [P, N, C] with tokens [P, L]."""
        return self.matcher({"regions": regions, "input_word_ids": inputs["input_word_ids"],
                             "input_mask": inputs["input_mask"]}, training=training)["logits"]

    def two_stage_score(self, stage2_logits, stage1_cosine):
        """The score two-stage retrieval orders a query's re-ranked candidates by: stage 2's
        logit + w · cos/τ, stage 1's CMCE logit (Eq. 1–2: cosine over τ) weighted by
        w = ``model.stage1_weight``. w = 0 is §4.2 (stage 2 alone); NumPy or TF inputs of
        one shape, either way."""
        model = self.config.model
        if not model.stage1_weight:
            return stage2_logits
        return stage2_logits + (model.stage1_weight / model.cmce_temperature) * stage1_cosine

    def initialize_stage2(self) -> None:
        """§3.2: stage 1 is stage 2's initial point — its CNN (up to the regions) is copied
        into ``stage2_cnn`` and its word embedding and word-LSTM into the matcher."""
        source = self.stage1.image_tower
        for layer in self.stage2_cnn.layers:
            if layer.weights:
                layer.set_weights(source.get_layer(layer.name).get_weights())
        self.matcher.initialize_from_stage1(self.stage1)


def load_model(model_dir: str, which: str = "best") -> tuple[IATV, Config, str]:
    """The IATV model of ``model_dir`` with the chosen checkpoint's weights (inference only;
    the identity buffers and optimizers in the checkpoint are not loaded)."""
    config = Config.load(model_dir)
    if config.family != "iatv":
        raise ValueError(f"{model_dir} holds a {config.family!r} model, not iatv")
    path = resolve_checkpoint(model_dir, which)
    model = IATV(config, pipeline.make_tokenizer(config).vocab_size + 1, pretrained=False)
    restore_model(model, path)
    return model, config, path
