"""``hgan.training.loop``'s progress line: what it shows of a step the loss scale skipped."""
from hgan.tf_compat import tf
from hgan.training import loop
from hgan.training.distribution import FINITE, SCALE_SKIPPED


class _Task:
    """What ``loop._Runner`` reads of a task; steps in ``skipped`` overflow the loss scale
    (their unscaled gradients are not finite: the task reports grad_norm 0 and a skip)."""

    def __init__(self, skipped):
        self.step, self.total_steps, self.phase_end = tf.Variable(0), 4, {"train": 4}
        self.skipped = skipped

    def phase(self, step):
        return "train"

    def source(self, phase):
        return phase

    def batches(self, phase, start, log):
        return iter(range(100))

    def train_step(self, phase, batch):
        self.step.assign_add(1)
        step = int(self.step.numpy())
        skipped = step in self.skipped
        return {"total": 1.0 / step, "grad_norm": 0.0 if skipped else float(step),
                FINITE: 1.0, SCALE_SKIPPED: float(skipped)}

    def loss_key(self, phase):
        return "total"

    def summaries(self, phase, terms):
        return {"loss": terms}

    def progress_extra(self, phase):
        return ""


def test_the_progress_line_counts_loss_scale_skips_and_keeps_the_last_real_grad_norm():
    lines = []
    runner = loop._Runner(_Task(skipped={3, 4}), lines.append)
    runner.train(4)
    runner.progress(None)
    assert lines[-1].startswith("step 4/4  total=0.2500  grad_norm=2.0000")
    assert "loss scale skipped 2 step(s)" in lines[-1]
    assert "inf" not in lines[-1] and "nan" not in lines[-1]
    # The count is per progress line: none since the last one, none said.
    runner.progress(None)
    assert "skipped" not in lines[-1]
