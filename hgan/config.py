"""The one configuration object: sections, presets, ``--set`` overrides, config.json.

``Config`` is a frozen dataclass of five parts:

* ``family``: "hgan" | "iatv", the model family (``hgan.families`` picks its code);
* ``data``: images, captions and batches (``DataConfig``), shared by both families;
* ``model``: the family's network and objective: ``HGANModel`` (§3, §3.4) or ``IATVModel``
  (IATV §3, §4.2);
* ``train``: optimisation, schedule, steps and bookkeeping (``TrainConfig``);
* ``eval``: scoring (``EvalConfig``).

``train.py`` builds it from a preset (``--config``, for ``--model``'s family) and overrides
any field with ``--set section.field=value``, or ``--set field=value`` where the name is
unique (the flat names of configs before the sections, ``iatv_*`` included, still work).
It is saved as ``{model_dir}/config.json``; ``eval.py`` and ``hgan.export`` load that file.
A config.json from before the sections (one flat dict) loads as the config it described.

Presets (``preset(name, family)``):
  * ``paper``: HGAN §4 "Implementation Details": Adam lr 2e-4, weight decay 5e-4, batch
    32, 384×192 images, ResNet-50, BERT (concat of last four layers), bi-LSTM 512, FC 512,
    k1=4, k2=2, 4×4/3×2 partitions (15 regions, Table 4); IATV §4.2: VGG-16, 512-d joint
    space, τ = 0.04, Adam 1e-4 for the LSTM, SGD for the CNN, 20 candidates.
  * ``demo``: the same families shrunk to train on the synthetic demo set on a 2-core CPU
    in a few minutes (DESIGN.md, "Demo preset", says why each value differs).
  * ``tiny``: for unit tests only.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Union

CONFIG_FILE = "config.json"
FAMILIES = ("hgan", "iatv")
# An exported SavedModel's folder for extra files (TF Serving's convention): hgan.export
# writes the config there as CONFIG_FILE.
EXPORT_EXTRA_DIR = "assets.extra"


class _Section:
    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    """Images, captions and batches (HGAN §4)."""

    image_height: int = 384
    image_width: int = 192
    # "auto": what the backbone's weights were trained with (caffe for ImageNet ResNet-50 /
    # VGG-16, [-1, 1] for InceptionV3, §4's x/256 from scratch); or "paper" | "caffe" |
    # "inception" explicitly (hgan.data.pipeline.resolve_normalization).
    normalization: str = "auto"
    random_flip: bool = True
    max_len: int = 64  # WordPiece tokens incl. [CLS]/[SEP]
    max_phrases: int = 8  # noun phrases kept per caption (§3.2)
    lower_case: bool = True
    vocab_file: str = ""  # default: {model.bert}/assets/vocab.txt
    # "bert": BERT's WordPieces (model.bert's vocab, or vocab_file); "words": the word
    # vocabulary data_prep builds from the training captions (IATV §3.2.1's one-hot words;
    # train.py copies the data dir's word_vocab.txt into model_dir and sets vocab_file).
    text_vocab: str = "bert"
    batch_size: int = 32  # global batch (§4)
    identities_per_batch: int = 0  # P of a P×K identity-aware batch; 0 = plain shuffle
    shuffle_buffer: int = 4096


@dataclasses.dataclass(frozen=True)
class HGANModel(_Section):
    """HGAN's network (§3.2–3.3, Tables 2–5, Fig. 5) and objective (§3.4)."""

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
    # identity feature buffers, with cmce_temperature and buffer_momentum). With "cmce",
    # weight_ide=0 drops Eq. 10's classifier, the pure IATV sentence objective.
    sentence_loss: str = "cmpm"
    # τ of L_pair: 0 = Eq. 11 as printed (z = vᵀ t̄); τ > 0: z = cos(v, t) / τ.
    pair_temperature: float = 0.0
    weight_ide: float = 1.0  # λ of L_sentence = L_pair + λ L_ide
    weight_word: float = 1.0
    weight_phrase: float = 1.0
    cmce_temperature: float = 0.04  # sentence_loss=cmce: IATV §4.2's τ of Eqs. 1–2
    buffer_momentum: float = 0.5  # sentence_loss=cmce: IATV §3.1.1's S_t = 0.5 S_t + 0.5 s
    num_classes: int = 0  # training identities; 0 = read from the manifest


