"""IATV's training task (§3.1, §3.2, §4.2) for ``hgan.training.loop``.

One global step counter runs through three phases (lengths ``model.stage1_steps``,
``model.stage2_text_steps``, ``model.stage2_joint_steps``; ``train.max_steps`` stops early):

1. ``stage1``: the CNN–LSTM with the CMCE loss (Eqs. 1–3). Before the first step the
   identity buffers V and S are filled by one pass over the training set (per-identity mean,
   §3.1.1); every step then updates the batch's rows (Fig. 2 Step-2).
2. ``stage2_text``: stage 1 mines each training caption's and image's ``model.candidates``
   (§4.2: 20) nearest samples of the other modality (``iatv_pairs.mine_pairs``); stage 2 is
   initialised from stage 1 (``IATV.initialize_stage2``) and trained on those pairs with
   Eq. 12's binary cross-entropy, the CNN frozen: "we first train the language model and
   fix the CNN model" (§4.2).
3. ``stage2_joint``: the same pairs, "then fine-tune the whole network jointly".

The phases' optimizers follow §4.2 (Adam for the language side, SGD for the CNN). The
checkpoint holds the model, the identity buffers, the four optimizers and the step. The
mined pairs are not stored: stage 1 does not change after its phase, so mining again on
resume gives the same pairs.

Model selection: stage 1 is taken at its last step (its weights are what mining and stage 2
start from); during stage 1 val stage-1 metrics are only logged; during stage 2 the val
text-to-image R1 of the ranking the model reports selects: **two-stage**, or for Table 2's
"w/o stage-1" (``stage1_init=false``) **full-gallery** (stage 2 scores every val pair, as
its test figure does).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from hgan.config import Config
from hgan.data import pipeline
from hgan.evaluation import iatv_scoring
from hgan.modeling import losses
from hgan.modeling.iatv import stage2
from hgan.modeling.iatv.model import IATV
from hgan.tf_compat import keras, tf
from hgan.training import iatv_pairs, optim, run_dir
from hgan.training.buffers import IdentityBuffers
from hgan.training.distribution import FINITE, gather_tree, make_strategy, replicated
from hgan.training.loop import Task, seed_everything

PHASES = ("stage1", "stage2_text", "stage2_joint")
LOSS = {"stage1": "cmce", "stage2_text": "bce", "stage2_joint": "bce"}  # stage1: its loss


def phase_steps(config: Config, per_epoch: int) -> dict:
    """Steps of each phase; a 0 field means ``epochs`` epochs of the training captions."""
    default = config.train.epochs * per_epoch
    return {"stage1": config.model.stage1_steps or default,
            "stage2_text": config.model.stage2_text_steps or default,
            "stage2_joint": config.model.stage2_joint_steps or default}


def make_optimizers(config: Config, stage: int = 1) -> dict:
    """§4.2: Adam (lr 1e-4) for the LSTM side, SGD for the CNN (momentum 0.9: not given).
    Stage 2's Adam uses ``model.stage2_learning_rate`` when it is set (the paper gives no
    stage-2 rate; 0 = ``train.learning_rate``)."""
    rate = config.train.learning_rate
    if stage == 2 and config.model.stage2_learning_rate > 0:
        rate = config.model.stage2_learning_rate
    return {"image": keras.optimizers.SGD(config.model.cnn_learning_rate, momentum=0.9),
            "text": keras.optimizers.Adam(rate)}


STAGE1_LOSSES = ("cmce", "triplet")


def stage1_loss(config: Config, image, text, labels, buffers: IdentityBuffers,
                temperature: float):
    """Stage 1's loss of the gathered batch: CMCE (Eq. 3) against the identity buffers, or
    the "Triplet" baseline of Tables 2–4: Eq. 9's bidirectional hinge over the batch's
    cosines (the embeddings are l2-normalised), same-identity pairs not negatives."""
    kind = config.model.stage1_loss
    if kind == "cmce":
        return losses.cmce_loss(image, text, labels, buffers.image, buffers.text, temperature)
    if kind == "triplet":
        return losses.triplet_ranking_loss(tf.matmul(text, image, transpose_b=True), labels,
                                           labels, config.model.triplet_margin)
    raise ValueError(f"unknown stage1_loss {kind!r}; choose from {STAGE1_LOSSES}")


def stage1_replica_step(model, buffers: IdentityBuffers, optimizers: dict, batch: dict,
                        temperature: float) -> dict:
    """One stage-1 iteration of Fig. 2 in replica context: the loss (``stage1_loss``: CMCE,
    Eq. 3, or the triplet baseline) of the gathered global batch (scaled by 1/N: the summed
    gradients are the global gradient), the CNN and LSTM updated (Step-1), then the buffers
    with the gathered features (Step-2, applied once; skipped with the step when anything
    was non-finite). The result's key is the loss's name."""
    ctx = tf.distribute.get_replica_context()
    with tf.GradientTape() as tape:
        out = model(batch, training=True)
        image, text, labels = gather_tree(
            (out["image"], out["text"], tf.cast(batch["label"], tf.int32)))
        loss = stage1_loss(model.config, image, text, labels, buffers, temperature)
        scaled = loss / ctx.num_replicas_in_sync
    groups = [(optimizers["image"], model.image_tower.trainable_variables),
              (optimizers["text"], model.text_tower.trainable_variables)]
    finite = optim.apply_by_group(tape, scaled, groups)
    buffers.update(image, text, labels, when=finite)
    return {model.config.model.stage1_loss: loss, FINITE: tf.cast(finite, tf.float32)}


def make_stage1_step(model, buffers: IdentityBuffers, optimizers: dict,
                     strategy: Optional[tf.distribute.Strategy] = None, temperature=None):
    """A compiled stage-1 ``step(distributed_batch) -> {stage1_loss, FINITE}`` over ``strategy``
    for a bare ``Stage1`` (build model, buffers and optimizers in ``strategy.scope()``)."""
    strategy = strategy or tf.distribute.get_strategy()
    tau = model.config.model.cmce_temperature if temperature is None else temperature
    with strategy.scope():
        optimizers["image"].build(model.image_tower.trainable_variables)
        optimizers["text"].build(model.text_tower.trainable_variables)
    return replicated(strategy, lambda b: stage1_replica_step(model, buffers, optimizers, b,
                                                              tau))


class IATVTask(Task):
    """The IATV model, the identity buffers, the optimizers of both stages and the steps."""

    def __init__(self, config: Config, data_dir: str, val_split: Optional[str] = None,
                 strategy: Optional[tf.distribute.Strategy] = None):
        if config.family != "iatv":
            raise ValueError(f"config.family is {config.family!r}; this trains iatv")
        if config.train.mixed_precision:
            raise ValueError("mixed_precision is not supported for iatv")
        if config.model.stage1_loss not in STAGE1_LOSSES:
            raise ValueError(f"unknown stage1_loss {config.model.stage1_loss!r}; choose from "
                             f"{STAGE1_LOSSES}")
        self.config, self.data_dir, self.val_split = config, data_dir, val_split
        seed_everything(config.train.seed)
        self.manifest = pipeline.load_manifest(data_dir)
        if "train" not in self.manifest["splits"]:
            raise ValueError(f"{data_dir} has no train split")
        train = self.manifest["splits"]["train"]
        # "w/o ID" (Table 2): every training image is an identity.
        self.num_identities = ((config.model.num_classes or train["identities"])
                               if config.model.identity_labels else train["images"])
        self.strategy = strategy or make_strategy()
        self.tokenizer = pipeline.make_tokenizer(config)
        self.per_epoch = run_dir.steps_per_epoch(self.manifest, config)
        lengths = phase_steps(config, self.per_epoch)
        self.phase_end = dict(zip(PHASES, np.cumsum([lengths[p] for p in PHASES]).tolist()))
        with self.strategy.scope():
            self.model = IATV(config, self.tokenizer.vocab_size + 1)
            self.buffers = IdentityBuffers(self.num_identities, config.model.embed_dim,
                                           config.model.buffer_momentum)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.stage1_optimizers = make_optimizers(config)
            # Stage 2 gets fresh optimizers under the same rule: Adam for the language side
            # (the whole matcher), SGD for the CNN.
            self.stage2_optimizers = make_optimizers(config, stage=2)
            # Slots exist before a restore, so a checkpoint can fill them.
            self.stage1_optimizers["image"].build(self.model.stage1.image_tower.trainable_variables)
            self.stage1_optimizers["text"].build(self.model.stage1.text_tower.trainable_variables)
            self.stage2_optimizers["text"].build(self.model.matcher.trainable_variables)
            self.stage2_optimizers["image"].build(self.model.stage2_cnn.trainable_variables)
        self._steps = {}

    def checkpoint_items(self) -> dict:
        return {"buffers": self.buffers,
                "stage1_cnn_optimizer": self.stage1_optimizers["image"],
                "stage1_lstm_optimizer": self.stage1_optimizers["text"],
                "stage2_cnn_optimizer": self.stage2_optimizers["image"],
                "stage2_text_optimizer": self.stage2_optimizers["text"]}

    # --- stage 1 ----------------------------------------------------------------------
    def begin(self, start_step: int, log: Callable[[str], None] = print) -> None:
        if start_step == 0:
            self.initialize_buffers(log)

    def initialize_buffers(self, log: Callable[[str], None] = print) -> None:
        """§3.1.1: "before the first iteration" every identity's rows are the mean of its
        samples' features, from one pass over the training set."""
        texts, images = self._train_features()
        self.buffers.fill(images["embedding"], images["label"], texts["embedding"],
                          texts["label"], log)

    def _train_features(self) -> tuple[dict, dict]:
        """Stage-1 features of the training split, labelled as training sees them (by
        image under "w/o ID")."""
        texts, images = iatv_scoring.encode_split(self.model, self.data_dir, self.config,
                                                  "train", self.tokenizer, regions=False)
        if not self.config.model.identity_labels:
            images["label"] = np.arange(len(images["label"]))
            texts["label"] = texts["image_index"]
        return texts, images

    def _stage1_replica_step(self, batch):
        return stage1_replica_step(self.model.stage1, self.buffers, self.stage1_optimizers,
                                   batch, self.config.model.cmce_temperature)

    # --- stage 2 ----------------------------------------------------------------------
    def mine_pairs(self, log: Callable[[str], None] = print):
        """§4.2: stage-2 training pairs from stage 1's nearest neighbours, both directions →
        (text_index, image_index, match) over the training captions and images; random
        pairs under "w/o stage-1"."""
        texts, images = self._train_features()
        k = self.config.model.candidates
        if self.config.model.stage1_init:
            mined = iatv_pairs.mine_pairs(texts["embedding"], images["embedding"],
                                          texts["label"], images["label"], k=k)
            how = f"mined by stage 1 (top {k} both ways)"
        else:
            mined = iatv_pairs.random_pairs(texts["label"], images["label"], k=k,
                                            seed=self.config.train.seed)
            how = f"drawn at random ({k} both ways; w/o stage-1)"
        log(f"stage 2: {len(mined[2])} pairs {how}, "
            f"{100.0 * float(np.mean(mined[2])):.1f}% positive")
        self._pair_labels = (texts["label"], images["label"])  # pool of random negatives
        return mined

    def _stage2_replica_step(self, batch, joint: bool):
        ctx = tf.distribute.get_replica_context()
        cnn, matcher = self.model.stage2_cnn, self.model.matcher
        if not joint:  # the CNN is fixed: its BatchNorm in inference mode, no gradient
            regions = tf.stop_gradient(cnn(batch["image"], training=False))
        with tf.GradientTape() as tape:
            if joint:
                regions = cnn(batch["image"], training=True)
            logits = self.model.pair_logits(regions, batch, training=True)
            loss = stage2.matching_loss(batch["match"], logits)
            # Equal local batches: the mean of the replicas' means is the global mean.
            scaled = loss / ctx.num_replicas_in_sync
        groups = [(self.stage2_optimizers["text"], matcher.trainable_variables)]
        if joint:
            groups.append((self.stage2_optimizers["image"], cnn.trainable_variables))
        finite = optim.apply_by_group(tape, scaled, groups)
        labels = tf.cast(batch["match"], tf.float32)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.cast(logits > 0, tf.float32), labels),
                                          tf.float32))
        return {"bce": loss, "accuracy": accuracy, FINITE: tf.cast(finite, tf.float32)}

    # --- what the loop asks -------------------------------------------------------------
    def source(self, phase: str) -> str:
        return "stage1" if phase == "stage1" else "stage2"  # stage 2's phases share pairs

    def batches(self, phase: str, start_step: int, log: Callable[[str], None] = print):
        # A resumed run reshuffles with a different seed instead of replaying the epoch.
        seed = self.config.train.seed + start_step
        if phase == "stage1":
            by_image = not self.config.model.identity_labels
            # CMCE needs no in-batch positives; under "w/o ID" an image's few captions could
            # never fill a P×K group, so batches are plain shuffles there.
            config = self.config.replace(identities_per_batch=0) if by_image else self.config
            ds = pipeline.train_dataset(self.data_dir, config, self.tokenizer, seed=seed,
                                        label_by_image=by_image)
        else:
            if start_step == self.phase_end["stage1"] and self.config.model.stage1_init:
                self.model.initialize_stage2()
                log(f"stage 2 initialised from stage 1 at step {start_step}")
            text_index, image_index, match = self.mine_pairs(log)
            encoded, captions = iatv_pairs.split_records(self.data_dir, "train")
            text_labels, image_labels = self._pair_labels
            ds = iatv_pairs.pair_dataset(encoded, captions, text_index, image_index, match,
                                         self.config, self.tokenizer, seed=seed,
                                         text_labels=text_labels, image_labels=image_labels)
            if self.config.model.positive_share or self.config.model.random_negative_share:
                log(f"stage 2 batches: {100 * self.config.model.positive_share:.0f}% mined "
                    f"positives, {100 * self.config.model.random_negative_share:.0f}% of "
                    "negatives random pairs")
        return iter(self.strategy.experimental_distribute_dataset(ds))

    def train_step(self, phase: str, batch) -> dict:
        if phase not in self._steps:
            if phase == "stage1":
                fn = self._stage1_replica_step
            else:
                joint = phase == "stage2_joint"
                fn = lambda b: self._stage2_replica_step(b, joint)  # noqa: E731
            self._steps[phase] = replicated(self.strategy, fn)
        terms = self._steps[phase](batch)
        self.step.assign_add(1)
        return terms

    def loss_key(self, phase: str) -> str:
        return self.config.model.stage1_loss if phase == "stage1" else LOSS[phase]

    def summaries(self, phase: str, terms: dict) -> dict:
        return {phase: terms}

    def validate(self, phase: str) -> dict:
        modes = ("stage1",) if phase == "stage1" else ("stage1", self.reported_mode)
        report = iatv_scoring.evaluate(self.model, self.data_dir, self.config, self.val_split,
                                       modes=modes)
        out = {}
        for mode in modes:
            out.update({f"{mode}_{k}": report[mode]["t2i"][k]
                        for k in ("R1", "R5", "R10", "mAP")})
        return out

    @property
    def reported_mode(self) -> str:
        """The ranking the model's figures are read from, which selects its checkpoint:
        ``iatv_scoring.reported_mode``."""
        return iatv_scoring.reported_mode(self.config)

    def selection(self, phase: str) -> Optional[str]:
        return None if phase == "stage1" else f"{self.reported_mode}_R1"

    def best_metrics(self, metrics: dict) -> dict:
        """The reported ranking's metrics as ``R1``... and stage 1's as ``stage1_R1``..."""
        prefix = f"{self.reported_mode}_"
        out = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}
        out.update({k: v for k, v in metrics.items() if k.startswith("stage1_")})
        return out
