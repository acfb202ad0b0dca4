"""The optimizer of §4 (Adam, lr 2e-4, weight decay 5e-4) and the guarded step that applies
it only when every gradient is finite."""
from __future__ import annotations

from typing import Optional

from hgan.config import Config
from hgan.modeling import losses
from hgan.tf_compat import keras, tf
from hgan.training.schedules import learning_rate_schedule


@keras.utils.register_keras_serializable(package="hgan")
class AdamW(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with decoupled weight decay, its dense update fused.

    Same variables as Keras's Adam (checkpoints of either load in the other), same rule:
    θ ← θ − lr·wd·θ (decoupled weight decay, first); m ← m + (g − m)(1 − β1);
    v ← v + (g² − v)(1 − β2); θ ← θ − lr·√(1 − β2ᵗ)/(1 − β1ᵗ) · m / (√v + ε).
    Keras computes the last three as about ten element-wise kernels per variable, each a
    pass over memory, ``ResourceApplyAdam`` in one; the decay is one product by the
    scalar lr·wd (Keras multiplies the variable by wd, then by lr). Sparse gradients and
    ``amsgrad`` take Keras's Adam path after the same decay.
    """

    def _apply_weight_decay(self, variables):
        """Done per variable in ``update_step`` (it runs first there, as here)."""

    def update_step(self, gradient, variable):
        dtype = variable.dtype
        if self.weight_decay is not None and self._use_weight_decay(variable):
            decay = tf.cast(self.learning_rate, dtype) * tf.cast(self.weight_decay, dtype)
            variable.assign_sub(variable * decay)
        if (isinstance(gradient, tf.IndexedSlices) or self.amsgrad
                or getattr(self, "adaptive_epsilon", False)):
            return super().update_step(gradient, variable)
        index = self._index_dict[self._var_key(variable)]
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        return tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle,
            v=self._velocities[index].handle, beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step), lr=tf.cast(self.learning_rate, dtype),
            beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype), grad=gradient)


def all_finite(tensors) -> tf.Tensor:
    """True when no element of ``tensors`` is NaN or ±Inf, by one summing pass each.

    A sum is NaN or Inf as soon as one term is, so this is ``is_finite`` of every element
    except that a sum overflowing float32 (|Σ| > 3.4e38, far past any usable gradient)
    counts as non-finite too.
    """
    sums = [tf.reduce_sum(tf.cast(t.values if isinstance(t, tf.IndexedSlices) else t,
                                  tf.float32)) for t in tensors]
    return tf.math.is_finite(tf.add_n(sums)) if sums else tf.constant(True)


def apply_if_finite(optimizer, grads_and_vars, finite=True) -> tf.Tensor:
    """``apply_groups_if_finite`` with one optimizer."""
    return apply_groups_if_finite([(optimizer, grads_and_vars)], finite)


def apply_groups_if_finite(groups, finite=True) -> tf.Tensor:
    """``guarded_apply``'s decision alone."""
    return guarded_apply(groups, finite)[0]


def guarded_apply(groups, finite=True, clip_norm: float = 0.0):

    """Sums the gradients over replicas and applies them, each (optimizer, grads_and_vars)
    group with its optimizer, only if they are all finite and ``finite`` holds on every
    replica (e.g. each replica's check of its loss); otherwise nothing changes but the
    optimizers' step counts, as Keras's LossScaleOptimizer skips a step. Returns the
    decision, a scalar bool equal on every replica, and the global norm of the summed
    gradients (before clipping; the same on every replica, so N replicas log the norm of
    the global batch's gradient). ``clip_norm`` > 0 rescales the summed gradients to at
    most that global norm.

    Call in replica context (inside ``strategy.run``) or with no strategy. Under a
    distribution strategy the decision is made in cross-replica context, since a branch
    of a ``tf.cond`` in replica context cannot call ``merge_call`` (which an optimizer's
    step does); the same pattern as ``LossScaleOptimizer.apply_gradients``.
    """
    optimizers = [optimizer for optimizer, _ in groups]
    pairs = [optimizer.aggregate_gradients([(g, v) for g, v in grads_and_vars if g is not None])
             for optimizer, grads_and_vars in groups]
    grads = [[g for g, _ in group] for group in pairs]
    variables = _Unwrapped([[v for _, v in group] for group in pairs])
    finite = tf.cast(finite, tf.bool)
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        # ``finite`` is the caller's per-replica flag (each replica's loss may differ, e.g.
        # by its Gumbel noise): any replica's False skips the step for all.
        vetoes = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                1.0 - tf.cast(finite, tf.float32))
        finite = tf.equal(vetoes, 0.0)
    # The summed gradients are the same on every replica, so is this.
    flat = [g for group in grads for g in group]
    finite = tf.logical_and(finite, all_finite(flat))
    norm = tf.linalg.global_norm(flat) if flat else tf.constant(0.0)
    if clip_norm:
        clipped = iter(tf.clip_by_global_norm(flat, clip_norm, use_norm=norm)[0])
        grads = [[next(clipped) for _ in group] for group in grads]

    def skip():
        for optimizer in optimizers:
            optimizer.iterations.assign_add(1, read_value=False)

    def apply(grads, variables: _Unwrapped):
        for optimizer, g, v in zip(optimizers, grads, variables.value):
            if g:
                optimizer.apply_gradients(zip(g, v), skip_gradients_aggregation=True)

    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.__internal__.smart_cond.smart_cond(finite, lambda: apply(grads, variables), skip)
        return finite, norm

    def cross_replica(strategy, grads, variables, finite):
        decision = strategy.experimental_local_results(finite)[0]
        tf.__internal__.smart_cond.smart_cond(
            decision,
            lambda: strategy.extended.call_for_each_replica(
                apply, args=(grads, variables)),
            skip)

    tf.distribute.get_replica_context().merge_call(
        cross_replica, args=(grads, variables, finite))
    return finite, norm