@dataclasses.dataclass(frozen=True)
class IATVModel(_Section):
    """IATV's two stages (Li et al., ICCV 2017, §3; §4.2's settings)."""

    # §4.2: VGG-16 for CUHK-PEDES, GoogLeNet for CUB / Flowers ("googlenet": the TF-Hub
    # Inception v1 module; "inception_v3": its offline Keras stand-in, 2048-d);
    # "resnet50" | "compact_cnn" | "small_cnn" from hgan.modeling.backbones.
    backbone: str = "vgg16"
    backbone_weights: str = "imagenet"  # "imagenet" | "none" | path to a weights file
    # Only the vocabulary of this BERT is read: its WordPieces are the text side's words.
    bert: str = "https://tfhub.dev/tensorflow/bert_en_uncased_L-12_H-768_A-12/4"
    fc_units: int = 4096  # §4.2: VGG-16's fc6/fc7, the stage-1 feature is "drop7"
    embed_dim: int = 512  # §4.2: the 512-d joint space of stage 1
    word_dim: int = 512  # §3.2.1: FC on the one-hot word (width not given)
    lstm_units: int = 512  # §3.1/§3.2.1: word-LSTM hidden size (not given)
    cmce_temperature: float = 0.04  # §4.2: τ of Eqs. 1–2
    buffer_momentum: float = 0.5  # §3.1.1: S_t = 0.5 S_t + 0.5 s
    # Stage 1's loss: "cmce" (§3.1, Eq. 3) or "triplet" (Tables 2–4's "Triplet" baseline:
    # Eq. 9's bidirectional hinge over the batch's cosines, margin triplet_margin).
    stage1_loss: str = "cmce"
    triplet_margin: float = 0.2  # not given by IATV; HGAN's γ of Eq. 9
    # §4.2: SGD for the CNN (rate not given); the LSTM side's Adam uses train.learning_rate.
    cnn_learning_rate: float = 1e-3
    stage2_learning_rate: float = 0.0  # stage 2's Adam (not given); 0 = train.learning_rate
    attention_dim: int = 512  # §3.2.1: K of Eq. 6 (not given)
    decoder_steps: int = 5  # §4.2: M of the decoder LSTM
    importance_hidden: int = 512  # §3.2.2: width of f's first layer (Eq. 9; not given)
    importance_kernel: int = 1  # §3.2.2: f's kernel over words (Eq. 9 reads per word)
    fc_hidden: int = 512  # §3.2.2: the two FC layers (width not given)
    spatial_attention: bool = True  # Table 2: false = "w/o SPA"
    semantic_attention: bool = True  # Table 2: false = "w/o SMA"
    # Region features into stage 2: "none" = §4.2's pool5 as is; "l2" = each region
    # l2-normalised first (the regions' half of x_t then matches h_t's scale; DESIGN.md).
    region_norm: str = "none"
    candidates: int = 20  # §4.2: stage-2 training pairs: each sample's k nearest (stage 1)
    # Two-stage score of a re-ranked candidate: stage 2's logit + stage1_weight · cos/τ
    # (stage 1's CMCE logit). 0 = §4.2: stage 2 alone orders the top k (DESIGN.md, "IATV
    # stage 2 on the demo").
    stage1_weight: float = 0.0
    # Stage-2 pair sampling (0 = §4.2: the mined pairs as they are): the share of each batch
    # that is a mined positive, and the share of negatives that are random pairs of two
    # identities instead of stage 1's hard ones (DESIGN.md, "IATV stage 2 on the demo").
    positive_share: float = 0.0
    random_negative_share: float = 0.0
    # Table 2 "w/o ID": false = every training image is its own identity (its captions
    # share it) in the CMCE buffers and the stage-2 labels; evaluation keeps the real ones.
    identity_labels: bool = True
    # Table 2 "w/o stage-1" ("not using stage-1 network for training initialization and
    # easy result screening"): false = stage 2's CNN starts from backbone_weights (ImageNet)
    # and its text side fresh, it trains on every positive pair plus `candidates` random
    # ones per sample instead of stage 1's nearest, and evaluation adds the mode
    # "full_gallery" (stage 2 scores every pair, no screening). Stage 1 still trains.
    stage1_init: bool = True
    # Steps of the three training phases (not given in the paper); 0 = `train.epochs`
    # epochs of the training captions. One global step counter runs through them;
    # `train.max_steps` stops it early.
    stage1_steps: int = 0  # §3.1: stage 1 with the CMCE loss
    stage2_text_steps: int = 0  # §4.2: "first train the language model and fix the CNN"
    stage2_joint_steps: int = 0  # §4.2: "then fine-tune the whole network jointly"
    num_classes: int = 0  # training identities; 0 = read from the manifest


