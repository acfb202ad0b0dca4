"""The training loop: distribution, cross-replica losses, checkpoints, resume, logging.

``train(config, data_dir, model_dir)`` is what ``train.py`` calls. It

* runs under ``MirroredStrategy`` (all local GPUs; one replica on CPU) or, when
  ``TF_CONFIG`` is set, ``MultiWorkerMirroredStrategy``;
* gathers every replica's features before the in-batch losses of §3.4, so the loss on N
  replicas is the loss of one replica over the same global batch (each replica computes
  it and scales by 1/N; the summed gradients are the global gradient);
* checkpoints every ``checkpoint_every`` steps (``keep_checkpoints`` kept) and resumes from
  the latest one, step counter included;
* evaluates on the **val** split and keeps the best checkpoint by val text-to-image R1;
* writes TensorBoard scalars, prints a progress line (steps/s, ETA), and stops with a
  clear error on a non-finite loss, never saving the bad state.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Callable, Optional

from absl import logging

from hgan import data, losses, optim, token_cache
from hgan.config import Config
from hgan.iatv.buffers import IdentityBuffers
from hgan.model import HGAN, build_model
from hgan.tf_compat import keras, tf

# Fields that may change when a run is resumed; anything else must match the saved config.
FINITE = "_finite"  # train_step's flag: 1.0 when the step's loss and gradients were finite
RESUMABLE_FIELDS = {"epochs", "max_steps", "checkpoint_every", "keep_checkpoints",
                    "eval_every", "log_every"}


def gather_replicas(ctx: tf.distribute.ReplicaContext, local: tf.Tensor) -> tf.Tensor:
    """Concatenates every replica's ``local`` [b, ...] into [N·b, ...], differentiably.

    Written as a SUM all-reduce of zero-padded slices rather than ``all_gather``, which
    MultiWorkerMirroredStrategy rejects inside ``strategy.run`` on CPU workers; the gradient
    of an all-reduce is the all-reduce of the gradients, i.e. exactly what every replica's
    loss sends back to this replica's slice. Needs equal local batches (drop_remainder).
    """
    replicas = ctx.num_replicas_in_sync
    if replicas == 1:
        return local
    b = tf.shape(local)[0]
    before = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * b
    pad = tf.stack([before, (replicas - 1) * b - before])
    paddings = tf.concat([pad[None], tf.zeros([tf.rank(local) - 1, 2], tf.int32)], axis=0)
    padded = tf.pad(local, paddings)
    if padded.dtype.is_integer:  # labels: no gradient, all-reduce as float
        return tf.cast(ctx.all_reduce("SUM", tf.cast(padded, tf.float32)), local.dtype)
    return ctx.all_reduce("SUM", padded)


def restore_latest(checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager,
                   step: tf.Variable) -> int:
    """Restores the latest checkpoint if there is one; returns the step to continue from."""
    latest = manager.latest_checkpoint
    if latest:
        try:
            checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
            raise ValueError(f"cannot resume from {latest}: it does not match this model "
                             f"(another architecture or code version?); train into a new "
                             f"--model_dir. {str(e).splitlines()[0][:300]}") from e
        logging.info("resumed from %s at step %d", latest, int(step.numpy()))
    return int(step.numpy())


def make_strategy() -> tf.distribute.Strategy:
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one worker that owns model_dir (always, without TF_CONFIG)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    spec = resolver.cluster_spec().as_dict()
    if "chief" in spec:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def worker_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """Where this worker writes checkpoints: model_dir on the chief; elsewhere a private
    scratch dir (every worker must take part in a save, only the chief's is kept)."""
    if is_chief(strategy):
        return model_dir
    resolver = strategy.cluster_resolver
    return os.path.join(model_dir, f".{resolver.task_type}_{resolver.task_id}_scratch")


def summary_writer(model_dir: str, chief: bool):
    """TensorBoard scalars go to model_dir/tensorboard, from the chief only."""
    if chief:
        return tf.summary.create_file_writer(os.path.join(model_dir, "tensorboard"))
    return tf.summary.create_noop_writer()


def write_scalars(writer, step: int, values: dict, prefix: str = "") -> None:
    """TensorBoard scalars tagged ``prefix/name`` (``name`` alone without a prefix)."""
    with writer.as_default(step=step):
        for k, v in values.items():
            tf.summary.scalar(f"{prefix}/{k}" if prefix else k, v)


def progress_line(step: int, total: int, terms: dict, since: tuple, extra: str = "",
                  label: str = "") -> str:
    """``step i/N  [label  ]loss terms  extra  steps/s  ETA``, the rate since ``since`` =
    (time, step)."""
    rate = (step - since[1]) / max(time.time() - since[0], 1e-9)
    eta = (total - step) / max(rate, 1e-9)
    return (f"step {step}/{total}  " + (f"{label}  " if label else "")
            + "  ".join(f"{k}={v:.4f}" for k, v in terms.items())
            + f"{extra}  {rate:.2f} steps/s  ETA {eta / 60:.1f} min")


def best_r1(model_dir: str) -> float:
    """The val R1 of model_dir/best.json, or -1 before any model was selected."""
    path = os.path.join(model_dir, "best.json")
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)["metrics"]["R1"]
    return -1.0


