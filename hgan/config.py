"""The one configuration object: presets, flag overrides, JSON beside the checkpoints.

``Config`` is a frozen dataclass. ``train.py`` builds it from a preset (``--config``) and
overrides any field with ``--set field=value`` style flags; it is saved as
``{model_dir}/config.json`` and ``eval.py`` / ``hgan.export`` load that file instead of
re-deriving anything.

Presets:
  * ``paper``: §4 "Implementation Details" of HGAN: Adam lr 2e-4, weight decay 5e-4,
    batch 32, 384×192 images ×1/256, ResNet-50, BERT (concat of last four layers),
    bi-LSTM 512, FC 512, k1=4, k2=2, 4×4/3×2 partitions (15 regions, Table 4).
  * ``demo``: the same model family shrunk to train on the synthetic demo set on a 2-core CPU
    in a few minutes (``compact_cnn``, whose 16×8 map at 128×64 needs no resizing, 128-d
    heads, the converted all-MiniLM-L6-v2 as BERT, L_pair as cos/τ with τ = 0.1, decoupled
    weight decay, 50 warmup steps, gumbel_scale 8; with ``--model=iatv`` the small CNN and 128-d IATV
    towers, 300 + 100 + 100 steps).
  * ``tiny``: for unit tests only.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on. Field comments name the paper section they follow."""

    # --- model family --------------------------------------------------------------
    model: str = "hgan"  # "hgan" | "iatv"

    # --- data (§4) ---------------------------------------------------------------------
    image_height: int = 384
    image_width: int = 192
    # "auto": what the backbone's weights were trained with (caffe for ImageNet ResNet-50 /
    # VGG-16, [-1, 1] for InceptionV3, §4's x/256 from scratch); or "paper" | "caffe" |
    # "inception" explicitly (hgan.data.resolve_normalization).
    normalization: str = "auto"
    random_flip: bool = True
    max_len: int = 64  # WordPiece tokens incl. [CLS]/[SEP]
    max_phrases: int = 8  # noun phrases kept per caption (§3.2)
    lower_case: bool = True
    vocab_file: str = ""  # default: {bert}/assets/vocab.txt
    batch_size: int = 32  # global batch (§4)
    identities_per_batch: int = 0  # P of a P×K identity-aware batch; 0 = plain shuffle
    shuffle_buffer: int = 4096

    # --- visual tower (§3.2, Table 4) ------------------------------------------------
    # "resnet50" | "resnet18" | "compact_cnn" (CPU demo) | "small_cnn" (tests)
    backbone: str = "resnet50"
    backbone_weights: str = "imagenet"  # "imagenet" | "none" | path to a weights file
    # BatchNorm statistics over the global batch of all replicas (as on the paper's single
    # GPU); false: each replica's own slice, as usual under MirroredStrategy.
    sync_batchnorm: bool = False
    partition_map: tuple = (16, 8)  # map V is resized to this before partitioning; () = as is
    word_pool: tuple = (4, 4)  # kernel of the word-level partition pooling (Table 4)
    word_stride: tuple = (3, 2)
    phrase_pool: tuple = (4, 4)  # kernel of the phrase-level partition pooling
    phrase_stride: tuple = (3, 2)

    # --- text tower (§3.2, Table 2) --------------------------------------------------
    bert: str = "https://tfhub.dev/tensorflow/bert_en_uncased_L-12_H-768_A-12/4"
    bert_layers: str = "concat4"  # "last" | "second_to_last" | "concat4"
    bert_trainable: bool = False
    # A frozen BERT's token embeddings of the training captions are computed once and kept
    # in memory when they fit in this many GiB (hgan.token_cache); 0 = every step.
    token_cache_gib: float = 2.0
    lstm_units: int = 512  # per direction; T_g = concat(fwd, bwd) (§4: bi-LSTM 512)
    attention_heads: int = 8  # the one self-attention layer over words / phrases
    # Keys of the word level: "words" (each word's WordPieces averaged, no punctuation;
    # Fig. 4 shows words) or "wordpieces" (one key per BERT token, as runs before it did).
    word_keys: str = "words"

    # --- matching heads (§3.3, Table 3, Table 5, Fig. 5) ------------------------------
    local_dim: int = 512  # C' of V_w, V_p, T_w, T_p (§4: FC layers 512)
    embed_dim: int = 512  # sentence-level joint space
    mlp_hidden: int = 512  # hidden width of the MLPs of Eqs. 2 and 8
    attention: str = "gumbel"  # "gumbel" | "soft" ("HGAN w/o Gumbel", Eqs. 3-4)
    k1: int = 4  # image-to-text: words selected per region (Fig. 5)
    k2: int = 2  # text-to-image: regions selected per word
    # The phrase head's own k1 / k2 (Fig. 5 sweeps the word level only); 0 = k1 / k2.
    phrase_k1: int = 0
    phrase_k2: int = 0
    temperature: float = 1.0  # E of Algorithm 1
    # s of GumbelTopK: Algorithm 1's l2-normalised γ' is multiplied by it before the noise
    # (1 = as printed, where the noise all but decides the training-time selection).
    gumbel_scale: float = 1.0
    # ε of line 8's norm √(‖γ‖² + ε): 1e-12 a numerical guard; 1 keeps the straight-through
    # gradient of near-zero rows bounded (hgan.layers.gumbel_topk).
    gumbel_norm_epsilon: float = 1e-12
    use_word: bool = True  # Table 3 rows
    use_phrase: bool = True
    use_sentence: bool = True
    use_bert: bool = True  # Table 3 "BERT" column off: trainable word embeddings instead
    dropout: float = 0.1

    # --- losses (§3.4) ------------------------------------------------------------------
    margin: float = 0.2  # γ of Eq. 9
    hardest_negative: bool = False  # Eq. 9 sums over negatives; True = VSE++ hardest
    weight_pair: float = 1.0  # L_pair (Eq. 11)
    # L_pair's form: "cmpm" (HGAN Eq. 11) or "cmce" (IATV Eqs. 1–3: cross-entropy against
    # identity feature buffers, with iatv_temperature and iatv_buffer_momentum). With
    # "cmce", weight_ide=0 drops Eq. 10's classifier, the pure IATV sentence objective.
    sentence_loss: str = "cmpm"
    # τ of L_pair: 0 = Eq. 11 as printed (z = vᵀ t̄); τ > 0: z = cos(v, t) / τ.
    pair_temperature: float = 0.0
    weight_ide: float = 1.0  # λ of L_sentence = L_pair + λ L_ide
    weight_word: float = 1.0
    weight_phrase: float = 1.0
    num_classes: int = 0  # training identities; 0 = read from the manifest

    # --- optimisation (§4) ----------------------------------------------------------
    learning_rate: float = 2e-4
    weight_decay: float = 5e-4
    # "l2": weight_decay · Σ ½‖w‖² over the kernels (rank ≥ 2) added to the loss, what
    # "Adam, weight decay 5e-4" meant in 2020 TensorFlow code; "decoupled": AdamW-style
    # w -= lr · wd · w (at lr 2e-4 a shrink of 1e-7 per step, no regularisation to speak of).
    weight_decay_mode: str = "l2"
    epochs: int = 60
    max_steps: int = 0  # 0 = epochs decide
    warmup_steps: int = 0
    clip_grad_norm: float = 0.0  # > 0: the summed gradients rescaled to this global norm
    lr_decay_epochs: tuple = (40,)  # ×0.1 at each
    mixed_precision: bool = False
    seed: int = 0

    # --- bookkeeping ------------------------------------------------------------------
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    eval_every: int = 0  # steps between val evaluations; 0 = once per epoch
    log_every: int = 20

    # --- evaluation -----------------------------------------------------------------
    score_weights: tuple = (1.0, 1.0, 1.0)  # sentence, word, phrase
    rerank_k: int = 100
    eval_chunk: int = 256

    # --- IATV (Li et al., ICCV 2017; hgan/iatv) -----------------------------------------
    # §4.2: VGG-16 for CUHK-PEDES; "inception_v3" stands in for GoogLeNet (CUB, Flowers);
    # "resnet50" | "small_cnn" (CPU tests) reuse hgan.visual.build_backbone.
    iatv_backbone: str = "vgg16"
    iatv_fc_units: int = 4096  # §4.2: VGG-16's fc6/fc7, the stage-1 feature is "drop7"
    iatv_embed_dim: int = 512  # §4.2: the 512-d joint space of stage 1
    iatv_word_dim: int = 512  # §3.2.1: FC on the one-hot word (width not given)
    iatv_lstm_units: int = 512  # §3.1/§3.2.1: word-LSTM hidden size (not given)
    iatv_temperature: float = 0.04  # §4.2: τ of Eqs. 1–2
    iatv_buffer_momentum: float = 0.5  # §3.1.1: S_t = 0.5 S_t + 0.5 s
    iatv_learning_rate: float = 1e-4  # §4.2: Adam for the LSTM
    iatv_cnn_learning_rate: float = 1e-3  # §4.2: SGD for the CNN (rate not given)
    iatv_attention_dim: int = 512  # §3.2.1: K of Eq. 6 (not given)
    iatv_decoder_steps: int = 5  # §4.2: M of the decoder LSTM
    iatv_importance_hidden: int = 512  # §3.2.2: width of f's first layer (Eq. 9; not given)
    iatv_importance_kernel: int = 1  # §3.2.2: f's kernel over words (Eq. 9 reads per word)
    iatv_fc_hidden: int = 512  # §3.2.2: the two FC layers (width not given)
    iatv_spatial_attention: bool = True  # Table 2: false = "w/o SPA"
    iatv_semantic_attention: bool = True  # Table 2: false = "w/o SMA"
    iatv_candidates: int = 20  # §4.2: k most similar of the other modality from stage 1
    # Table 2 "w/o ID": false = every training image is its own identity (its captions
    # share it) in the CMCE buffers and the stage-2 labels; evaluation keeps the real ones.
    iatv_identity_labels: bool = True
    # Table 2 "w/o stage-1": false = stage 2 starts from fresh weights and trains on random
    # pairs (the same number per sample) instead of stage 1's nearest; stage 1 still
    # trains, for evaluation's screening of each query's top iatv_candidates.
    iatv_stage1_init: bool = True
    # Steps of the three training phases (not given in the paper); 0 = `epochs` epochs of
    # the training captions (train captions // batch_size steps each). One global step
    # counter runs through them; `max_steps` stops it early.
    iatv_stage1_steps: int = 0  # §3.1: stage 1 with the CMCE loss
    iatv_stage2_text_steps: int = 0  # §4.2: "first train the language model and fix the CNN"
    iatv_stage2_joint_steps: int = 0  # §4.2: "then fine-tune the whole network jointly"

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown config fields: {unknown}")
        converted = {}
        for name, value in values.items():
            default = fields[name].default
            converted[name] = tuple(value) if isinstance(default, tuple) else value
        return cls(**converted)

    def save(self, model_dir: str) -> str:
        os.makedirs(model_dir, exist_ok=True)
        path = os.path.join(model_dir, CONFIG_FILE)
        tmp = f"{path}.tmp{os.getpid()}"  # unique: several workers may save at once
        with open(tmp, "w") as f:
            f.write(self.to_json())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, model_dir: str) -> "Config":
        path = os.path.join(model_dir, CONFIG_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no {CONFIG_FILE} in {model_dir}: is it a train.py model_dir?")
        with open(path) as f:
            values = json.load(f)
        # A config.json written before a field existed describes the behaviour of that time.
        return cls.from_dict({**LEGACY_DEFAULTS, **values})


# Values of fields added later, for config.json files that predate them.
LEGACY_DEFAULTS = {"word_keys": "wordpieces", "weight_decay_mode": "decoupled"}

PRESETS = {
    "paper": Config(),
    "demo": Config(
        image_height=128, image_width=64, backbone="compact_cnn", backbone_weights="none",
        partition_map=(16, 8), max_len=40, max_phrases=6, batch_size=32,
        identities_per_batch=8, lstm_units=128, attention_heads=4, local_dim=128,
        embed_dim=128, mlp_hidden=128, epochs=20, learning_rate=3e-4, lr_decay_epochs=(15,),
        # Short from-scratch runs (DESIGN.md, "Demo preset"): L_pair as cos/τ, AdamW's
        # decoupled decay (coupled L2 under Adam erodes weakly-used weights by ~lr a
        # step), a 50-step warmup, Gumbel top-k sampling that γ decides (scale 8).
        pair_temperature=0.1, weight_decay_mode="decoupled", warmup_steps=50,
        gumbel_scale=8.0,
        checkpoint_every=60, eval_every=60, log_every=20, shuffle_buffer=2048, rerank_k=20,
        # --model=iatv on the demo set: the same small CNN, 128-d towers, short phases.
        iatv_backbone="small_cnn", iatv_fc_units=256, iatv_embed_dim=128, iatv_word_dim=128,
        iatv_lstm_units=128, iatv_attention_dim=128, iatv_importance_hidden=128,
        iatv_fc_hidden=128, iatv_learning_rate=1e-3, iatv_stage1_steps=300,
        iatv_stage2_text_steps=100, iatv_stage2_joint_steps=100,
    ),
    "tiny": Config(
        image_height=64, image_width=32, backbone="small_cnn", backbone_weights="none",
        partition_map=(16, 8), max_len=16, max_phrases=3, batch_size=8, lstm_units=16,
        attention_heads=2, local_dim=16, embed_dim=16, mlp_hidden=16, epochs=1,
        checkpoint_every=5, log_every=1, shuffle_buffer=64, rerank_k=4, eval_chunk=8,
        dropout=0.0,
    ),
}


def parse_overrides(base: Config, overrides: list[str]) -> Config:
    """Applies ``["field=value", ...]``, each value read as the type of the field's default:
    tuples as ``4,4``, ``[4,4]`` or ``(4,)`` (``none``, ``()``, ``[]`` or nothing: empty),
    booleans as true/false, yes/no or 1/0 in any case, numbers, else the string as written.
    """
    fields = {f.name: f for f in dataclasses.fields(Config)}
    changes: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not field=value")
        name, raw = item.split("=", 1)
        name = name.strip()
        if name not in fields:
            raise ValueError(f"unknown config field {name!r}; known: {sorted(fields)}")
        default = fields[name].default
        changes[name] = _parse_value(raw.strip(), default, name)
    return base.replace(**changes)


def _parse_value(raw: str, default: Any, name: str) -> Any:
    if isinstance(default, tuple):
        if raw in ("", "()", "[]", "none"):
            return ()
        parts = raw.strip("[]()").split(",")
        try:
            return tuple(type(default[0] if default else 1.0)(p) if default else _number(p)
                         for p in parts if p.strip())
        except ValueError as e:
            raise ValueError(f"{name}: cannot parse {raw!r} as a tuple") from e
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes"):
            return True
        if raw.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"{name}: expected true/false, got {raw!r}")
    if isinstance(default, (int, float)):
        try:
            return type(default)(float(raw)) if isinstance(default, float) else int(raw)
        except ValueError as e:
            raise ValueError(f"{name}: expected a number, got {raw!r}") from e
    return raw


def _number(text: str) -> float:
    value = float(text)
    return int(value) if value.is_integer() else value


def resolve(preset: str, overrides: Optional[list[str]] = None) -> Config:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return parse_overrides(PRESETS[preset], overrides or [])
