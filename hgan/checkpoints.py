"""Rebuilding a trained model from a ``train.py`` model_dir (config.json + checkpoints)."""
from __future__ import annotations

import os

from hgan import data
from hgan.config import Config
from hgan.model import HGAN, build_model
from hgan.tf_compat import tf


def resolve_checkpoint(model_dir: str, which: str = "best") -> str:
    """``best`` (val-selected; falls back to latest), ``latest``, or a checkpoint path."""
    if which not in ("best", "latest"):
        if not tf.io.gfile.exists(which + ".index"):
            raise FileNotFoundError(f"checkpoint {which} not found")
        return which
    if which == "best":
        best = tf.train.latest_checkpoint(os.path.join(model_dir, "best"))
        if best:
            return best
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "ckpt"))
    if not latest:
        raise FileNotFoundError(f"no checkpoint in {model_dir}: train it with train.py first")
    return latest


def restore_model(model, path: str) -> None:
    """Restores ``model``'s weights from the checkpoint ``path``; every weight of the model
    must be in it (a checkpoint of another architecture or code version is an error, never
    a silently half-random model). Optimizer slots and buffers in it are ignored."""
    try:
        status = tf.train.Checkpoint(model=model).restore(path)
        status.assert_existing_objects_matched().expect_partial()
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
        raise ValueError(f"checkpoint {path} does not match the model its config.json "
                         f"describes (another architecture or code version?): "
                         f"{str(e).splitlines()[0][:300]}") from e


def load_model(model_dir: str, which: str = "best") -> tuple[HGAN, Config, str]:
    """The model of ``model_dir`` with the chosen checkpoint's weights (inference only)."""
    config = Config.load(model_dir)
    manifest_classes = config.num_classes
    tokenizer = data.make_tokenizer(config)
    path = resolve_checkpoint(model_dir, which)
    reader = tf.train.load_checkpoint(path)
    if not manifest_classes:
        # The classifier width is read back from the checkpoint rather than the data.
        shapes = reader.get_variable_to_shape_map()
        kernels = [s for name, s in shapes.items() if "classifier" in name and len(s) == 2]
        manifest_classes = kernels[0][1] if kernels else 0
    # Synchronised BatchNorm only changes training statistics; at inference the fused
    # per-replica layer computes the same with the same variables, faster.
    model = build_model(config.replace(sync_batchnorm=False), tokenizer.vocab_size + 1,
                        manifest_classes)
    restore_model(model, path)
    return model, config, path