def write_best(model_dir: str, record: dict) -> None:
    """Writes model_dir/best.json atomically (call on the chief)."""
    path = os.path.join(model_dir, "best.json")
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def close_run(writer, model_dir: str, strategy: tf.distribute.Strategy) -> None:
    writer.flush()
    if not is_chief(strategy):  # a worker's scratch checkpoints were only for the collectives
        tf.io.gfile.rmtree(worker_dir(model_dir, strategy))


def has_validation(data_dir: str, val_split: str, log=print) -> bool:
    """Whether model selection can run on ``val_split``: never the test split (an error),
    and only if the data has it (otherwise the last checkpoint is the model, as logged)."""
    if val_split == "test":
        raise ValueError("model selection on the test split is not allowed; use val")
    if val_split in data.load_manifest(data_dir)["splits"]:
        return True
    log(f"no {val_split!r} split: no model selection, the last checkpoint is the model")
    return False


def reconcile_config(config: Config, model_dir: str) -> Config:
    """Saves the config, or checks a resumed run's config against the saved one."""
    if tf.io.gfile.exists(os.path.join(model_dir, "config.json")):
        saved = Config.load(model_dir)
        diff = {k for k, v in saved.__dict__.items() if getattr(config, k) != v}
        blocking = sorted(diff - RESUMABLE_FIELDS)
        if blocking:
            raise ValueError(
                f"{model_dir} holds a run with a different config ({blocking}); resume with "
                "the same settings or choose a new --model_dir")
    config.save(model_dir)
    return config