@dataclasses.dataclass(frozen=True)
class TrainConfig(_Section):
    """Optimisation (HGAN §4; IATV §4.2) and bookkeeping."""

    learning_rate: float = 2e-4  # HGAN: Adam; IATV: the LSTM side's Adam (§4.2: 1e-4)
    weight_decay: float = 5e-4
    # "l2": weight_decay · Σ ½‖w‖² over the kernels (rank ≥ 2) added to the loss, what
    # "Adam, weight decay 5e-4" meant in 2020 TensorFlow code; "decoupled": AdamW-style
    # w -= lr · wd · w (at lr 2e-4 a shrink of 1e-7 per step, no regularisation to speak of).
    weight_decay_mode: str = "l2"
    epochs: int = 60
    # HGAN: > 0 = a run of this many steps whatever the data's size (the demo's budget on a
    # 2-core CPU); the schedule then treats steps/epochs steps as an epoch, so
    # lr_decay_epochs fall at the same fractions of the run. 0 = epochs of the training set.
    steps: int = 0
    max_steps: int = 0  # 0 = the run's length decides; > 0 stops there (schedule unchanged)
    warmup_steps: int = 0
    clip_grad_norm: float = 0.0  # > 0: the summed gradients rescaled to this global norm
    lr_decay_epochs: tuple = (40,)  # ×0.1 at each
    mixed_precision: bool = False
    seed: int = 0
    # A frozen BERT's token embeddings of the training captions are computed once and kept
    # in memory when they fit in this many GiB (hgan.modeling.hgan.token_cache); 0 = every
    # step.
    token_cache_gib: float = 2.0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    eval_every: int = 0  # steps between val evaluations; 0 = once per epoch
    log_every: int = 20


@dataclasses.dataclass(frozen=True)
class EvalConfig(_Section):
    """Scoring (HGAN §3.5; IATV §4.2)."""

    score_weights: tuple = (1.0, 1.0, 1.0)  # HGAN: sentence, word, phrase
    rerank_k: int = 100  # two-stage: items of each query's stage-1 ranking re-scored
    eval_chunk: int = 256


MODEL_SECTIONS = {"hgan": HGANModel, "iatv": IATVModel}
SECTIONS = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}

