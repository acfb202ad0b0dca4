"""Learning-rate schedules: §4 gives only HGAN's initial rate (2e-4); the ×0.1 steps and the
warmup are this project's choices (docs/design.md)."""
from __future__ import annotations

from hgan.config import Config
from hgan.tf_compat import keras, tf


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


def learning_rate_schedule(config: Config, per_epoch: float) -> StepSchedule:
    """×0.1 at each of ``lr_decay_epochs``, with optional linear warmup (§4 gives only the
    initial rate, 2e-4)."""
    boundaries = [float(int(e * per_epoch)) for e in config.train.lr_decay_epochs]
    return StepSchedule(config.train.learning_rate, boundaries, config.train.warmup_steps)
