"""A hgan-train model_dir's checkpoints: which one to load, and a strict restore (each
family's ``load_model`` builds its model from config.json, then calls these)."""
from __future__ import annotations

import os

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
        raise FileNotFoundError(f"no checkpoint in {model_dir}: train it with hgan-train first")
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
