"""A run's directory: its config.json (saved, or checked on resume), best.json, and the
split that model selection may use."""
from __future__ import annotations

import json
import os

from hgan.config import Config
from hgan.data import pipeline, word_vocab
from hgan.tf_compat import tf

# Fields that may change when a run is resumed; anything else must match the saved config.
RESUMABLE_FIELDS = {"train.epochs", "train.steps", "train.max_steps",
                    "train.checkpoint_every", "train.keep_checkpoints", "train.eval_every",
                    "train.log_every", "train.jit_compile"}  # jit_compile: how, not what
BEST_FILE = "best.json"


def best_value(model_dir: str) -> float:
    """The selection metric's value in model_dir/best.json, or -inf before any model was
    selected."""
    path = os.path.join(model_dir, BEST_FILE)
    if not tf.io.gfile.exists(path):
        return float("-inf")
    with tf.io.gfile.GFile(path) as f:
        record = json.load(f)
    if "value" not in record:
        raise ValueError(f"{path} has no 'value' (the selection metric's value): it was not "
                         "written by this version's hgan-train; delete it to select again")
    return float(record["value"])


def write_best(model_dir: str, record: dict) -> None:
    """Writes model_dir/best.json atomically (call on the chief)."""
    path = os.path.join(model_dir, BEST_FILE)
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def has_validation(data_dir: str, val_split: str, log=print) -> bool:
    """Whether model selection can run on ``val_split``: never the test split (an error),
    and only if the data has it (otherwise the last checkpoint is the model, as logged)."""
    if val_split == "test":
        raise ValueError("model selection on the test split is not allowed; use val")
    if val_split in pipeline.load_manifest(data_dir)["splits"]:
        return True
    log(f"no {val_split!r} split: no model selection, the last checkpoint is the model")
    return False


def resolve_vocab(config: Config, data_dir: str, model_dir: str) -> Config:
    """``data.text_vocab=words`` without a ``vocab_file``: copies the data dir's word
    vocabulary into ``model_dir`` (so the run keeps the words it was trained with) and
    points ``vocab_file`` at the copy. Any other config comes back as it was."""
    if config.data.text_vocab != "words" or config.data.vocab_file:
        return config
    source = os.path.join(data_dir, word_vocab.FILE)
    if not tf.io.gfile.exists(source):
        raise FileNotFoundError(f"text_vocab=words: {data_dir} has no {word_vocab.FILE}; "
                                "re-run hgan-prep on the dataset to write it")
    target = os.path.join(model_dir, word_vocab.FILE)
    tf.io.gfile.makedirs(model_dir)
    if not tf.io.gfile.exists(target):
        tf.io.gfile.copy(source, target + ".tmp", overwrite=True)
        tf.io.gfile.rename(target + ".tmp", target, overwrite=True)
    return config.replace(vocab_file=target)


def reconcile_config(config: Config, model_dir: str) -> Config:
    """Saves the config, or checks a resumed run's config against the saved one."""
    if tf.io.gfile.exists(os.path.join(model_dir, "config.json")):
        saved = Config.load(model_dir)
        now = config.flat()
        before = saved.flat()
        diff = {k for k in set(now) | set(before) if now.get(k) != before.get(k)}
        blocking = sorted(diff - RESUMABLE_FIELDS)
        if blocking:
            raise ValueError(
                f"{model_dir} holds a run with a different config ({blocking}); resume with "
                "the same settings or choose a new --model_dir")
    config.save(model_dir)
    return config


def steps_per_epoch(manifest: dict, config: Config, split: str = "train") -> int:
    return max(1, manifest["splits"][split]["captions"] // config.data.batch_size)


def run_length(manifest: dict, config: Config) -> tuple[int, float]:
    """(steps of the run, steps the schedule counts as an epoch). ``train.steps`` > 0 fixes
    the length whatever the data's size, and ``lr_decay_epochs`` then fall at the same
    fractions of it (epoch = steps / epochs); else ``train.epochs`` epochs of the training
    captions. ``train.max_steps`` is applied by the caller (it stops a run early and
    leaves the schedule as it was)."""
    per_epoch = steps_per_epoch(manifest, config)
    if config.train.steps > 0:
        return config.train.steps, config.train.steps / config.train.epochs
    return config.train.epochs * per_epoch, float(per_epoch)


def check_phrase_tagger(manifest: dict, data_dir: str, paper: bool,
                        allow_fallback: bool = False) -> None:
    """Refuses a ``paper`` run on noun phrases from the fallback lexicon tagger (what
    ``hgan-prep --tagger=auto`` uses when NLTK's perceptron data is missing), unless
    ``allow_fallback``: the paper's phrases come from a real part-of-speech tagger."""
    if not paper or allow_fallback or manifest.get("phrase_tagger") != "fallback":
        return
    raise ValueError(
        f"{data_dir}'s noun phrases come from the fallback lexicon tagger "
        f"(phrase_tagger=fallback in its manifest; requested: "
        f"{manifest.get('phrase_tagger_requested', '?')}), not NLTK's perceptron tagger. "
        "For a paper run, install the tagger's data (python -m nltk.downloader "
        "averaged_perceptron_tagger_eng) and re-run hgan-prep --tagger=perceptron; or pass "
        "--allow_fallback_tagger to train on these phrases anyway")
