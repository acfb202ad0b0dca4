"""HGAN's training task (§3.4, §4) for ``hgan.training.loop``.

One phase, ``train``: each step encodes the batch, gathers every replica's features so the
in-batch losses of §3.4 see the global batch (each replica computes the loss of the
global batch and scales it by 1/N; the summed gradients are the global gradient), adds the
coupled L2 term under ``weight_decay_mode="l2"``, and applies the gradients only if every
one of them is finite (``optim.guarded_apply``). With ``sentence_loss="cmce"`` IATV's
identity buffers are filled before the first step and updated after each. A frozen BERT's
token embeddings are computed once per training caption (``token_cache``).
Validation is the val split's exact scoring; the fused text-to-image R1 selects.
"""
from __future__ import annotations

from typing import Callable, Optional

from hgan.config import Config
from hgan.data import pipeline
from hgan.evaluation import hgan_scoring
from hgan.training import hgan_token_cache as token_cache
from hgan.modeling.hgan.model import HGAN, build_model
from hgan.tf_compat import keras, tf
from hgan.training import optim, run_dir
from hgan.training.buffers import IdentityBuffers
from hgan.training.distribution import (FINITE, SCALE_SKIPPED, gather_tree, make_strategy,
                                        replicated)
from hgan.training.loop import Task, seed_everything


