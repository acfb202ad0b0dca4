"""The presets: the one place a run's starting config is defined, per name and family.

  * ``paper``: HGAN §4 "Implementation Details": Adam lr 2e-4, weight decay 5e-4, batch
    32, 384×192 images, ResNet-50, BERT (concat of last four layers), bi-LSTM 512, FC 512,
    k1=4, k2=2, 4×4/3×2 partitions (15 regions, Table 4); IATV §4.2: VGG-16, 512-d joint
    space, τ = 0.04, Adam 1e-4 for the LSTM, SGD for the CNN, 20 candidates. No
    augmentation: neither paper names one.
  * ``demo``: the same families shrunk to train on the synthetic demo set on a 2-core CPU
    in a few minutes (docs/design.md, "Demo preset", says why each value differs).
  * ``tiny``: for unit tests only.

``resolve(name, overrides, family)`` is what hgan-train builds a run's config with.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from hgan.config.base import Config, ConfigError, check_family, parse_overrides
from hgan.config.sections import DataConfig, EvalConfig, HGANModel, IATVModel, TrainConfig

# The demo flips training images, swapping each flipped image's "left" and "right" in its
# caption; the paper presets do not (docs/design.md, "Demo preset").
_DEMO_DATA = DataConfig(image_height=128, image_width=64, max_len=40, max_phrases=6,
                        batch_size=32, identities_per_batch=8, shuffle_buffer=2048,
                        random_flip=True)
_TINY_DATA = DataConfig(image_height=64, image_width=32, max_len=16, max_phrases=3,
                        batch_size=8, shuffle_buffer=64, random_flip=True)
_TINY_TRAIN = TrainConfig(epochs=1, checkpoint_every=5, log_every=1)

PRESETS = {
    "paper": {
        "hgan": Config(),
        # §3.2.1: one-hot words over the data's word vocabulary, not BERT's WordPieces.
        "iatv": Config(family="iatv", model=IATVModel(),
                       data=DataConfig(text_vocab="words"),
                       train=TrainConfig(learning_rate=1e-4), eval=EvalConfig(rerank_k=20)),
    },
    "demo": {
        # Short from-scratch runs (docs/design.md, "Demo preset"): the compact CNN, L_pair as
        # cos/τ, AdamW's decoupled decay (coupled L2 under Adam erodes weakly-used weights by
        # ~lr a step), a 50-step warmup, Gumbel top-k sampling that γ decides (scale 8).
        "hgan": Config(
            data=_DEMO_DATA,
            model=HGANModel(backbone="compact_cnn", backbone_weights="none",
                            partition_map=(16, 8), lstm_units=128, attention_heads=4,
                            local_dim=128, embed_dim=128, mlp_hidden=128,
                            pair_temperature=0.1, gumbel_scale=8.0),
            train=TrainConfig(steps=360, epochs=20, learning_rate=3e-4, lr_decay_epochs=(15,),
                              weight_decay_mode="decoupled", warmup_steps=50,
                              checkpoint_every=60, eval_every=60, log_every=20),
            eval=EvalConfig(rerank_k=20)),
        # The same compact CNN, 128-d towers, short phases.
        "iatv": Config(
            # Fig. 2's plain mini-batches, not HGAN's 8 identities × 4: with P×K each identity's
            # buffer rows went stale between visits (docs/design.md, "IATV stage 2 on the demo").
            family="iatv", data=dataclasses.replace(_DEMO_DATA, identities_per_batch=0),
            # docs/design.md "IATV stage 2 on the demo": the compact CNN at SGD 0.01 (stage 1
            # learns), and stage 2 on balanced pairs with random negatives, l2-normalised
            # regions and Adam 3e-3 (from the mined pairs alone it stays at chance).
            model=IATVModel(backbone="compact_cnn", backbone_weights="none", fc_units=256,
                            embed_dim=128, word_dim=128, lstm_units=128, attention_dim=128,
                            importance_hidden=128, fc_hidden=128, cnn_learning_rate=0.01,
                            stage2_learning_rate=3e-3, region_norm="l2", positive_share=0.5,
                            random_negative_share=0.5, stage1_weight=0.25, stage1_steps=600,
                            stage2_text_steps=450, stage2_joint_steps=150),
            train=TrainConfig(epochs=20, learning_rate=1e-3, lr_decay_epochs=(15,),
                              checkpoint_every=150, eval_every=150, log_every=20),
            eval=EvalConfig(rerank_k=20)),
    },
    "tiny": {
        "hgan": Config(
            data=_TINY_DATA,
            model=HGANModel(backbone="small_cnn", backbone_weights="none",
                            partition_map=(16, 8), lstm_units=16, attention_heads=2,
                            local_dim=16, embed_dim=16, mlp_hidden=16, dropout=0.0),
            train=_TINY_TRAIN, eval=EvalConfig(rerank_k=4, eval_chunk=8)),
        "iatv": Config(
            family="iatv", data=_TINY_DATA,
            model=IATVModel(backbone="small_cnn", backbone_weights="none", fc_units=16,
                            embed_dim=16, word_dim=8, lstm_units=8, attention_dim=8,
                            importance_hidden=8, fc_hidden=8, decoder_steps=2, candidates=3),
            train=_TINY_TRAIN, eval=EvalConfig(rerank_k=3, eval_chunk=8)),
    },
}
PRESET_NAMES = tuple(PRESETS)


def preset(name: str, family: str = "hgan") -> Config:
    """The preset ``name`` of ``family``."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {list(PRESET_NAMES)}")
    return PRESETS[name][check_family(family)]


def resolve(name: str, overrides: Optional[list[str]] = None, family: str = "hgan") -> Config:
    """``preset(name, family)`` with ``overrides`` (``--set`` items) applied; a
    ``family=`` item among them switches the family before the preset is read."""
    overrides = list(overrides or [])
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "family":
            family = value.strip()
    return parse_overrides(preset(name, family), overrides)
