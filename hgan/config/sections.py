"""The config's sections: one frozen dataclass each, with the papers' settings as defaults.

* ``DataConfig``: images, captions and batches, shared by both families;
* ``HGANModel`` (HGAN §3, §3.4) and ``IATVModel`` (IATV §3, §4.2): a family's network and
  objective, the ``model`` section of a config of that family;
* ``TrainConfig``: optimisation, schedule, steps and bookkeeping;
* ``EvalConfig``: scoring.

``MODEL_SECTIONS`` is the one list of model families: a family's name and the config section
that describes its network. ``hgan.families`` maps each name to its code.
"""
from __future__ import annotations

import dataclasses
from typing import Any


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
    # Training images flipped left to right on half the draws, each flipped image's caption
    # with "left" and "right" swapped (hgan.data.mirror). Neither paper names an
    # augmentation (HGAN §4, IATV §4.2), so the paper presets have none.
    random_flip: bool = False
    max_len: int = 64  # WordPiece tokens incl. [CLS]/[SEP]
    max_phrases: int = 8  # noun phrases kept per caption (§3.2's M; the paper gives no cap)
    lower_case: bool = True
    vocab_file: str = ""  # default: {model.bert}/assets/vocab.txt
    # "bert": BERT's WordPieces (model.bert's vocab, or vocab_file); "words": the word
    # vocabulary data_prep builds from the training captions (IATV §3.2.1's one-hot words;
    # hgan-train copies the data dir's word_vocab.txt into model_dir and sets vocab_file).
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
    # Fig. 4 shows words) or "wordpieces" (one key per BERT token).
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

    @property
    def uses_phrases(self) -> bool:
        """Whether the captions' noun phrases (and so ``data.max_phrases``) matter."""
        return self.use_phrase


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
    # l2-normalised first (the regions' half of x_t then matches h_t's scale; docs/design.md).
    region_norm: str = "none"
    candidates: int = 20  # §4.2: stage-2 training pairs: each sample's k nearest (stage 1)
    # Two-stage score of a re-ranked candidate: stage 2's logit + stage1_weight · cos/τ
    # (stage 1's CMCE logit). 0 = §4.2: stage 2 alone orders the top k (docs/design.md, "IATV
    # stage 2 on the demo").
    stage1_weight: float = 0.0
    # Stage-2 pair sampling (0 = §4.2: the mined pairs as they are): the share of each batch
    # that is a mined positive, and the share of negatives that are random pairs of two
    # identities instead of stage 1's hard ones (docs/design.md, "IATV stage 2 on the demo").
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

    @property
    def uses_phrases(self) -> bool:
        """IATV reads no noun phrases."""
        return False


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
    # 0 = the run's length decides; > 0: the run ends at this step, before or after its
    # length (the schedule is unchanged)
    max_steps: int = 0
    warmup_steps: int = 0
    clip_grad_norm: float = 0.0  # > 0: the summed gradients rescaled to this global norm
    lr_decay_epochs: tuple = (40,)  # ×0.1 at each
    mixed_precision: bool = False
    # Compile each replica's forward pass and losses (and their gradients) with XLA. The
    # text side then keeps its static max_len / word slots instead of trimming each batch
    # to its longest caption (a new shape would be a new compilation); the same outputs at
    # every real token. For GPUs: on a CPU XLA's code is far slower (docs/training.md).
    jit_compile: bool = False
    seed: int = 0
    # A frozen BERT's token embeddings of the training captions are computed once and kept
    # in memory when they fit in this many GiB (hgan.training.hgan_token_cache); 0 = every
    # step.
    token_cache_gib: float = 2.0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    eval_every: int = 0  # steps between val evaluations; 0 = once per epoch
    log_every: int = 20


@dataclasses.dataclass(frozen=True)
class EvalConfig(_Section):
    """Scoring (HGAN's fused score S = S_s + S_w + S_p of the three levels of §3.3, whose
    sum the paper does not write out; IATV §4.2)."""

    score_weights: tuple = (1.0, 1.0, 1.0)  # HGAN: sentence, word, phrase
    rerank_k: int = 100  # two-stage: items of each query's stage-1 ranking re-scored
    eval_chunk: int = 256


# The model families: name → the config section of its network (``Config.model``).
MODEL_SECTIONS = {"hgan": HGANModel, "iatv": IATVModel}
FAMILY_NAMES = tuple(MODEL_SECTIONS)
# The sections every family shares.
SECTIONS = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}


def fields_of(cls) -> dict:
    """{field name: dataclasses.Field} of a section class."""
    return {f.name: f for f in dataclasses.fields(cls)}
