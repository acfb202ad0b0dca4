"""What every family's SavedModel shares: the serving contract, request images decoded and
checked in-graph, and an atomic save with the config and checkpoint it came from beside it.

The contract: every family's export offers these signatures, so ``hgan.serving`` and TF
Serving clients use any model the same way (a family adds its own beside them):

* ``encode_text(sentences: string[N])`` → ``global`` [N, E] (the stage-1 embedding) and
  any text features its ``rerank`` reads;
* ``encode_image(images: string[N])`` (JPEG/PNG bytes) → ``global`` [N, E] and the per-image
  re-rank tables a gallery stores (every output is stored);
* ``rerank(...)`` → ``score`` [T, I]: the second-stage score of a query's candidates. Its
  inputs are named ``texts`` (the sentences) or ``text_<name>`` (output ``name`` of
  ``encode_text``) and ``image_<name>`` (output ``name`` of ``encode_image``, read from the
  gallery);
* ``score(texts, images)`` → ``score`` [T, I]: the family's ranking score from raw inputs;
* ``explain(texts, image_word)`` (optional) → ``selected``, ``weights``, ``words``: which
  words each region selects (HGAN's Fig. 4);
* ``fold_rotations(rotation_<name>, ...)`` and ``rerank_rotated(...)`` (optional, as a
  pair): ``rerank`` of a gallery whose tables ``name`` are stored rotated (pq with a
  learnt rotation R [P, P], decoded as (y·R)[:, :C']): ``fold_rotations`` turns the
  rotations into the image side's first linear maps once per gallery (outputs
  ``fold_<...>``), and ``rerank_rotated`` takes ``rerank``'s inputs with those tables as
  the rows y [.., P] before the rotation, plus the ``fold_<...>`` tensors by name: the
  same score without turning each candidate's rows back.

Beside the SavedModel: ``assets.extra/config.json`` (TF Serving's folder for extra files;
the training config, read back by ``export_config``) and
``checkpoint.txt`` (the checkpoint it was exported from). An existing ``output_dir`` is
replaced atomically.
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile
import types

from hgan.config import CONFIG_FILE, Config
from hgan.data import pipeline
from hgan.tf_compat import tf

STRINGS = tf.TensorSpec([None], tf.string)
# The contract's names.
ENCODE_TEXT, ENCODE_IMAGE, RERANK, SCORE, EXPLAIN = (
    "encode_text", "encode_image", "rerank", "score", "explain")
FOLD_ROTATIONS, RERANK_ROTATED = "fold_rotations", "rerank_rotated"
GLOBAL = "global"  # the stage-1 embedding among encode_text / encode_image's outputs
EXTRA_DIR = "assets.extra"  # TF Serving's folder for files beside a model
CHECKPOINT_FILE = "checkpoint.txt"


def check_contract(signatures) -> None:
    """Refuses a SavedModel without the contract's signatures, naming what is missing."""
    missing = [n for n in (ENCODE_TEXT, ENCODE_IMAGE, RERANK) if n not in signatures]
    if missing:
        raise ValueError(f"the SavedModel has no {missing} signature(s) (it has "
                         f"{sorted(signatures)}): export the model with this version's "
                         "hgan-export")


def export_config(savedmodel: str) -> Config:
    """The config an exported SavedModel was made from (``assets.extra/config.json``)."""
    folder = os.path.join(savedmodel, EXTRA_DIR)
    if not os.path.exists(os.path.join(folder, CONFIG_FILE)):
        raise FileNotFoundError(f"{savedmodel} has no {EXTRA_DIR}/{CONFIG_FILE}: it is not a "
                                "SavedModel written by hgan-export")
    return Config.load(folder)


class ServingModule(tf.Module):
    """Base of the families' serving modules: the trained Keras ``model``, its config and
    tokenizer. The Keras model stays out of the saved object graph (a SimpleNamespace is
    not tracked); only its variables, which the signatures capture, are saved. Tracked,
    Keras would trace every layer's call for ``keras.models.load_model``, which these
    SavedModels do not serve, and that was half of the export time."""

    def __init__(self, model, name: str):
        super().__init__(name=name)
        self._keras = types.SimpleNamespace(model=model)
        self.model_variables = list(model.variables)
        self.config = model.config
        self.tokenizer = pipeline.make_tokenizer(model.config)

    @property
    def model(self):
        return self._keras.model