# Flat names of the configs before the sections that are not a section field's own name.
_LEGACY_IATV = {
    "iatv_backbone": "backbone", "iatv_fc_units": "fc_units", "iatv_embed_dim": "embed_dim",
    "iatv_word_dim": "word_dim", "iatv_lstm_units": "lstm_units",
    "iatv_temperature": "cmce_temperature", "iatv_buffer_momentum": "buffer_momentum",
    "iatv_cnn_learning_rate": "cnn_learning_rate", "iatv_attention_dim": "attention_dim",
    "iatv_decoder_steps": "decoder_steps", "iatv_importance_hidden": "importance_hidden",
    "iatv_importance_kernel": "importance_kernel", "iatv_fc_hidden": "fc_hidden",
    "iatv_spatial_attention": "spatial_attention",
    "iatv_semantic_attention": "semantic_attention", "iatv_candidates": "candidates",
    "iatv_identity_labels": "identity_labels", "iatv_stage1_init": "stage1_init",
    "iatv_stage1_steps": "stage1_steps", "iatv_stage2_text_steps": "stage2_text_steps",
    "iatv_stage2_joint_steps": "stage2_joint_steps",
}
# Old names that stood for two of today's fields: IATV's iatv_candidates was both its mining
# k and what evaluation re-ranked.
_LEGACY_ALSO = {"iatv_candidates": ("eval", "rerank_k")}
# Values of fields added later, for flat config.json files that predate them.
LEGACY_DEFAULTS = {"word_keys": "wordpieces", "weight_decay_mode": "decoupled"}


