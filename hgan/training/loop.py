"""The one training loop. A model family plugs a ``Task`` into it; orbit runs it.

``fit(task, model_dir, validate)`` builds an ``orbit.Controller`` (tf-models-official's
training-loop library) over the task and

* restores the latest checkpoint of model_dir (refusing, with a clear message, one that
  does not match the model) and goes on from its step, so re-running resumes;
* checkpoints at every multiple of ``checkpoint_every``, at the end of each phase and at
  the end (inner loops end there; a train action saves);
* evaluates on the val split every ``eval_every`` steps (0: once per epoch), at each phase
  end and at the end, and keeps the best checkpoint by the task's selection metric in
  ``model_dir/best/`` with ``best.json`` saying which step and why;
* prints a progress line (steps/s, ETA) every ``log_every`` steps, and writes TensorBoard
  scalars to ``model_dir/tensorboard/{train,val}`` (the Controller's summary managers);
* stops with a clear error on a non-finite loss or gradient: that step was not applied
  (the task's guarded update) and nothing after the last good checkpoint is saved.

Under ``MultiWorkerMirroredStrategy`` every worker runs the loop (saves and reads of
sync-on-read variables are collective); only the chief's files are kept.
"""
from __future__ import annotations

import abc
import contextlib
import math
import os
import time
from typing import Callable, Iterator, Optional

import orbit
from absl import logging