class HGANTask(Task):
    """The model, its optimizer, the identity buffers (CMCE only) and the compiled step."""

    def __init__(self, config: Config, data_dir: str, val_split: Optional[str] = None,
                 strategy: Optional[tf.distribute.Strategy] = None):
        if config.family != "hgan":
            raise ValueError(f"config.family is {config.family!r}; this trains hgan")
        self.config, self.data_dir, self.val_split = config, data_dir, val_split
        seed_everything(config.train.seed)
        self.manifest = pipeline.load_manifest(data_dir)
        if "train" not in self.manifest["splits"]:
            raise ValueError(f"{data_dir} has no train split")
        self.num_classes = (config.model.num_classes
                            or self.manifest["splits"]["train"]["identities"])
        self.strategy = strategy or make_strategy()
        self.tokenizer = pipeline.make_tokenizer(config)
        self.per_epoch = run_dir.steps_per_epoch(self.manifest, config)
        length, schedule_epoch = run_dir.run_length(self.manifest, config)
        self.phase_end = {"train": config.train.max_steps or length}
        if config.train.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        with self.strategy.scope():
            self.model: HGAN = build_model(config, self.tokenizer.vocab_size + 1,
                                           self.num_classes, self.strategy)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            optimizer = optim.make_optimizer(config, schedule_epoch)
            if config.train.mixed_precision:
                optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            self.optimizer.build(self.model.trainable_variables)
            # sentence_loss=cmce: IATV's identity buffers V and S, checkpointed with the model.
            self.buffers = (IdentityBuffers(self.num_classes, config.model.embed_dim,
                                            config.model.buffer_momentum)
                            if self.model.uses_buffers else None)
        self._step_fn = None
        self._jit_parts = None  # train.jit_compile: the XLA-compiled parts of the step
        self.token_cache = None  # made by begin(): a frozen BERT's outputs, computed once

    def checkpoint_items(self) -> dict:
        items = {"optimizer": self.optimizer}
        if self.buffers is not None:
            items["buffers"] = self.buffers
        return items

    # --- the step ---------------------------------------------------------------------
    def _forward(self, batch):
        out = self.model(batch, training=True)
        return out["text"], out["image"]

    def _losses(self, text, image, labels):
        return self.model.compute_losses(text, image, labels, training=True,
                                          buffers=self.buffers)

    def _compiled_parts(self):
        """(forward, losses) of a replica's step: the model's features of its batch, and
        the losses of the gathered global batch. Under ``train.jit_compile`` each is one
        XLA computation (their gradients too); the gathering between them, the gradients'
        sum and the optimizer stay outside, where the strategy's collectives run."""
        if not self.config.train.jit_compile:
            return self._forward, self._losses
        if self._jit_parts is None:
            self._jit_parts = (tf.function(self._forward, jit_compile=True),
                               tf.function(self._losses, jit_compile=True))
        return self._jit_parts

    def _replica_step(self, batch):
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        if self.token_cache is not None and "caption" in batch:  # else BERT runs
            batch = {**{k: v for k, v in batch.items() if k != "caption"},
                     "bert_tokens": self.token_cache.lookup(batch["caption"])}
        forward, losses = self._compiled_parts()
        with tf.GradientTape() as tape:
            text, image = forward(batch)
            text, image, labels = gather_tree((text, image, batch["label"]))
            terms = losses(text, image, labels)
            l2 = optim.l2_term(self.config, self.model.trainable_variables)
            if l2 is not None:
                terms["l2"] = l2
                terms["total"] = terms["total"] + l2
            loss = terms["total"] / replicas
            if self.config.train.mixed_precision:
                loss = self.optimizer.get_scaled_loss(loss)
        variables = self.model.trainable_variables
        grads = tape.gradient(loss, variables)
        if self.config.train.mixed_precision:
            grads = self.optimizer.get_unscaled_gradients(grads)
        # A non-finite loss or gradient must not reach the weights (ReLU and max can hide a
        # NaN from the loss but not from the gradients): the step is skipped whole (weights,
        # Adam's moments, the identity buffers) and reported. Under mixed precision
        # overflowing gradients are the loss scale's business: the LossScaleOptimizer skips
        # that step and lowers the scale, so only the loss counts.
        finite = tf.math.is_finite(terms["total"])
        # grad_norm (logged; spikes come before a collapse): the global norm of the summed
        # gradients, before clip_grad_norm; under mixed precision, this replica's.
        if self.config.train.mixed_precision:
            # The unscaled gradients are inf / NaN exactly when the loss scale overflowed;
            # the LossScaleOptimizer then skips the step: say so rather than log inf.
            present = [g for g in grads if g is not None]
            overflow = tf.logical_not(optim.all_finite(present))
            terms["grad_norm"] = tf.where(overflow, 0.0, tf.linalg.global_norm(present))
            terms[SCALE_SKIPPED] = tf.cast(overflow, tf.float32)
            self.optimizer.apply_gradients(
                [(g, v) for g, v in zip(grads, variables) if g is not None])
        else:
            finite, terms["grad_norm"] = optim.guarded_apply(
                [(self.optimizer, zip(grads, variables))], finite,
                clip_norm=self.config.train.clip_grad_norm)
        if self.buffers is not None:  # IATV Fig. 2 Step-2, with the gathered global batch
            self.buffers.update(image["global"], text["global"], labels, when=finite)
        return {**terms, FINITE: tf.cast(finite, tf.float32)}

    def train_step(self, phase: str, batch) -> dict:
        if self._step_fn is None:
            self._step_fn = replicated(self.strategy, self._replica_step)
        terms = self._step_fn(batch)
        self.step.assign_add(1)
        return terms

    # --- what the loop asks -------------------------------------------------------------
    def begin(self, start_step: int, log: Callable[[str], None] = print) -> None:
        if start_step == 0 and self.buffers is not None:
            self.initialize_buffers(log)
        self.token_cache = token_cache.build(self.model, self.data_dir, self.config,
                                             self.tokenizer, log=log)

    def initialize_buffers(self, log: Callable[[str], None] = print) -> None:
        """sentence_loss=cmce: IATV §3.1.1's "before the first iteration" fill of the identity
        buffers, each row the mean of its identity's sentence-level features over one pass of
        the training set."""
        texts, images = hgan_scoring.encode_split(self.model, self.data_dir, self.config,
                                                  "train", self.tokenizer, keep=("global",))
        self.buffers.fill(images["global"], images["label"], texts["global"], texts["label"],
                          log)

    def batches(self, phase: str, start_step: int, log=print):
        # A resumed run reshuffles with a different seed instead of replaying the epoch.
        ds = pipeline.train_dataset(self.data_dir, self.config, self.tokenizer,
                                    seed=self.config.train.seed + start_step,
                                    keep_caption=self.token_cache is not None)
        return iter(self.strategy.experimental_distribute_dataset(ds))

    def summaries(self, phase: str, terms: dict) -> dict:
        return {"loss": terms, "lr": self.current_lr()}

    def progress_extra(self, phase: str) -> str:
        return f"  lr={self.current_lr():.2e}"

    def current_lr(self) -> float:
        opt = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        lr = opt.learning_rate  # the schedule's current value (a variable)
        return float(tf.convert_to_tensor(lr(self.step) if callable(lr) else lr).numpy())

    def validate(self, phase: str) -> dict:
        report = hgan_scoring.evaluate(self.model, self.data_dir, self.config, self.val_split,
                                       modes=("exact",))
        return validation_scalars(report)


def validation_scalars(report: dict) -> dict:
    """What training logs of a val report: the fused score's text-to-image R1/R5/R10/mAP
    (``R1`` selects the best checkpoint), its image-to-text R1 and mAP, and each level's
    R1 in both directions ranked alone (``sentence/t2i_R1``, ``word/i2t_R1``, ...), so a
    run shows which level learns."""
    exact = report["exact"]
    out = {k: exact["t2i"][k] for k in ("R1", "R5", "R10", "mAP")}
    out.update({"i2t_R1": exact["i2t"]["R1"], "i2t_mAP": exact["i2t"]["mAP"]})
    for level, m in report.get("levels_exact", {}).items():
        out.update({f"{level}/t2i_R1": m["t2i"]["R1"], f"{level}/i2t_R1": m["i2t"]["R1"]})
    return out
