"""``hgan.modeling.checkpoints.resolve_checkpoint``: which checkpoint of a model_dir eval/export load."""
import os
import re

import pytest

from hgan.modeling import checkpoints
from hgan.modeling.hgan.model import load_model
from hgan.config import Config
from hgan.tf_compat import tf


def _save(directory, *steps):
    """Checkpoints numbered ``steps`` under ``directory``, as train.py's managers write them."""
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.0)), directory,
                                         max_to_keep=10)
    return [manager.save(checkpoint_number=s) for s in steps]


@pytest.fixture()
def model_dir(tmp_path):
    """ckpt/ at steps 2 and 4 (4 the latest), best/ (val-selected) at step 2."""
    _save(str(tmp_path / "ckpt"), 2, 4)
    _save(str(tmp_path / "best"), 2)
    return str(tmp_path)


def test_best_is_the_val_selected_checkpoint_and_latest_the_last_one(model_dir):
    assert checkpoints.resolve_checkpoint(model_dir) == os.path.join(model_dir, "best", "ckpt-2")
    assert checkpoints.resolve_checkpoint(model_dir, "best") == os.path.join(
        model_dir, "best", "ckpt-2")
    assert checkpoints.resolve_checkpoint(model_dir, "latest") == os.path.join(
        model_dir, "ckpt", "ckpt-4")


def test_an_explicit_path_is_taken_as_is_when_it_exists(model_dir):
    older = os.path.join(model_dir, "ckpt", "ckpt-2")
    assert checkpoints.resolve_checkpoint(model_dir, older) == older
    for missing in (os.path.join(model_dir, "ckpt", "ckpt-3"), os.path.join(model_dir, "ckpt")):
        with pytest.raises(FileNotFoundError, match=f"checkpoint {re.escape(missing)} not found"):
            checkpoints.resolve_checkpoint(model_dir, missing)


def test_best_falls_back_to_latest_without_a_val_selection(tmp_path):
    _save(str(tmp_path / "ckpt"), 3)
    os.makedirs(tmp_path / "best")  # made, never saved into (no val split)
    assert checkpoints.resolve_checkpoint(str(tmp_path), "best") == os.path.join(
        str(tmp_path), "ckpt", "ckpt-3")


@pytest.mark.parametrize("which", ["best", "latest"])
def test_a_model_dir_without_checkpoints_is_a_clear_error(tmp_path, which):
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*train it with hgan-train"):
        checkpoints.resolve_checkpoint(str(tmp_path), which)


def test_latest_never_picks_the_best_directory(tmp_path):
    _save(str(tmp_path / "best"), 5)  # a best/ alone is no "latest"
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        checkpoints.resolve_checkpoint(str(tmp_path), "latest")


def test_load_model_says_what_is_missing(tmp_path, tiny_vocab):
    with pytest.raises(FileNotFoundError, match="no config.json .*hgan-train model_dir"):
        load_model(str(tmp_path))
    Config().replace(vocab_file=tiny_vocab).save(str(tmp_path))  # a config, no checkpoint yet
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        load_model(str(tmp_path))
