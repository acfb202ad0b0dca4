"""Exports a trained model as a SavedModel that serves raw sentences and image bytes.

  python -m hgan.export --model_dir=DIR --output_dir=SAVEDMODEL_DIR [--checkpoint=best]

Signatures (load with ``tf.saved_model.load``; only ``import tensorflow_text`` is needed
beside TensorFlow, for its tokenizer ops):

* ``encode_text(sentences: string[N])`` → ``global`` [N, E], ``word`` [N, L, C'],
  ``word_mask`` [N, L], ``phrase`` [N, M, C'], ``phrase_mask`` [N, M];
* ``encode_image(images: string[N])`` (JPEG/PNG bytes) → ``global``, ``word``, ``phrase``;
* ``score(texts: string[T], images: string[I])`` → ``score`` [T, I] (the weighted sum used
  by eval.py) and one [T, I] matrix per enabled level;
* ``score_features(texts, image_global, image_word, image_phrase)`` → the same, against
  image features from ``encode_image`` (what ``hgan.search`` keeps in its index).

Beside the SavedModel: ``assets.extra/config.json`` (TF Serving's folder for extra files;
the training config, read back by ``hgan.config.load_export_config``) and
``checkpoint.txt`` (the checkpoint it was exported from). An existing ``output_dir`` is
replaced atomically.

Requests are validated in-graph: an image that is not JPEG/PNG fails the call with a clear
message; an empty sentence gets a defined score; a sentence longer than ``max_len`` tokens
is truncated, as in training. Noun phrases are found in-graph (``hgan.phrase_graph``).
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile

from absl import app, flags

from hgan import data
from hgan.checkpoints import load_model
from hgan.config import CONFIG_FILE, EXPORT_EXTRA_DIR, Config
from hgan.model import HGAN
from hgan.phrase_graph import GraphPhraseChunker
from hgan.tf_compat import tf

STRINGS = tf.TensorSpec([None], tf.string)
EXTRA_DIR = EXPORT_EXTRA_DIR  # assets.extra: TF Serving's folder for files beside a model
CHECKPOINT_FILE = "checkpoint.txt"


def request_pixels(images, config) -> tf.Tensor:
    """string[N] of JPEG/PNG bytes → [N, H, W, 3] model input; other bytes fail the request
    with a clear message (checked in-graph, before decoding)."""
    def one(encoded):
        known = (tf.equal(tf.strings.substr(encoded, 0, 3), b"\xff\xd8\xff")
                 | tf.equal(tf.strings.substr(encoded, 0, 8), b"\x89PNG\r\n\x1a\n"))
        with tf.control_dependencies([tf.debugging.Assert(
                known, ["encode_image: the bytes are not a JPEG or PNG image"])]):
            return data.preprocess_image(data.decode_image(encoded), config)

    return tf.map_fn(one, images, fn_output_signature=tf.TensorSpec(
        [config.image_height, config.image_width, 3], tf.float32))


class HGANServing(tf.Module):
    """The serving functions around a trained model."""

    def __init__(self, model: HGAN):
        super().__init__(name="hgan_serving")
        self.model = model
        self.config = model.config
        self.tokenizer = data.make_tokenizer(model.config)
        self.chunker = GraphPhraseChunker()

    def _text_features(self, sentences):
        inputs = self.tokenizer(sentences, self.chunker(sentences))
        return self.model.encode_text(inputs, training=False)

    def _image_features(self, images):
        pixels = request_pixels(images, self.config)
        return self.model.encode_image(pixels, training=False)

    @tf.function(input_signature=[STRINGS])
    def encode_text(self, sentences):
        return dict(self._text_features(sentences))

    @tf.function(input_signature=[STRINGS])
    def encode_image(self, images):
        return dict(self._image_features(images))

    @tf.function(input_signature=[STRINGS, STRINGS])
    def score(self, texts, images):
        scores = self.model.score(self._text_features(texts), self._image_features(images),
                                  training=False)
        return {"score" if k == "total" else k: v for k, v in scores.items()}


    def score_features_fn(self):
        """``score_features(texts, image_global, image_word, image_phrase)`` → scores of
        sentences against pre-computed image features (a search index)."""
        c = self.config
        # The region count follows from the partition config (Table 4).
        from hgan.visual import partition_grid
        regions = []
        for pool, stride in ((c.word_pool, c.word_stride), (c.phrase_pool, c.phrase_stride)):
            h, w = partition_grid(tuple(c.partition_map), pool, stride) if c.partition_map \
                else (None, None)
            regions.append(h * w if h else None)

        @tf.function(input_signature=[
            STRINGS, tf.TensorSpec([None, c.embed_dim], tf.float32),
            tf.TensorSpec([None, regions[0], c.local_dim], tf.float32),
            tf.TensorSpec([None, regions[1], c.local_dim], tf.float32)])
        def score_features(texts, image_global, image_word, image_phrase):
            image = {"global": image_global, "word": image_word, "phrase": image_phrase}
            scores = self.model.score(self._text_features(texts), image, training=False)
            return {"score" if k == "total" else k: v for k, v in scores.items()}
        return score_features


def export(model_dir: str, output_dir: str, checkpoint: str = "best") -> str:
    """Writes the SavedModel atomically (a temp dir renamed into place); returns its path.
    An IATV model_dir is exported by ``hgan.iatv.export`` (its own signatures)."""
    if Config.load(model_dir).model == "iatv":
        from hgan.iatv import export as iatv_export
        return iatv_export.export(model_dir, output_dir, checkpoint)
    model, config, path = load_model(model_dir, checkpoint)
    module = HGANServing(model)
    module.score_features = module.score_features_fn()
    return save_servable(module, {
        "encode_text": module.encode_text.get_concrete_function(),
        "encode_image": module.encode_image.get_concrete_function(),
        "score": module.score.get_concrete_function(),
        "score_features": module.score_features.get_concrete_function(),
    }, output_dir, config, path)


def save_servable(module: tf.Module, signatures: dict, output_dir: str, config,
                  checkpoint_path: str) -> str:
    """Saves ``module`` with ``signatures``, the config (``assets.extra/config.json``) and
    the checkpoint it came from (``checkpoint.txt``) beside it; returns ``output_dir``.

    Everything is written to a hidden temporary sibling of ``output_dir`` first, which then
    takes its place (``_replace_dir``): ``output_dir`` never holds a partial export, and an
    existing export is only deleted once the new one is complete. An existing
    ``output_dir`` that is neither empty nor a SavedModel is refused, not deleted.
    """
    target = os.path.normpath(output_dir)
    parent, name = os.path.split(target)
    parent = parent or "."
    if os.path.lexists(target) and not _is_replaceable(target):
        raise FileExistsError(f"{output_dir} exists and is not a SavedModel (no "
                              "saved_model.pb); not replacing it")
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


FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_string("model_dir", None, "A train.py model_dir.")
    flags.DEFINE_string("output_dir", None, "Where the SavedModel goes.")
    flags.DEFINE_string("checkpoint", "best", "best (val-selected), latest, or a path.")
    flags.mark_flags_as_required(["model_dir", "output_dir"])


def main(argv):
    del argv
    out = export(FLAGS.model_dir, FLAGS.output_dir, FLAGS.checkpoint)
    print(f"SavedModel written to {out}")


if __name__ == "__main__":
    _define_flags()
    app.run(main, argv=sys.argv)
