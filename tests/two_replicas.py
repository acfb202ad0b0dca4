"""The checks that compare one replica with two, run together in one process of their own
(``conftest.two_replica_results`` starts it once per test run; test_train, test_optim
and test_iatv_buffers read their entries).

The process splits the CPU into two logical devices before TensorFlow starts, which only
a new process can do: the test processes keep one CPU device, so every other test trains
on one replica as a CPU run does. One two-device strategy serves every check: two such
strategies in one process number their collectives alike, and the second one's all-reduce
meets the first one's.

    python tests/two_replicas.py TINY_CONFIG.json TINY_DATA_DIR OUT.json
"""
import functools
import json
import sys

import numpy as np

from hgan.config import Config
from hgan.data import pipeline
from hgan.modeling.iatv import stage1
from hgan.tf_compat import tf
from hgan.training import iatv_task, optim
from hgan.training.buffers import IdentityBuffers
from hgan.training.hgan_task import HGANTask


@functools.lru_cache(maxsize=None)
def two_replicas():
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def hgan_step(config, data):
    """test_train: one HGAN training step (``HGANTask.train_step``) on each strategy."""
    out, weights = {}, None
    for name, strategy in (("one", tf.distribute.MirroredStrategy(["/cpu:0"])),
                           ("two", two_replicas())):
        tf.random.set_seed(0)
        trainer = HGANTask(config, data, strategy=strategy)
        batch = next(iter(pipeline.train_dataset(data, config, trainer.tokenizer)))
        if name == "two":
            trainer.model.set_weights(weights)
        weights = trainer.model.get_weights()
        trainer.initialize_buffers(log=lambda _: None)
        dist = trainer.strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensors(batch))
        terms = trainer.train_step("train", next(iter(dist)))
        out[name] = {k: float(v) for k, v in terms.items()}
        out[name + "_w"] = float(sum(abs(w).sum() for w in trainer.model.get_weights()))
        out[name + "_buffers"] = [trainer.buffers.image.numpy().tolist(),
                                  trainer.buffers.text.numpy().tolist()]
    return out


def optim_steps():
    """test_optim: a finite, a non-finite and a vetoed step of ``optim.AdamW`` on each."""
    out = {}
    for name, strategy in (("one", tf.distribute.MirroredStrategy(["/cpu:0"])),
                           ("two", two_replicas())):
        with strategy.scope():
            w = tf.Variable([[1.0, -2.0], [0.5, 3.0]])
            opt = optim.AdamW(learning_rate=0.1, weight_decay=0.1)
            opt.build([w])
        # Global batch of 4 rows; row 3 is poisoned in the second step (on replica 2 of 2).
        x = tf.constant([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5], [2.0, 1.0]])

        def replica_step(rows, poison, veto_last):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.tanh(rows @ w) * poison) / 4.0
            ctx = tf.distribute.get_replica_context()
            last = ctx.replica_id_in_sync_group == ctx.num_replicas_in_sync - 1
            return optim.apply_if_finite(opt, [(tape.gradient(loss, w), w)],
                                         finite=tf.logical_not(veto_last & last))

        @tf.function
        def step(poison, veto_last=False):
            dist = strategy.experimental_distribute_values_from_function(
                lambda ctx: (tf.split(x, ctx.num_replicas_in_sync)[ctx.replica_id_in_sync_group],
                             tf.split(poison, ctx.num_replicas_in_sync)[ctx.replica_id_in_sync_group]))
            flags = strategy.run(replica_step, args=(*dist, tf.constant(veto_last)))
            return strategy.experimental_local_results(flags)

        applied = [bool(f) for f in step(tf.ones([4, 1]))]
        after_good = w.numpy().tolist()
        skipped = [bool(f) for f in step(tf.constant([[1.0], [1.0], [1.0], [float("nan")]]))]
        # Finite gradients, but the last replica's own flag (its loss) says no.
        vetoed = [bool(f) for f in step(tf.ones([4, 1]), veto_last=True)]
        out[name] = dict(applied=applied, skipped=skipped + vetoed, after_good=after_good,
                         after_bad=[v.numpy().tolist() for v in strategy.experimental_local_results(w)],
                         slots=[s.numpy().tolist() for s in opt.variables()[1:]],
                         iterations=int(opt.iterations.numpy()))
    return out