def steps_per_epoch(manifest: dict, config: Config, split: str = "train") -> int:
    return max(1, manifest["splits"][split]["captions"] // config.batch_size)


class StepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise-constant ×0.1 at each boundary step, after an optional linear warmup."""

    def __init__(self, base: float, boundaries: list, warmup_steps: int = 0):
        self.base, self.boundaries, self.warmup_steps = base, list(boundaries), warmup_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        passed = tf.reduce_sum(tf.cast(step >= tf.constant(self.boundaries + [1e30]), tf.float32))
        lr = self.base * tf.pow(0.1, passed)
        if self.warmup_steps:
            lr *= tf.minimum(1.0, (step + 1.0) / self.warmup_steps)
        return lr

    def get_config(self):
        return {"base": self.base, "boundaries": self.boundaries,
                "warmup_steps": self.warmup_steps}


def learning_rate_schedule(config: Config, per_epoch: int) -> StepSchedule:
    """×0.1 at each of ``lr_decay_epochs``, with optional linear warmup (§4 gives only the
    initial rate, 2e-4)."""
    boundaries = [float(int(e * per_epoch)) for e in config.lr_decay_epochs]
    return StepSchedule(config.learning_rate, boundaries, config.warmup_steps)


WEIGHT_DECAY_MODES = ("l2", "decoupled")


def make_optimizer(config: Config, per_epoch: int) -> optim.AdamW:
    """§4: Adam over ``learning_rate_schedule``; weight decay decoupled in the optimizer
    when ``weight_decay_mode="decoupled"`` (with "l2" it is a loss term, ``l2_term``)."""
    if config.weight_decay_mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, "
                         f"got {config.weight_decay_mode!r}")
    decoupled = config.weight_decay_mode == "decoupled" and config.weight_decay
    return optim.AdamW(learning_rate=learning_rate_schedule(config, per_epoch),
                       weight_decay=config.weight_decay if decoupled else None)


def l2_term(config: Config, variables) -> Optional[tf.Tensor]:
    """The coupled weight-decay loss term of ``weight_decay_mode="l2"``, else None."""
    if config.weight_decay_mode == "l2" and config.weight_decay:
        return losses.l2_penalty(variables, config.weight_decay)
    return None


class Trainer:
    """Owns the model, optimizer, checkpoints and the compiled distributed step."""

    def __init__(self, config: Config, data_dir: str, model_dir: str,
                 strategy: Optional[tf.distribute.Strategy] = None):
        self.config = config
        self.data_dir = data_dir
        self.model_dir = model_dir
        self.manifest = data.load_manifest(data_dir)
        if "train" not in self.manifest["splits"]:
            raise ValueError(f"{data_dir} has no train split")
        self.num_classes = config.num_classes or self.manifest["splits"]["train"]["identities"]
        self.strategy = strategy or make_strategy()
        self.tokenizer = data.make_tokenizer(config)
        self.per_epoch = steps_per_epoch(self.manifest, config)
        self.total_steps = config.max_steps or config.epochs * self.per_epoch
        if config.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        with self.strategy.scope():
            self.model: HGAN = build_model(config, self.tokenizer.vocab_size + 1,
                                           self.num_classes, self.strategy)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            optimizer = make_optimizer(config, self.per_epoch)
            if config.mixed_precision:
                optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            self.optimizer.build(self.model.trainable_variables)
            # sentence_loss=cmce: IATV's identity buffers V and S, checkpointed with the model.
            self.buffers = (IdentityBuffers(self.num_classes, config.embed_dim,
                                            config.iatv_buffer_momentum)
                            if self.model.uses_buffers else None)
        self.chief = is_chief(self.strategy)
        save_dir = worker_dir(model_dir, self.strategy)
        extra = {"buffers": self.buffers} if self.buffers is not None else {}
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                              step=self.step, **extra)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(save_dir, "ckpt"),
            max_to_keep=config.keep_checkpoints)
        self.best_manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=self.model, step=self.step),
            os.path.join(save_dir, "best"), max_to_keep=1)
        self._step_fn = None
        self.token_cache = None  # made by fit(): a frozen BERT's outputs, computed once

    # --- the step ---------------------------------------------------------------------
    def _replica_step(self, batch):
        ctx = tf.distribute.get_replica_context()
        replicas = ctx.num_replicas_in_sync

        def gather(tree):
            return tf.nest.map_structure(lambda t: gather_replicas(ctx, t), tree)

        if self.token_cache is not None and "caption" in batch:  # else BERT runs
            batch = {**{k: v for k, v in batch.items() if k != "caption"},
                     "bert_tokens": self.token_cache.lookup(batch["caption"])}
        with tf.GradientTape() as tape:
            out = self.model(batch, training=True)
            text, image = gather(out["text"]), gather(out["image"])
            labels = gather(batch["label"])
            terms = self.model.compute_losses(text, image, labels, training=True,
                                              buffers=self.buffers)
            l2 = l2_term(self.config, self.model.trainable_variables)
            if l2 is not None:
                terms["l2"] = l2
                terms["total"] = terms["total"] + l2
            loss = terms["total"] / replicas
            if self.config.mixed_precision:
                loss = self.optimizer.get_scaled_loss(loss)
        variables = self.model.trainable_variables
        grads = tape.gradient(loss, variables)
        if self.config.mixed_precision:
            grads = self.optimizer.get_unscaled_gradients(grads)
        # A non-finite loss or gradient must not reach the weights (ReLU and max can hide a
        # NaN from the loss but not from the gradients): the step is skipped whole (weights,
        # Adam's moments, the identity buffers) and reported. Under mixed precision
        # overflowing gradients are the loss scale's business: the LossScaleOptimizer skips
        # that step and lowers the scale, so only the loss counts.
        finite = tf.math.is_finite(terms["total"])
        # grad_norm (logged; spikes come before a collapse): the global norm of the summed
        # gradients, before clip_grad_norm; under mixed precision, this replica's.
        if self.config.mixed_precision:
            terms["grad_norm"] = tf.linalg.global_norm([g for g in grads if g is not None])
            self.optimizer.apply_gradients(
                [(g, v) for g, v in zip(grads, variables) if g is not None])
        else:
            finite, terms["grad_norm"] = optim.guarded_apply(
                [(self.optimizer, zip(grads, variables))], finite,
                clip_norm=self.config.clip_grad_norm)
        if self.buffers is not None:  # IATV Fig. 2 Step-2, with the gathered global batch
            self.buffers.update(image["global"], text["global"], labels, when=finite)
        return {**terms, FINITE: tf.cast(finite, tf.float32)}

    def train_step(self, batch) -> dict:
        if self._step_fn is None:
            @tf.function
            def step_fn(b):
                terms = self.strategy.run(self._replica_step, args=(b,))
                # Every replica computed the same global loss; MEAN just picks it.
                return {k: self.strategy.reduce("MEAN", v, axis=None) for k, v in terms.items()}
            self._step_fn = step_fn
        terms = self._step_fn(batch)
        self.step.assign_add(1)
        return terms

    # --- the loop ---------------------------------------------------------------------
    def restore(self) -> int:
        return restore_latest(self.checkpoint, self.manager, self.step)

    def initialize_buffers(self, log: Callable[[str], None] = print) -> None:
        """sentence_loss=cmce: IATV §3.1.1's "before the first iteration" fill of the identity
        buffers, each row the mean of its identity's sentence-level features over one pass of
        the training set."""
        from hgan import evaluation
        texts, images = evaluation.encode_split(self.model, self.data_dir, self.config,
                                                "train", self.tokenizer, keep=("global",))
        self.buffers.fill(images["global"], images["label"], texts["global"], texts["label"],
                          log)

    def dataset(self, start_step: int):
        # A resumed run reshuffles with a different seed instead of replaying the epoch.
        ds = data.train_dataset(self.data_dir, self.config, self.tokenizer,
                                seed=self.config.seed + start_step,
                                keep_caption=self.token_cache is not None)
        return iter(self.strategy.experimental_distribute_dataset(ds))

    def fit(self, evaluate: Optional[Callable[[HGAN], dict]] = None,
            log: Callable[[str], None] = print) -> dict:
        """Trains to ``total_steps``; ``evaluate(model)`` returns val metrics (with ``R1``)."""
        start = self.restore()
        if start >= self.total_steps:
            log(f"already trained to step {start} of {self.total_steps}")
            return self._summary()
        writer = summary_writer(self.model_dir, self.chief)
        if start == 0 and self.buffers is not None:
            self.initialize_buffers(log)
        self.token_cache = token_cache.build(self.model, self.data_dir, self.config,
                                             self.tokenizer, log=log)
        batches = self.dataset(start)
        eval_every = self.config.eval_every or self.per_epoch
        best = best_r1(self.model_dir)
        since = (time.time(), start)
        terms = {}
        for step in range(start + 1, self.total_steps + 1):
            terms = {k: float(v) for k, v in self.train_step(next(batches)).items()}
            finite = terms.pop(FINITE) == 1.0 and math.isfinite(terms["total"])
            if not finite:
                raise FloatingPointError(
                    f"non-finite loss or gradient at step {step} ({terms}); that step was not "
                    f"applied and the last good checkpoint is {self.manager.latest_checkpoint}")
            if step % self.config.log_every == 0 or step == self.total_steps:
                lr = self._current_lr()
                log(progress_line(step, self.total_steps, terms, since, f"  lr={lr:.2e}"))
                write_scalars(writer, step, terms, "loss")
                write_scalars(writer, step, {"lr": lr})
                since = (time.time(), step)
            if step % self.config.checkpoint_every == 0 or step == self.total_steps:
                self.manager.save(checkpoint_number=step)
            # Every worker evaluates and saves (reading sync-on-read BatchNorm statistics is a
            # collective op); only the chief's files are kept.
            if evaluate is not None and (step % eval_every == 0 or step == self.total_steps):
                metrics = evaluate(self.model)
                log(f"val step {step}: " + "  ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
                write_scalars(writer, step, metrics, "val")
                if metrics["R1"] > best:
                    best = metrics["R1"]
                    self.best_manager.save(checkpoint_number=step)
                    if self.chief:
                        write_best(self.model_dir,
                                   {"step": step, "split": "val", "metrics": metrics})
        close_run(writer, self.model_dir, self.strategy)
        return self._summary(terms)

    def _current_lr(self) -> float:
        opt = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        lr = opt.learning_rate  # the schedule's current value (a variable)
        return float(tf.convert_to_tensor(lr(self.step) if callable(lr) else lr).numpy())

    def _summary(self, terms: Optional[dict] = None) -> dict:
        return {"step": int(self.step.numpy()), "total_steps": self.total_steps,
                "checkpoint": self.manager.latest_checkpoint, "loss": terms or {}}


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


def run(config: Config, data_dir: str, model_dir: str, val_split: str = "val",
        strategy: Optional[tf.distribute.Strategy] = None, log=print) -> dict:
    """Trains with periodic validation on ``val_split`` (skipped if the data has none)."""
    from hgan import evaluation

    def evaluate(model):
        report = evaluation.evaluate(model, data_dir, config, val_split, modes=("exact",))
        return validation_scalars(report)

    validate = has_validation(data_dir, val_split, log)
    trainer = Trainer(config, data_dir, model_dir, strategy)
    return trainer.fit(evaluate if validate else None, log=log)