class _Unwrapped:
    """Carries mirrored variables through ``merge_call`` and ``call_for_each_replica``
    as they are: the optimizer needs the mirrored variables, not one replica's copy."""

    def __init__(self, value):
        self.value = value


WEIGHT_DECAY_MODES = ("l2", "decoupled")


def make_optimizer(config: Config, per_epoch: float) -> "AdamW":
    """§4: Adam over ``learning_rate_schedule``; weight decay decoupled in the optimizer
    when ``weight_decay_mode="decoupled"`` (with "l2" it is a loss term, ``l2_term``)."""
    if config.train.weight_decay_mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"weight_decay_mode must be one of {WEIGHT_DECAY_MODES}, "
                         f"got {config.train.weight_decay_mode!r}")
    decoupled = config.train.weight_decay_mode == "decoupled" and config.train.weight_decay
    return AdamW(learning_rate=learning_rate_schedule(config, per_epoch),
                       weight_decay=config.train.weight_decay if decoupled else None)


def l2_term(config: Config, variables) -> Optional[tf.Tensor]:
    """The coupled weight-decay loss term of ``weight_decay_mode="l2"``, else None."""
    if config.train.weight_decay_mode == "l2" and config.train.weight_decay:
        return losses.l2_penalty(variables, config.train.weight_decay)
    return None


def apply_by_group(tape: tf.GradientTape, loss, groups) -> tf.Tensor:
    """One backward pass; each (optimizer, variables) group applies its own gradients,
    all of them or (a non-finite loss or gradient anywhere) none: returns which."""
    grads = tape.gradient(loss, [v for _, variables in groups for v in variables])
    pairs, start = [], 0
    for optimizer, variables in groups:
        pairs.append((optimizer, list(zip(grads[start:start + len(variables)], variables))))
        start += len(variables)
    return apply_groups_if_finite(pairs, tf.math.is_finite(loss))
