"""IATV training (§3.1, §3.2, §4.2): what ``train.py --model=iatv`` runs.

One global step counter runs through three phases (lengths ``iatv_stage1_steps``,
``iatv_stage2_text_steps``, ``iatv_stage2_joint_steps``; ``max_steps`` stops early):

1. ``stage1``: the CNN–LSTM with the CMCE loss (Eqs. 1–3). Before the first step the
   identity buffers V and S are filled by one pass over the training set (per-identity mean,
   §3.1.1); every step then updates the batch's rows (``hgan.iatv.stage1``).
2. ``stage2_text``: stage 1 mines each training caption's and image's ``iatv_candidates``
   (§4.2: 20) nearest samples of the other modality (``retrieval.mine_pairs``); stage 2 is
   initialised from stage 1 (``IATV.initialize_stage2``) and trained on those pairs with
   Eq. 12's binary cross-entropy, the CNN frozen: "we first train the language model and
   fix the CNN model" (§4.2).
3. ``stage2_joint``: the same pairs, "then fine-tune the whole network jointly".

The phases' optimizers follow §4.2 (Adam for the language side, SGD for the CNN). Runs under
``hgan.train_lib.make_strategy()``. Checkpoints (every ``checkpoint_every`` steps and at the
end of each phase) hold the model, the identity buffers, the four optimizers and the step;
re-running on the same model_dir resumes from the latest one with the step counter going on.
The mined pairs are not stored: stage 1 does not change after its phase, so mining again on
resume gives the same pairs.

Model selection: stage 1 is taken at its last step (its weights are what mining and stage 2
start from); during stage 2 the val split is evaluated every ``eval_every`` steps and at
each phase end, and ``model_dir/best/`` keeps the checkpoint with the best val **two-stage**
text-to-image R1 (``best.json`` says which). During stage 1 val stage-1 metrics are only
logged.
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Optional

import numpy as np

from hgan import data, records, train_lib
from hgan.config import Config
from hgan.iatv import evaluate as iatv_evaluate
from hgan.iatv import retrieval, stage1, stage2
from hgan.iatv.buffers import IdentityBuffers
from hgan.iatv.model import IATV
from hgan.tf_compat import tf

PHASES = ("stage1", "stage2_text", "stage2_joint")
LOSS = {"stage1": "cmce", "stage2_text": "bce", "stage2_joint": "bce"}


def phase_steps(config: Config, per_epoch: int) -> dict:
    """Steps of each phase; a 0 field means ``epochs`` epochs of the training captions."""
    default = config.epochs * per_epoch
    return {"stage1": config.iatv_stage1_steps or default,
            "stage2_text": config.iatv_stage2_text_steps or default,
            "stage2_joint": config.iatv_stage2_joint_steps or default}


def split_records(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(image bytes [Ni], captions [Nt]) of a split, in the gallery / query order of
    ``hgan.data`` (records in shard order, each record's captions in turn). Held in memory
    for random access by the stage-2 pairs: the encoded files, not decoded pixels."""
    encoded, captions = [], []
    ds = tf.data.TFRecordDataset(data.split_files(data_dir, split)).map(records.parse_example)
    for example in ds:
        encoded.append(example["encoded"].numpy())
        captions.extend(example["captions"].numpy().tolist())
    return np.array(encoded, dtype=object), np.array(captions, dtype=object)


def pair_dataset(encoded, captions, text_index, image_index, match, config: Config,
                 tokenizer, seed: int) -> tf.data.Dataset:
    """Batches of mined stage-2 pairs, shuffled and repeated: ``image`` [B, H, W, 3]
    (augmented as in stage 1), the tokenizer's outputs [B, L] and ``match`` [B] (1 = same
    identity). Deterministic for a seed."""
    text_index, image_index = np.asarray(text_index), np.asarray(image_index)
    match = np.asarray(match, np.int32)

    def pairs():
        rng = np.random.default_rng(seed)
        while True:
            for j in rng.permutation(len(match)):
                yield encoded[image_index[j]], captions[text_index[j]], match[j]

    ds = tf.data.Dataset.from_generator(pairs, output_signature=(
        tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string),
        tf.TensorSpec([], tf.int32)))
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed).batch(2)))

    def load(pair, flip_seed):
        image_bytes, caption, label = pair
        image = data.preprocess_image(data.decode_image(image_bytes), config, training=True,
                                      seed=flip_seed)
        return {"image": image, "caption": caption, "match": label}

    def tokenize(batch):
        out = {k: v for k, v in batch.items() if k != "caption"}
        out.update(tokenizer(batch["caption"]))
        return out

    ds = (ds.map(load, num_parallel_calls=data.AUTOTUNE, deterministic=True)
          .batch(config.batch_size, drop_remainder=True)
          .map(tokenize, num_parallel_calls=data.AUTOTUNE, deterministic=True))
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(data.AUTOTUNE)