from hgan.config import Config
from hgan.progress import eta
from hgan.tf_compat import keras, tf
from hgan.training import run_dir
from hgan.training.distribution import FINITE, SCALE_SKIPPED, is_chief, worker_dir


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and TensorFlow's global seeds from ``train.seed``: the weight
    initialisers, dropout and the Gumbel noise draw from them, so one seed is one run (the
    data's order is seeded by ``train.seed`` on its own). A task calls it before it builds
    its model. Without it a "seed" fixed only the batch order and two runs of one config
    started from different weights."""
    keras.utils.set_random_seed(int(seed))


class Task(abc.ABC):
    """What a model family gives the loop.

    Set in ``__init__``: ``config``, ``strategy``, ``model`` (checkpointed as ``model``),
    ``step`` (the int64 global step ``tf.Variable``, made in the strategy's scope), and
    ``phase_end`` ({phase: its last global step}, in order; one ``"train"`` phase for most
    families). ``train_step`` runs one step and adds 1 to ``step``.
    """

    config: Config
    strategy: tf.distribute.Strategy
    model: object
    step: tf.Variable
    phase_end: dict
    per_epoch: int

    @property
    def total_steps(self) -> int:
        full = max(self.phase_end.values())
        return min(full, self.config.train.max_steps) if self.config.train.max_steps else full

    def phase(self, step: int) -> str:
        """The phase global step ``step`` (1-based) belongs to."""
        return next(p for p, end in self.phase_end.items() if step <= end)

    def checkpoint_items(self) -> dict:
        """Objects saved with the model and the step (optimizers, buffers, ...)."""
        return {}

    def begin(self, start_step: int, log: Callable[[str], None]) -> None:
        """Once per process before its first step (``start_step`` 0 on a fresh run)."""

    def source(self, phase: str) -> str:
        """Phases with the same source share one batch iterator."""
        return phase

    @abc.abstractmethod
    def batches(self, phase: str, start_step: int, log: Callable[[str], None]) -> Iterator:
        """The distributed batches of ``phase``, starting after global step ``start_step``."""

    @abc.abstractmethod
    def train_step(self, phase: str, batch) -> dict:
        """One step: {name: scalar tensor}, with ``FINITE`` (1.0 if it was applied)."""

    def loss_key(self, phase: str) -> str:
        return "total"

    def summaries(self, phase: str, terms: dict) -> dict:
        """What TensorBoard gets of a step's terms (nested dicts become ``a/b`` tags)."""
        return {"loss": terms}

    def progress_extra(self, phase: str) -> str:
        return ""

    def validate(self, phase: str) -> dict:
        """Val metrics {name: float} after a step of ``phase``."""
        raise NotImplementedError

    def selection(self, phase: str) -> Optional[str]:
        """The val metric that selects the best checkpoint in ``phase`` (None: none)."""
        return "R1"

    def best_metrics(self, metrics: dict) -> dict:
        """What ``best.json`` records of the val metrics that selected a checkpoint."""
        return metrics


def progress_line(step: int, total: int, terms: dict, since: tuple, extra: str = "",
                  label: str = "") -> str:
    """``step i/N  [label  ]loss terms  extra  steps/s  ETA``, the rate since ``since`` =
    (time, step)."""
    rate = (step - since[1]) / max(time.time() - since[0], 1e-9)
    return (f"step {step}/{total}  " + (f"{label}  " if label else "")
            + "  ".join(f"{k}={v:.4f}" for k, v in terms.items())
            + f"{extra}  {rate:.2f} steps/s  {eta(total - step, rate)}")


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
    return int(step.numpy())


class _Runner(orbit.AbstractTrainer, orbit.AbstractEvaluator):
    """orbit's trainer and evaluator over a ``Task``: a Python loop of compiled steps (the
    IATV phases change datasets and step functions, which one ``tf.function`` loop over
    a fixed iterator could not)."""

    def __init__(self, task: Task, log: Callable[[str], None]):
        self.task, self.log = task, log
        self.batches, self.batch_source = None, None
        self.terms, self.since = {}, (time.time(), int(task.step.numpy()))
        self.scale_skips = 0  # steps the loss scale skipped since the last progress line
        self.phase = task.phase(max(1, int(task.step.numpy())))

    def train(self, num_steps):
        task = self.task
        for _ in range(int(num_steps)):
            step = int(task.step.numpy()) + 1
            phase = task.phase(step)
            if task.source(phase) != self.batch_source:
                self.batches = task.batches(phase, step - 1, self.log)
                self.batch_source = task.source(phase)
                self.since = (time.time(), step - 1)
            terms = {k: float(v) for k, v in task.train_step(phase, next(self.batches)).items()}
            applied = terms.pop(FINITE) == 1.0
            if not (applied and math.isfinite(terms[task.loss_key(phase)])):
                raise FloatingPointError(
                    f"non-finite loss or gradient at step {step} ({phase}: {terms}); that step "
                    f"was not applied and the last good checkpoint is {self.latest()}")
            if terms.pop(SCALE_SKIPPED, 0.0):
                # The progress line keeps the last applied step's terms and counts skips.
                self.scale_skips += 1
                if "grad_norm" in self.terms:
                    terms["grad_norm"] = self.terms["grad_norm"]
            self.terms, self.phase = terms, phase
        return task.summaries(self.phase, dict(self.terms))

    def latest(self):
        return self.manager.latest_checkpoint if getattr(self, "manager", None) else None

    def progress(self, _output) -> None:
        """Train action: the progress line of the inner loop that just ended."""
        step = int(self.task.step.numpy())
        extra = self.task.progress_extra(self.phase)
        if self.scale_skips:
            extra += f"  loss scale skipped {self.scale_skips} step(s)"
        self.log(progress_line(step, self.task.total_steps, dict(self.terms), self.since,
                               extra, label="" if len(self.task.phase_end) == 1 else self.phase))
        self.since, self.scale_skips = (time.time(), step), 0

    def evaluate(self, num_steps):
        del num_steps  # always the whole val split
        metrics = self.task.validate(self.phase)
        self.log(f"val step {int(self.task.step.numpy())}: "
                 + "  ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
        return metrics


def _boundaries(task: Task, start: int) -> list:
    """Global steps after ``start`` where the loop stops to evaluate and checkpoint: every
    ``eval_every`` steps (0: once per epoch), each phase end and the last step."""
    total = task.total_steps
    every = task.config.train.eval_every or task.per_epoch
    points = set(range(every, total + 1, every)) | set(task.phase_end.values()) | {total}
    return sorted(p for p in points if start < p <= total)


def checkpoint_manager(task: Task, model_dir: str) -> tf.train.CheckpointManager:
    """The run's checkpoints (model, step and the task's items) in ``{model_dir}/ckpt``
    (a worker's scratch dir off the chief)."""
    checkpoint = tf.train.Checkpoint(model=task.model, step=task.step,
                                     **task.checkpoint_items())
    return tf.train.CheckpointManager(
        checkpoint, os.path.join(worker_dir(model_dir, task.strategy), "ckpt"),
        max_to_keep=task.config.train.keep_checkpoints, step_counter=task.step)


def restore(task: Task, model_dir: str) -> int:
    """Restores the task from model_dir's latest checkpoint; returns the step it is at."""
    manager = checkpoint_manager(task, model_dir)
    return restore_latest(manager.checkpoint, manager, task.step)


def fit(task: Task, model_dir: str, validate: bool = True,
        log: Callable[[str], None] = print) -> dict:
    """Trains ``task`` to its last step; ``validate``: evaluate and select on val."""
    config, strategy = task.config, task.strategy
    chief = is_chief(strategy)
    save_dir = worker_dir(model_dir, strategy)
    manager = checkpoint_manager(task, model_dir)
    best_manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=task.model, step=task.step),
        os.path.join(save_dir, "best"), max_to_keep=1)
    start = restore_latest(manager.checkpoint, manager, task.step)
    if start:
        log(f"resumed from {manager.latest_checkpoint} at step {start}")
    total = task.total_steps
    if start >= total:
        log(f"already trained to step {start} of {total}")
        return _summary(task, manager)

    runner = _Runner(task, log)
    runner.manager = manager
    best = {"value": run_dir.best_value(model_dir)}

    def keep_best(metrics: dict) -> None:
        """Eval action: a new best val metric saves ``best/`` (all workers: a save is
        collective) and ``best.json`` (the chief)."""
        key = task.selection(runner.phase)
        if key is None or metrics[key] <= best["value"]:
            return
        best["value"] = metrics[key]
        step = int(task.step.numpy())
        best_manager.save(checkpoint_number=step)
        if chief:
            run_dir.write_best(model_dir, {"step": step, "split": "val", "selected_by": key,
                                           "value": metrics[key],
                                           "metrics": task.best_metrics(metrics)})

    stops = _boundaries(task, start)
    every = [config.train.log_every, config.train.checkpoint_every]
    phase_ends = set(task.phase_end.values()) | {total}

    def save(_output) -> None:
        """Train action: a checkpoint at each multiple of checkpoint_every and phase end
        (on every worker: a save is collective)."""
        step = int(task.step.numpy())
        if step in phase_ends or (config.train.checkpoint_every and
                                  step % config.train.checkpoint_every == 0):
            manager.save(checkpoint_number=step)

    def steps_per_loop(step: int) -> int:
        """Inner loops end at the next log line, checkpoint or stop."""
        ends = [(step // n + 1) * n for n in every if n > 0] + [s for s in stops if s > step]
        return max(1, min(ends) - step)

    tensorboard = os.path.join(model_dir, "tensorboard")
    with _orbit_lines_to_the_log():
        controller = orbit.Controller(
            global_step=task.step, trainer=runner, evaluator=runner if validate else None,
            strategy=strategy, steps_per_loop=steps_per_loop, checkpoint_manager=manager,
            train_actions=[runner.progress, save],
            eval_actions=[keep_best] if validate else [],
            summary_dir=os.path.join(tensorboard, "train") if chief else None,
            eval_summary_dir=os.path.join(tensorboard, "val") if chief else None)
        task.begin(start, log)
        for stop in stops:
            controller.train(stop, checkpoint_at_completion=False)
            if validate:
                controller.evaluate()
    if not chief:  # a worker's scratch checkpoints were only for the collectives
        tf.io.gfile.rmtree(save_dir)
    return _summary(task, manager, runner.terms)


@contextlib.contextmanager
def _orbit_lines_to_the_log():
    """orbit's Controller prints each of its lines (``train | step ...`` with the step's
    whole metric dict, its saves) to stdout besides logging them; the loop prints its own
    progress line and validation lines. Inside, orbit's lines go to absl's INFO log only
    (shown with ``--verbosity=0``)."""
    from orbit import controller as orbit_controller
    printed = orbit_controller._log
    orbit_controller._log = logging.info
    try:
        yield
    finally:
        orbit_controller._log = printed


def _summary(task: Task, manager, terms: Optional[dict] = None) -> dict:
    step = int(task.step.numpy())
    out = {"step": step, "total_steps": task.total_steps,
           "checkpoint": manager.latest_checkpoint, "loss": terms or {}}
    if len(task.phase_end) > 1:
        out["phase"] = task.phase(max(step, 1))
    return out