def _fields(cls) -> dict:
    return {f.name: f for f in dataclasses.fields(cls)}


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on: ``family``, ``data``, ``model``, ``train``, ``eval``."""

    family: str = "hgan"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: Union[HGANModel, IATVModel] = dataclasses.field(default_factory=HGANModel)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; choose from {FAMILIES}")
        if not isinstance(self.model, MODEL_SECTIONS[self.family]):
            raise ValueError(f"a {self.family} config needs a "
                             f"{MODEL_SECTIONS[self.family].__name__} model section, got "
                             f"{type(self.model).__name__}")

    # --- names ------------------------------------------------------------------------
    def locate(self, name: str) -> tuple[str, str]:
        """(section, field) of ``section.field``, of a field name unique over this config's
        sections, or of a flat name from before the sections (``iatv_*``,
        ``iatv_learning_rate``)."""
        if "." in name:
            section, field = name.split(".", 1)
            cls = MODEL_SECTIONS[self.family] if section == "model" else SECTIONS.get(section)
            if cls is None or field not in _fields(cls):
                raise ValueError(f"unknown config field {name!r}; known: {self.names()}")
            return section, field
        if self.family == "iatv" and name == "iatv_learning_rate":
            return "train", "learning_rate"
        if name in _LEGACY_IATV:
            if self.family != "iatv":
                raise ValueError(f"{name} is an IATV field; this config is {self.family!r} "
                                 f"(--model=iatv)")
            return "model", _LEGACY_IATV[name]
        owners = [s for s, cls in self._section_classes().items() if name in _fields(cls)]
        if len(owners) != 1:
            raise ValueError(f"unknown config field {name!r}; known: {self.names()}")
        return owners[0], name

    def _section_classes(self) -> dict:
        return {"data": DataConfig, "model": MODEL_SECTIONS[self.family],
                "train": TrainConfig, "eval": EvalConfig}

    def names(self) -> list[str]:
        """Every ``section.field`` of this config."""
        return sorted(f"{s}.{f}" for s, cls in self._section_classes().items()
                      for f in _fields(cls))

    def get(self, name: str) -> Any:
        section, field = self.locate(name)
        return getattr(getattr(self, section), field)

    def flat(self) -> dict:
        """{"family": ..., "section.field": value, ...}."""
        out = {"family": self.family}
        for section in self._section_classes():
            out.update({f"{section}.{k}": v
                        for k, v in dataclasses.asdict(getattr(self, section)).items()})
        return out

    # --- changes ----------------------------------------------------------------------
    def replace(self, **changes: Any) -> "Config":
        """A copy with ``changes``: sections (``data=DataConfig(...)``), ``family`` (or
        ``model="iatv"``, as before the sections: the new family's default model section,
        the other sections kept), or field names as ``locate`` reads them."""
        family = changes.pop("family", None)
        if isinstance(changes.get("model"), str):
            family = changes.pop("model")
        config = self
        if family is not None and family != self.family:
            if family not in FAMILIES:
                raise ValueError(f"unknown model family {family!r}; choose from {FAMILIES}")
            config = dataclasses.replace(self, family=family, model=MODEL_SECTIONS[family]())
        whole = {k: changes.pop(k) for k in list(changes) if k in ("data", "model", "train",
                                                                    "eval")}
        if whole:
            config = dataclasses.replace(config, **whole)
        grouped: dict = {}
        for name, value in changes.items():
            section, field = config.locate(name)
            grouped.setdefault(section, {})[field] = value
            if name in _LEGACY_ALSO:
                also_section, also_field = _LEGACY_ALSO[name]
                grouped.setdefault(also_section, {}).setdefault(also_field, value)
        if grouped:
            config = dataclasses.replace(config, **{
                s: getattr(config, s).replace(**v) for s, v in grouped.items()})
        return config

    # --- config.json ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"family": self.family,
                **{s: dataclasses.asdict(getattr(self, s)) for s in self._section_classes()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        """A config from ``to_dict``'s layout, or from a flat dict of before the sections."""
        if "data" not in values:
            return cls.from_flat(values)
        family = values.get("family", "hgan")
        if family not in FAMILIES:
            raise ValueError(f"unknown model family {family!r}; choose from {FAMILIES}")
        unknown = sorted(set(values) - {"family", "data", "model", "train", "eval"})
        if unknown:
            raise ValueError(f"unknown config sections: {unknown}")
        sections = {"data": DataConfig, "model": MODEL_SECTIONS[family],
                    "train": TrainConfig, "eval": EvalConfig}
        built = {s: _section_from_dict(c, values.get(s, {}), s) for s, c in sections.items()}
        return cls(family=family, **built)

    @classmethod
    def from_flat(cls, values: dict) -> "Config":
        """A flat config.json of before the sections (fields of both families in one dict)
        → the config it described."""
        values = {**LEGACY_DEFAULTS, **values}
        family = values.pop("model", "hgan")
        config = cls().replace(family=family)
        known = set(_fields(HGANModel)) | set(_fields(IATVModel)) | set(_fields(DataConfig)) \
            | set(_fields(TrainConfig)) | set(_fields(EvalConfig)) | set(_LEGACY_IATV) \
            | {"iatv_learning_rate"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config fields: {unknown}")
        changes = {}
        for name, value in values.items():
            if family == "hgan" and (name in _LEGACY_IATV or name == "iatv_learning_rate"):
                # HGAN read two of them (sentence_loss=cmce); the rest were IATV's.
                if name in ("iatv_temperature", "iatv_buffer_momentum"):
                    changes[_LEGACY_IATV[name]] = value
                continue
            if family == "iatv":
                if name == "learning_rate":  # HGAN's; IATV's LSTM rate was iatv_learning_rate
                    continue
                if name in _fields(HGANModel) and name not in _fields(IATVModel):
                    continue  # HGAN's model fields, unused by an IATV run
                if name in ("backbone", "lstm_units", "embed_dim"):
                    continue  # HGAN's of the same name; IATV's were iatv_*
            changes[name] = value
        if family == "iatv":
            # IATV's evaluation re-ranked iatv_candidates per query.
            changes["rerank_k"] = values.get("iatv_candidates", IATVModel.candidates)
        converted = {}
        for name, value in changes.items():
            section, field = config.locate(name)
            default = _fields(config._section_classes()[section])[field].default
            converted[name] = tuple(value) if isinstance(default, tuple) else value
        return config.replace(**converted)

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
            return cls.from_dict(json.load(f))


def load_export_config(savedmodel: str) -> Optional[Config]:
    """The config an exported SavedModel was made from (``assets.extra/config.json``, by
    ``hgan.export``); None for an export written before that file existed."""
    folder = os.path.join(savedmodel, EXPORT_EXTRA_DIR)
    if not os.path.exists(os.path.join(folder, CONFIG_FILE)):
        return None
    return Config.load(folder)


def _section_from_dict(cls, values: dict, name: str):
    fields = _fields(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown fields in config section {name!r}: {unknown}")
    return cls(**{k: tuple(v) if isinstance(fields[k].default, tuple) else v
                  for k, v in values.items()})


# --- presets ------------------------------------------------------------------------------
_DEMO_DATA = DataConfig(image_height=128, image_width=64, max_len=40, max_phrases=6,
                        batch_size=32, identities_per_batch=8, shuffle_buffer=2048)
_TINY_DATA = DataConfig(image_height=64, image_width=32, max_len=16, max_phrases=3,
                        batch_size=8, shuffle_buffer=64)
_TINY_TRAIN = TrainConfig(epochs=1, checkpoint_every=5, log_every=1)

_PRESETS = {
    "paper": {
        "hgan": Config(),
        # §3.2.1: one-hot words over the data's word vocabulary, not BERT's WordPieces.
        "iatv": Config(family="iatv", model=IATVModel(),
                       data=DataConfig(text_vocab="words"),
                       train=TrainConfig(learning_rate=1e-4), eval=EvalConfig(rerank_k=20)),
    },
    "demo": {
        # Short from-scratch runs (DESIGN.md, "Demo preset"): the compact CNN, L_pair as
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
            # §4.2's plain mini-batches, not HGAN's 8 identities × 4: with P×K each identity's
            # buffer rows went stale between visits (DESIGN.md, "IATV stage 2 on the demo").
            family="iatv", data=dataclasses.replace(_DEMO_DATA, identities_per_batch=0),
            # DESIGN.md "IATV stage 2 on the demo": the compact CNN at SGD 0.01 (stage 1
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
# HGAN's preset of each name (the IATV ones: ``preset(name, "iatv")``).
PRESETS = {name: by_family["hgan"] for name, by_family in _PRESETS.items()}


def preset(name: str, family: str = "hgan") -> Config:
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(_PRESETS)}")
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose from {FAMILIES}")
    return _PRESETS[name][family]


def parse_overrides(base: Config, overrides: list[str]) -> Config:
    """Applies ``["name=value", ...]`` (names as ``Config.locate`` reads them), each value
    read as the type of the field's default: tuples as ``4,4``, ``[4,4]`` or ``(4,)``
    (``none``, ``()``, ``[]`` or nothing: empty), booleans as true/false, yes/no or 1/0 in
    any case, numbers, else the string as written; a ``family=`` / ``model=`` item switches
    the family first."""
    config = base
    items = []
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not field=value")
        name, raw = (part.strip() for part in item.split("=", 1))
        if name in ("family", "model"):
            config = config.replace(family=raw)
        else:
            items.append((name, raw))
    changes: dict[str, Any] = {}
    for name, raw in items:
        section, field = config.locate(name)
        default = _fields(config._section_classes()[section])[field].default
        changes[f"{section}.{field}"] = _parse_value(raw, default, name)
        if name in _LEGACY_ALSO:
            changes.setdefault(".".join(_LEGACY_ALSO[name]), changes[f"{section}.{field}"])
    grouped: dict = {}
    for key, value in changes.items():
        section, field = key.split(".")
        grouped.setdefault(section, {})[field] = value
    return dataclasses.replace(config, **{s: getattr(config, s).replace(**v)
                                          for s, v in grouped.items()})


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


def resolve(name: str, overrides: Optional[list[str]] = None) -> Config:
    """``preset(name, family)`` with ``overrides`` applied; the family comes from a
    ``model=`` / ``family=`` override (default hgan)."""
    overrides = list(overrides or [])
    family = "hgan"
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in ("model", "family") and "=" in item:
            family = item.split("=", 1)[1].strip()
    return parse_overrides(preset(name, family), overrides)