def iatv_buffer_step(config):
    """test_iatv_buffers: one IATV stage-1 step and its identity-buffer update on each."""
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(size=(8, config.data.image_height, config.data.image_width, 3)),
             "input_word_ids": rng.integers(1, 30, (8, config.data.max_len)),
             "input_mask": (np.arange(config.data.max_len)[None] < rng.integers(2, 7, (8, 1))),
             "label": np.array([0, 1, 1, 2, 3, 0, 2, 2])}
    batch = {k: tf.constant(v, tf.float32 if k == "image" else tf.int32)
             for k, v in batch.items()}
    init = rng.normal(size=(2, 8, config.model.embed_dim)).astype(np.float32)
    out, weights = {}, None
    for name, strategy in (("one", tf.distribute.MirroredStrategy(["/cpu:0"])),
                           ("two", two_replicas())):
        with strategy.scope():
            model = stage1.build_stage1(config, 30)
            # BatchNorm would normalise with per-replica statistics; frozen, the features
            # of both runs are the same and what is compared is the buffer update.
            for layer in model.image_tower.submodules:
                if isinstance(layer, tf.keras.layers.BatchNormalization):
                    layer.trainable = False
            buffers = IdentityBuffers(4, config.model.embed_dim)
            buffers.initialize(init[0], np.array([0, 1, 2, 3] * 2), init[1],
                               np.array([3, 2, 1, 0] * 2))
            optimizers = iatv_task.make_optimizers(config)
        if name == "two":
            model.set_weights(weights)
        weights = model.get_weights()
        before = buffers.image.numpy()
        step = iatv_task.make_stage1_step(model, buffers, optimizers, strategy)
        dist = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
        out[name] = {"loss": float(step(next(iter(dist)))["cmce"]),
                      "image": buffers.image.numpy().tolist(),
                      "text": buffers.text.numpy().tolist(),
                      "moved": float(np.abs(buffers.image.numpy() - before).max()),
                      "weights": float(sum(np.abs(w).sum() for w in model.get_weights()))}
        # Every mirror holds the same buffer.
        copies = [v.numpy() for v in strategy.experimental_local_results(buffers.image)]
        out[name]["mirrors_agree"] = all(np.array_equal(c, copies[0]) for c in copies)
    return out


def hgan_config(tiny: Config) -> Config:
    """test_train's tiny HGAN, deterministic: soft attention and no dropout, so the two
    runs agree up to float summation order; IATV's CMCE as L_pair (the identity buffers)
    and BatchNorm synchronised across replicas (per-replica statistics would differ from
    one replica's)."""
    return tiny.replace(bert="scratch:2x16", bert_layers="last", checkpoint_every=2,
                        max_steps=3, attention="soft", dropout=0.0, batch_size=8,
                        identities_per_batch=4, random_flip=False,
                        sentence_loss="cmce", sync_batchnorm=True)


def iatv_config(tiny: Config) -> Config:
    return tiny.replace(family="iatv", backbone="small_cnn", backbone_weights="none",
                        max_len=6, word_dim=8, lstm_units=8, embed_dim=8,
                        cnn_learning_rate=0.1, learning_rate=0.01)


def run_all(tiny: Config, data: str) -> dict:
    return {"hgan_cmce_sync_bn": hgan_step(hgan_config(tiny), data),
            "optim": optim_steps(),
            "iatv_buffers": iatv_buffer_step(iatv_config(tiny))}


if __name__ == "__main__":
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * 2)
    config_path, data_dir, out_path = sys.argv[1:]
    with open(config_path) as f:
        results = run_all(Config.from_dict(json.load(f)), data_dir)
    with open(out_path, "w") as f:
        json.dump(results, f)
