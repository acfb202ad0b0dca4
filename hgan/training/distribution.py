"""Distribution: the strategy, the chief, per-worker directories, cross-replica helpers.

Training runs under ``MirroredStrategy`` (all local GPUs; one replica on CPU) or, when
``TF_CONFIG`` is set, ``MultiWorkerMirroredStrategy``. In-batch losses (§3.4, IATV's CMCE)
see the global batch: every replica gathers the others' features (``gather_replicas``),
computes the loss of the global batch scaled by 1/N, and the summed gradients are the
global gradient.
"""
from __future__ import annotations

import os
from typing import Callable

from hgan.tf_compat import tf

FINITE = "_finite"  # a step's flag: 1.0 when its loss and gradients were finite (applied)
# Mixed precision: 1.0 when the loss scale overflowed and the LossScaleOptimizer skipped the
# step (it lowers the scale; the run goes on).
SCALE_SKIPPED = "_scale_skipped"


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



def gather_tree(tree):
    """``gather_replicas`` over every tensor of a nested structure (replica context)."""
    ctx = tf.distribute.get_replica_context()
    return tf.nest.map_structure(lambda t: gather_replicas(ctx, t), tree)


def replicated(strategy: tf.distribute.Strategy, replica_fn: Callable[..., dict]):
    """A compiled ``step(distributed_batch) -> {name: scalar}`` running ``replica_fn(batch)``
    on every replica. Every replica computes the same global values (losses of the
    gathered batch, the summed gradients' norm, the finite flag); MEAN just picks them."""
    @tf.function
    def step(batch):
        terms = strategy.run(replica_fn, args=(batch,))
        return {k: strategy.reduce("MEAN", v, axis=None) for k, v in terms.items()}
    return step


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