class Trainer:
    """Owns the IATV model, the identity buffers, the optimizers, checkpoints and steps."""

    def __init__(self, config: Config, data_dir: str, model_dir: str,
                 strategy: Optional[tf.distribute.Strategy] = None):
        if config.model != "iatv":
            raise ValueError(f"config.model is {config.model!r}; this trains iatv")
        if config.mixed_precision:
            raise ValueError("mixed_precision is not supported for iatv")
        self.config, self.data_dir, self.model_dir = config, data_dir, model_dir
        self.manifest = data.load_manifest(data_dir)
        if "train" not in self.manifest["splits"]:
            raise ValueError(f"{data_dir} has no train split")
        train = self.manifest["splits"]["train"]
        # "w/o ID" (Table 2): every training image is an identity.
        if config.iatv_identity_labels:
            self.num_identities = config.num_classes or train["identities"]
        else:
            self.num_identities = train["images"]
        self.strategy = strategy or train_lib.make_strategy()
        self.tokenizer = data.make_tokenizer(config)
        self.per_epoch = train_lib.steps_per_epoch(self.manifest, config)
        lengths = phase_steps(config, self.per_epoch)
        self.phase_end = dict(zip(PHASES, np.cumsum([lengths[p] for p in PHASES]).tolist()))
        full = self.phase_end["stage2_joint"]
        self.total_steps = min(full, config.max_steps) if config.max_steps else full
        with self.strategy.scope():
            self.model = IATV(config, self.tokenizer.vocab_size + 1)
            self.buffers = IdentityBuffers(self.num_identities, config.iatv_embed_dim,
                                           config.iatv_buffer_momentum)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            self.stage1_optimizers = stage1.make_optimizers(config)
            # Stage 2 gets fresh optimizers under the same rule: Adam for the language side
            # (the whole matcher), SGD for the CNN.
            self.stage2_optimizers = stage1.make_optimizers(config)
            self.stage2_optimizers["text"].build(self.model.matcher.trainable_variables)
            self.stage2_optimizers["image"].build(self.model.stage2_cnn.trainable_variables)
        # Builds the stage-1 optimizers' slots, so a checkpoint can restore them.
        self._stage1_step = stage1.make_train_step(self.model.stage1, self.buffers,
                                                   self.stage1_optimizers, self.strategy)
        self._stage2_steps = {}
        self.chief = train_lib.is_chief(self.strategy)
        save_dir = train_lib.worker_dir(model_dir, self.strategy)
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, buffers=self.buffers, step=self.step,
            stage1_cnn_optimizer=self.stage1_optimizers["image"],
            stage1_lstm_optimizer=self.stage1_optimizers["text"],
            stage2_cnn_optimizer=self.stage2_optimizers["image"],
            stage2_text_optimizer=self.stage2_optimizers["text"])
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(save_dir, "ckpt"), max_to_keep=config.keep_checkpoints)
        self.best_manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=self.model, step=self.step),
            os.path.join(save_dir, "best"), max_to_keep=1)

    def phase(self, step: int) -> str:
        """The phase global step ``step`` (1-based) belongs to."""
        return next(p for p in PHASES if step <= self.phase_end[p])

    # --- stage 1 ----------------------------------------------------------------------
    def initialize_buffers(self, log: Callable[[str], None] = print) -> None:
        """§3.1.1: "before the first iteration" every identity's rows are the mean of its
        samples' features, from one pass over the training set."""
        texts, images = self._train_features()
        self.buffers.fill(images["embedding"], images["label"], texts["embedding"],
                          texts["label"], log)

    def _train_features(self) -> tuple[dict, dict]:
        """Stage-1 features of the training split, labelled as training sees them (by
        image under "w/o ID")."""
        texts, images = iatv_evaluate.encode_split(self.model, self.data_dir, self.config,
                                                   "train", self.tokenizer, regions=False)
        if not self.config.iatv_identity_labels:
            images["label"] = np.arange(len(images["label"]))
            texts["label"] = texts["image_index"]
        return texts, images

    def stage1_batches(self, start_step: int):
        # A resumed run reshuffles with a different seed instead of replaying the epoch.
        by_image = not self.config.iatv_identity_labels
        # CMCE needs no in-batch positives; under "w/o ID" an image's few captions could
        # never fill a P×K group, so batches are plain shuffles there.
        config = self.config.replace(identities_per_batch=0) if by_image else self.config
        ds = data.train_dataset(self.data_dir, config, self.tokenizer,
                                seed=self.config.seed + start_step, label_by_image=by_image)
        return iter(self.strategy.experimental_distribute_dataset(ds))

    # --- stage 2 ----------------------------------------------------------------------
    def mine_pairs(self, log: Callable[[str], None] = print):
        """§4.2: stage-2 training pairs from stage 1's nearest neighbours, both directions →
        (text_index, image_index, match) over the training captions and images; random
        pairs under "w/o stage-1"."""
        texts, images = self._train_features()
        k = self.config.iatv_candidates
        if self.config.iatv_stage1_init:
            mined = retrieval.mine_pairs(texts["embedding"], images["embedding"],
                                         texts["label"], images["label"], k=k)
            how = f"mined by stage 1 (top {k} both ways)"
        else:
            mined = retrieval.random_pairs(texts["label"], images["label"], k=k,
                                           seed=self.config.seed)
            how = f"drawn at random ({k} both ways; w/o stage-1)"
        log(f"stage 2: {len(mined[2])} pairs {how}, "
            f"{100.0 * float(np.mean(mined[2])):.1f}% positive")
        return mined

    def stage2_batches(self, start_step: int, log: Callable[[str], None] = print):
        text_index, image_index, match = self.mine_pairs(log)
        encoded, captions = split_records(self.data_dir, "train")
        ds = pair_dataset(encoded, captions, text_index, image_index, match, self.config,
                          self.tokenizer, seed=self.config.seed + start_step)
        return iter(self.strategy.experimental_distribute_dataset(ds))

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
        finite = stage1.apply_by_group(tape, scaled, groups)
        labels = tf.cast(batch["match"], tf.float32)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.cast(logits > 0, tf.float32), labels),
                                          tf.float32))
        return {"bce": loss, "accuracy": accuracy, train_lib.FINITE: tf.cast(finite, tf.float32)}

    def _stage2_step(self, joint: bool):
        if joint not in self._stage2_steps:
            @tf.function
            def step_fn(batch):
                terms = self.strategy.run(lambda b: self._stage2_replica_step(b, joint),
                                          args=(batch,))
                return {k: self.strategy.reduce("MEAN", v, axis=None) for k, v in terms.items()}
            self._stage2_steps[joint] = step_fn
        return self._stage2_steps[joint]

    def train_step(self, phase: str, batch) -> dict:
        if phase == "stage1":
            terms = self._stage1_step(batch)
        else:
            terms = self._stage2_step(phase == "stage2_joint")(batch)
        self.step.assign_add(1)
        return terms

    # --- the loop ---------------------------------------------------------------------
    def restore(self) -> int:
        return train_lib.restore_latest(self.checkpoint, self.manager, self.step)

    def fit(self, evaluate: Optional[Callable[[IATV, bool], dict]] = None,
            log: Callable[[str], None] = print) -> dict:
        """Trains to ``total_steps``. ``evaluate(model, two_stage)`` returns val metrics
        (``two_stage_R1`` when ``two_stage``, which selects the best checkpoint)."""
        start = self.restore()
        if start >= self.total_steps:
            log(f"already trained to step {start} of {self.total_steps}")
            return self._summary()
        writer = train_lib.summary_writer(self.model_dir, self.chief)
        if start == 0:
            self.initialize_buffers(log)
        eval_every = self.config.eval_every or self.per_epoch
        boundaries = set(self.phase_end.values()) | {self.total_steps}
        best = train_lib.best_r1(self.model_dir)
        batches, source, terms = None, None, {}
        for step in range(start + 1, self.total_steps + 1):
            phase = self.phase(step)
            wanted = "stage1" if phase == "stage1" else "stage2"
            if source != wanted:  # the two stage-2 phases share the mined pairs
                if (wanted == "stage2" and step == self.phase_end["stage1"] + 1
                        and self.config.iatv_stage1_init):
                    self.model.initialize_stage2()
                    log(f"stage 2 initialised from stage 1 at step {step - 1}")
                batches = (self.stage1_batches(step - 1) if wanted == "stage1"
                           else self.stage2_batches(step - 1, log))
                source = wanted
                since = (time.time(), step - 1)
            terms = {k: float(v) for k, v in self.train_step(phase, next(batches)).items()}
            applied = terms.pop(train_lib.FINITE) == 1.0
            if not (applied and math.isfinite(terms[LOSS[phase]])):
                raise FloatingPointError(
                    f"non-finite {LOSS[phase]} loss or gradient at step {step} ({phase}); "
                    f"that step was not applied and the last good checkpoint is "
                    f"{self.manager.latest_checkpoint}")
            if step % self.config.log_every == 0 or step in boundaries:
                log(train_lib.progress_line(step, self.total_steps, terms, since, label=phase))
                train_lib.write_scalars(writer, step, terms, phase)
                since = (time.time(), step)
            if step % self.config.checkpoint_every == 0 or step in boundaries:
                self.manager.save(checkpoint_number=step)
            # Every worker evaluates (reading sync-on-read BatchNorm statistics is a
            # collective op); only the chief's files are kept.
            if evaluate is not None and (step % eval_every == 0 or step in boundaries):
                two_stage = phase != "stage1"
                val = evaluate(self.model, two_stage)
                log(f"val step {step}: " + "  ".join(f"{k}={v:.2f}" for k, v in val.items()))
                train_lib.write_scalars(writer, step, val, "val")
                if two_stage and val["two_stage_R1"] > best:
                    best = val["two_stage_R1"]
                    self.best_manager.save(checkpoint_number=step)
                    self._write_best(step, val)
        train_lib.close_run(writer, self.model_dir, self.strategy)
        return self._summary(terms)

    def _write_best(self, step: int, val: dict):
        if not self.chief:
            return
        metrics = {k[len("two_stage_"):]: v for k, v in val.items() if k.startswith("two_stage_")}
        metrics.update({k: v for k, v in val.items() if k.startswith("stage1_")})
        train_lib.write_best(self.model_dir, {"step": step, "split": "val",
                                              "selected_by": "two_stage t2i R1",
                                              "metrics": metrics})

    def _summary(self, terms: Optional[dict] = None) -> dict:
        step = int(self.step.numpy())
        return {"step": step, "total_steps": self.total_steps,
                "phase": self.phase(max(step, 1)), "checkpoint": self.manager.latest_checkpoint,
                "loss": terms or {}}


def run(config: Config, data_dir: str, model_dir: str, val_split: str = "val",
        strategy: Optional[tf.distribute.Strategy] = None, log=print) -> dict:
    """Trains both stages with validation on ``val_split`` (skipped if the data has none)."""
    def evaluate(model, two_stage):
        modes = ("stage1", "two_stage") if two_stage else ("stage1",)
        report = iatv_evaluate.evaluate(model, data_dir, config, val_split, modes=modes)
        out = {}
        for mode in modes:
            out.update({f"{mode}_{k}": report[mode]["t2i"][k]
                        for k in ("R1", "R5", "R10", "mAP")})
        return out

    validate = train_lib.has_validation(data_dir, val_split, log)
    trainer = Trainer(config, data_dir, model_dir, strategy)
    return trainer.fit(evaluate if validate else None, log=log)