def request_pixels(images, config) -> tf.Tensor:
    """string[N] of JPEG/PNG bytes → [N, H, W, 3] model input; other bytes fail the request
    with a clear message (checked in-graph, before decoding)."""
    def one(encoded):
        known = (tf.equal(tf.strings.substr(encoded, 0, 3), b"\xff\xd8\xff")
                 | tf.equal(tf.strings.substr(encoded, 0, 8), b"\x89PNG\r\n\x1a\n"))
        with tf.control_dependencies([tf.debugging.Assert(
                known, ["encode_image: the bytes are not a JPEG or PNG image"])]):
            return pipeline.preprocess_image(pipeline.decode_image(encoded), config)

    return tf.map_fn(one, images, fn_output_signature=tf.TensorSpec(
        [config.data.image_height, config.data.image_width, 3], tf.float32))


def check_output_dir(output_dir: str) -> None:
    """Raises FileExistsError when ``output_dir`` exists and is neither empty nor a
    SavedModel: ``save_servable`` would refuse to replace it (checked before the work that
    leads to a save, e.g. a training run that exports at its end)."""
    target = os.path.normpath(output_dir)
    if os.path.lexists(target) and not _is_replaceable(target):
        raise FileExistsError(f"{output_dir} exists and is not a SavedModel (no "
                              "saved_model.pb); not replacing it")


def save_servable(module: tf.Module, signatures: dict, output_dir: str, config,
                  checkpoint_path: str) -> str:
    """Saves ``module`` with ``signatures``, the config (``assets.extra/config.json``) and
    the checkpoint it came from (``checkpoint.txt``) beside it; returns ``output_dir``.

    ``signatures`` maps names to ``tf.function``s with input signatures, not to concrete
    functions: the save traces each function once, in its own context, and serialises the
    module's functions from that trace; a function traced before the save is traced again
    by it (the save context is part of the trace cache's key): two traces instead of one.

    Everything is written to a hidden temporary sibling of ``output_dir`` first, which then
    takes its place (``_replace_dir``): ``output_dir`` never holds a partial export, and an
    existing export is only deleted once the new one is complete. An existing
    ``output_dir`` that is neither empty nor a SavedModel is refused, not deleted.
    """
    check_output_dir(output_dir)
    target = os.path.normpath(output_dir)
    parent, name = os.path.split(target)
    parent = parent or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the export from a server
        tf.saved_model.save(module, tmp, signatures=signatures)
        os.makedirs(os.path.join(tmp, EXTRA_DIR), exist_ok=True)
        with open(os.path.join(tmp, EXTRA_DIR, CONFIG_FILE), "w") as f:
            f.write(config.to_json())
        with open(os.path.join(tmp, CHECKPOINT_FILE), "w") as f:
            f.write(checkpoint_path + "\n")
        _fsync_tree(tmp)  # complete on disk before it takes the name
        _replace_dir(tmp, target)
        _fsync_tree(parent, recursive=False)
    finally:
        _remove(tmp)  # what is left there: a failed export, or the replaced one
    return output_dir


def _is_replaceable(path: str) -> bool:
    return os.path.isdir(path) and (not os.listdir(path)
                                    or os.path.exists(os.path.join(path, "saved_model.pb")))


def _fsync_tree(folder: str, recursive: bool = True) -> None:
    """fsyncs the files and folders under ``folder`` (only ``folder`` itself if not
    ``recursive``), so a rename that publishes them cannot outlive their contents."""
    walk = os.walk(folder) if recursive else [(folder, [], [])]
    for dirpath, _, files in walk:
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: str) -> None:
    if os.path.islink(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def _replace_dir(new: str, target: str) -> None:
    """Puts the folder ``new`` at ``target`` (its sibling); the old ``target``, if any, ends
    up at ``new``'s path, for the caller to delete.

    No target: one rename. An existing one: swapped in one atomic step (Linux
    ``renameat2(RENAME_EXCHANGE)``), so readers see the old export or the new one, never
    neither. Where that is unavailable: the old one renamed aside, the new one renamed in
    (target is absent for the instant between the two renames; if the second fails, the
    old one is put back).
    """
    if not os.path.lexists(target):
        os.rename(new, target)
        return
    if _exchange(new, target):
        return
    holder = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-",
                              dir=os.path.dirname(target) or ".")
    aside = os.path.join(holder, "old")
    try:
        os.rename(target, aside)
        try:
            os.rename(new, target)
        except BaseException:
            os.rename(aside, target)
            raise
        os.rename(aside, new)  # the old export where the caller deletes it
    finally:
        _remove(holder)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Atomically swaps two paths (Linux >= 3.15); False where that is not supported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without renameat2 (glibc < 2.28)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # not on this file system
        return False
    raise OSError(err, os.strerror(err), b)
