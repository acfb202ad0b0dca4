"""``tf.data`` pipelines from the TFRecord shards of ``data_prep``.

Three streams:
  * ``train_dataset``: one element per (image, caption) pair — HGAN §3.1 trains on the N
    image-text pairs — decoded, resized, flipped with its caption's left and right swapped
    (``data.random_flip``), normalised and tokenised, batched
    (optionally identity-aware, P identities × K pairs), repeated.
  * ``gallery_dataset``: every image of a split once, in shard order, with its label.
  * ``query_dataset``: every caption of a split once, in shard order, with its label and
    the index of its own image in the gallery stream.

``preprocess_image`` is the one image function: training, evaluation and the exported
SavedModel all call it.
"""
from __future__ import annotations

import collections
import copy
import functools
import json
import os
from typing import Optional

from absl import logging

from hgan.data import mirror, records
from hgan.config import Config
from hgan.tf_compat import tf
from hgan.data.tokenization import CaptionTokenizer, vocab_path

AUTOTUNE = tf.data.AUTOTUNE
MANIFEST = "manifest.json"

# BGR means of the Caffe-converted ImageNet ResNet-50 weights of tf_keras.applications.
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def load_manifest(data_dir: str) -> dict:
    """``data_dir/manifest.json``, read once per process while the file is unchanged (a
    command's steps all ask for it; each gets its own copy)."""
    path = os.path.join(data_dir, MANIFEST)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path} not found: data_dir must be the output_dir of `hgan-prep`")
    stat = tf.io.gfile.stat(path)
    return copy.deepcopy(_read_manifest(path, stat.mtime_nsec, stat.length))


@functools.lru_cache(maxsize=8)
def _read_manifest(path: str, mtime_nsec: int, length: int) -> dict:
    del mtime_nsec, length  # the cache key: a rewritten manifest is read again
    with tf.io.gfile.GFile(path) as f:
        manifest = json.load(f)
    if manifest.get("schema_version") != records.SCHEMA_VERSION:
        raise ValueError(f"{path} has schema {manifest.get('schema_version')}, this code reads "
                         f"{records.SCHEMA_VERSION}: re-run hgan-prep")
    return manifest


def split_files(data_dir: str, split: str) -> list[str]:
    """The split's shard paths as listed in the manifest (never a stray temp file)."""
    manifest = load_manifest(data_dir)
    if split not in manifest["splits"]:
        raise ValueError(f"split {split!r} not in {data_dir}; have {sorted(manifest['splits'])}")
    files = [os.path.join(data_dir, name) for name in manifest["splits"][split]["shards"]]
    missing = [f for f in files if not tf.io.gfile.exists(f)]
    if missing:
        raise FileNotFoundError(f"shards listed in the manifest are missing: {missing[:3]}")
    return files


def split_examples(data_dir: str, split: str) -> list[dict]:
    """Every example of the split, parsed (``records.parse_example``), in shard order: for
    tools that read a split whole (a search gallery's captions and images)."""
    return [records.parse_example(e)
            for e in tf.data.TFRecordDataset(split_files(data_dir, split))]


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG bytes → [h, w, 3] uint8."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def preprocess_image(image: tf.Tensor, config: Config,
                     flip: Optional[tf.Tensor] = None) -> tf.Tensor:
    """[h, w, 3] uint8 → [H, W, 3] float32: resize, (flip), normalise (§4: ×1/256).

    Args:
      flip: a scalar bool (training only, ``flip_draw``): mirror the image left to right.
    """
    image = tf.image.resize(image, [config.data.image_height, config.data.image_width],
                            method="bilinear", antialias=True)
    if flip is not None:
        image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    return normalize(image, resolve_normalization(config))


def flip_draw(seed: tf.Tensor) -> tf.Tensor:
    """Whether a training pair is flipped: a scalar bool, true half the time, from a [2] int
    seed (stateless, so a pipeline is deterministic under its seed whatever the
    parallelism). The same draw as ``tf.image.stateless_random_flip_left_right``'s."""
    return tf.random.stateless_uniform([], seed, minval=0.0, maxval=1.0) < 0.5


def training_image(encoded: tf.Tensor, config: Config, seed: tf.Tensor):
    """A training pair's image [H, W, 3] and, with ``data.random_flip``, whether it was
    flipped (a scalar bool; None without the flip): flipped on half the draws of ``seed``.
    The batch then swaps "left" and "right" in the captions of the flipped rows
    (``hgan.data.mirror.mirror_where``, in ``_tokenize``), so each caption stays true of
    its image."""
    flip = flip_draw(seed) if config.data.random_flip else None
    return preprocess_image(decode_image(encoded), config, flip=flip), flip


# What each backbone's pretrained tf_keras.applications weights were trained on: caffe
# (BGR, ImageNet mean subtracted, 0–255) for ResNet50 and VGG16, [-1, 1] for InceptionV3.
WEIGHTS_NORMALIZATION = {"resnet50": "caffe", "vgg16": "caffe", "inception_v3": "inception",
                         "googlenet": "unit"}
NORMALIZATIONS = ("auto", "paper", "caffe", "inception", "unit")
_warned = set()


def resolve_normalization(config: Config) -> str:
    """The input normalisation a run uses: ``config.data.normalization`` unless it is "auto",
    which follows the backbone's weights (``WEIGHTS_NORMALIZATION`` for ImageNet weights
    or a Keras weights file of them; §4's ×1/256, "paper", for a backbone trained from
    scratch). An explicit choice that contradicts pretrained weights is kept but warned
    about loudly (it swaps conv1's colour channels in a task whose captions are colours)."""
    mode = config.data.normalization
    if mode not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {mode!r}; choose from {NORMALIZATIONS}")
    backbone = config.model.backbone
    pretrained = config.model.backbone_weights not in ("none", "")
    expected = WEIGHTS_NORMALIZATION.get(backbone) if pretrained else None
    if mode == "auto":
        return expected or "paper"
    if expected and mode != expected and (backbone, mode) not in _warned:
        _warned.add((backbone, mode))
        logging.warning(
            "normalization=%s but %s's pretrained weights (%s) expect %r input: the "
            "pretrained filters will see wrongly scaled or channel-swapped colours. Use "
            "normalization=auto unless these weights were trained with %s.", mode,
            backbone, config.model.backbone_weights, expected, mode)
    return mode


def normalize(image: tf.Tensor, mode: str) -> tf.Tensor:
    """[..., 3] RGB 0–255 → the model's input: "paper" ×1/256 (HGAN §4), "caffe" BGR minus
    the ImageNet mean, "inception" [-1, 1], "unit" [0, 1] (TF-Hub image modules)."""
    image = tf.cast(image, tf.float32)
    if mode == "paper":
        return image / 256.0
    if mode == "caffe":  # what ResNet50 / VGG16(weights="imagenet") were trained with
        return image[..., ::-1] - _CAFFE_BGR_MEAN
    if mode == "inception":  # InceptionV3(weights="imagenet")
        return image / 127.5 - 1.0
    if mode == "unit":  # TF-Hub's image convention ([0, 1]): the GoogLeNet module
        return image / 255.0
    raise ValueError(f"unknown normalization {mode!r}")


def _dense_spans(spans: tf.RaggedTensor, max_phrases: int) -> tf.Tensor:
    """Ragged [C, (P), 2] → [C, max_phrases, 2], padded with -1, so elements batch densely."""
    return spans[:, :max_phrases].to_tensor(default_value=-1, shape=[None, max_phrases, 2])


def _pairs(example: dict, max_phrases: int) -> tf.data.Dataset:
    """One image record → a dataset of its (image, caption) pairs."""
    n = tf.shape(example["captions"])[0]
    return tf.data.Dataset.from_tensor_slices({
        "encoded": tf.fill([n], example["encoded"]),
        "label": tf.fill([n], example["label"]),
        "caption": example["captions"],
        "phrase_spans": _dense_spans(example["phrase_spans"], max_phrases),
    })


def _read(files: list[str], deterministic_order: bool = True) -> tf.data.Dataset:
    ds = tf.data.TFRecordDataset(files, num_parallel_reads=1 if deterministic_order else AUTOTUNE)
    return ds.map(records.parse_example, num_parallel_calls=AUTOTUNE, deterministic=True)


def image_index_table(data_dir: str, split: str) -> tf.lookup.StaticHashTable:
    """path → the image's position in the split's shard order (``gallery_dataset``'s
    order), for training that treats every image as its own identity."""
    paths = [e["path"] for e in _read(split_files(data_dir, split))]
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.stack(paths),
                                            tf.range(len(paths), dtype=tf.int64)), -1)


def train_dataset(data_dir: str, config: Config, tokenizer: CaptionTokenizer,
                  split: str = "train", seed: Optional[int] = None,
                  repeat: bool = True, label_by_image: bool = False,
                  keep_caption: bool = False) -> tf.data.Dataset:
    """Batched training pairs: ``image`` [B,H,W,3], BERT inputs [B,L],
    ``phrase_token_mask`` [B,M,L], ``label`` [B]. Deterministic for a fixed seed.

    ``keep_caption``: batches keep the ``caption`` strings as tokenised, a flipped image's
    with left and right swapped (for ``hgan.training.hgan_token_cache``).

    ``label_by_image``: ``label`` is the image's index (``image_index_table``) instead of
    its identity, every image its own identity (IATV's "w/o ID", Table 2).

    With ``config.identities_per_batch = P > 0`` every batch holds P groups of
    K = batch_size / P pairs of one identity, the P identities all different, which the
    in-batch losses of §3.4 need to see positives (``_identity_groups``: an epoch's pairs
    are dealt out K at a time per identity; what cannot fill a group is dropped for that
    epoch).
    """
    seed = config.train.seed if seed is None else seed
    files = split_files(data_dir, split)
    ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed)
    ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f), cycle_length=min(4, len(files)),
                       num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.map(records.parse_example, num_parallel_calls=AUTOTUNE, deterministic=True)
    if label_by_image:
        table = image_index_table(data_dir, split)
        ds = ds.map(lambda e: {**e, "label": table.lookup(e["path"])})
    ds = ds.flat_map(lambda e: _pairs(e, config.data.max_phrases))
    batch = config.data.batch_size
    p = config.data.identities_per_batch
    if p:
        if batch % p:
            raise ValueError(f"batch_size {batch} is not a multiple of identities_per_batch {p}")
        kind = "images" if label_by_image else "identities"
        labels = load_manifest(data_dir)["splits"][split][kind]
        if labels < p:
            raise ValueError(f"identities_per_batch {p} but {split} has {labels} {kind}")
        # Grouped per epoch, before decoding (a group in waiting holds encoded bytes only).
        ds = ds.shuffle(config.data.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = _identity_groups(ds, p, batch // p, labels).unbatch().unbatch()
        if repeat:
            ds = ds.repeat()
    else:
        if repeat:
            ds = ds.repeat()
        ds = ds.shuffle(config.data.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    # A stateless seed per element keeps flips reproducible under parallel decoding.
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed).batch(2)))

    def load(pair, flip_seed):
        image, flipped = training_image(pair["encoded"], config, flip_seed)
        out = {"image": image, "label": pair["label"], "caption": pair["caption"],
               "phrase_spans": pair["phrase_spans"]}
        return out if flipped is None else {**out, FLIPPED: flipped}

    ds = ds.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    # P×K: _identity_groups gave whole groups of P·K pairs, so this batch cuts along them.
    ds = ds.batch(batch, drop_remainder=True)
    ds = ds.map(lambda b: _tokenize(b, tokenizer, keep_text=keep_caption),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.with_options(options(distributed=True)).prefetch(AUTOTUNE)


def options(distributed: bool = False) -> tf.data.Options:
    """Every pipeline's tf.data options: deterministic order, no autotuning and, for a
    ``distributed`` training set, sharded by data across workers.

    Without autotuning the parallel stages use every core (``AUTOTUNE``'s fallback): the
    demo's training pipeline delivers 300 batches in 5.8 s against 7.1 s autotuned on 2
    cores. Autotuned, deleting an iterator waits for the tuning thread: 31–35 s at the end
    of a 300-step demo run, and again at every IATV phase switch.
    """
    opts = tf.data.Options()
    opts.deterministic = True
    opts.autotune.enabled = False
    if distributed:
        opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return opts


def _identity_groups(ds: tf.data.Dataset, p: int, k: int, labels: int) -> tf.data.Dataset:
    """One epoch of pairs → [P, K] groups: K pairs of one identity per row, P different
    identities. An identity's pairs form windows of K in arrival order; its n-th window
    (its "round") joins the n-th windows of other identities only, so no group can hold
    one identity twice. Windows short of K, and rounds short of P windows at the end of
    the epoch, are dropped; a waiting round holds fewer than P windows."""
    windows = ds.group_by_window(
        key_func=lambda x: tf.cast(x["label"], tf.int64),
        reduce_func=lambda _, window: window.batch(k, drop_remainder=True),
        window_size=k)

    def count(seen, window):
        label = tf.cast(window["label"][0], tf.int64)
        return (tf.tensor_scatter_nd_add(seen, [[label]], tf.ones([1], tf.int64)),
                (seen[label], window))

    rounds = windows.scan(tf.zeros([labels], tf.int64), count)
    groups = rounds.group_by_window(
        key_func=lambda n, _: n,
        reduce_func=lambda _, group: group.batch(p, drop_remainder=True),
        window_size=p)
    return groups.map(lambda _, window: window)


# A training batch's [B] bool: which rows' images were flipped (``training_image``).
FLIPPED = "flipped"


def _tokenize(batch: dict, tokenizer: CaptionTokenizer, keep_text: bool = False) -> dict:
    """Replaces ``caption`` + ``phrase_spans`` by the tokenizer's outputs, the captions of
    ``FLIPPED`` rows with their left and right swapped first (the kept ``caption`` too)."""
    out = dict(batch)
    spans = out.pop("phrase_spans")
    if FLIPPED in out:
        out["caption"], spans = mirror.mirror_where(out.pop(FLIPPED), out["caption"], spans)
    caption = out["caption"] if keep_text else out.pop("caption")
    out.update(tokenizer(caption, spans))
    return out


# Evaluation streams are built once and iterated again: building one traces its map
# functions (the tokenizer: 3-4 s at the demo's size) and every validation pass of a run
# reads the same split. The 8 most recently used are kept.
_BUILT = collections.OrderedDict()


def _built_once(key: tuple, data_dir: str, split: str, build) -> tf.data.Dataset:
    """``build()``, or the stream built before for ``key`` and the split's shards as they
    are on disk (path, size, mtime: a re-import is a new stream)."""
    stats = [(f, os.stat(f)) for f in split_files(data_dir, split)]
    shards = tuple((f, st.st_size, st.st_mtime_ns) for f, st in stats)
    return _most_recent(_BUILT, (*key, shards), build, keep=8)


def _most_recent(cache: collections.OrderedDict, key: tuple, build, keep: int):
    """``cache[key]``, made by ``build()`` if absent; the ``keep`` most recently used stay."""
    if key not in cache:
        cache[key] = build()
        while len(cache) > keep:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return cache[key]


def gallery_dataset(data_dir: str, config: Config, split: str,
                    batch_size: Optional[int] = None) -> tf.data.Dataset:
    """Every image of ``split`` once: ``image`` [B,H,W,3], ``label`` [B], ``path`` [B]."""
    def load(example):
        return {"image": preprocess_image(decode_image(example["encoded"]), config),
                "label": example["label"], "path": example["path"]}

    return _built_once(("gallery", config.to_json(), batch_size), data_dir, split, lambda: (
        _read(split_files(data_dir, split))
        .map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
        .batch(batch_size or config.data.batch_size)
        .with_options(options())
        .prefetch(AUTOTUNE)))


def query_dataset(data_dir: str, config: Config, tokenizer: CaptionTokenizer, split: str,
                  batch_size: Optional[int] = None) -> tf.data.Dataset:
    """Every caption of ``split`` once: BERT inputs, ``phrase_token_mask``, ``label``,
    ``caption`` text and ``image_index`` (its image's position in ``gallery_dataset``)."""
    def captions(index, example):
        n = tf.shape(example["captions"])[0]
        return tf.data.Dataset.from_tensor_slices({
            "caption": example["captions"],
            "phrase_spans": _dense_spans(example["phrase_spans"], config.data.max_phrases),
            "label": tf.fill([n], example["label"]),
            "image_index": tf.fill([n], index),
        })

    return _built_once(("query", config.to_json(), tokenizer.signature, batch_size), data_dir, split, lambda: (
        _read(split_files(data_dir, split)).enumerate()
        .flat_map(captions)
        .batch(batch_size or config.data.batch_size)
        .map(lambda b: _tokenize(b, tokenizer, keep_text=True),
             num_parallel_calls=AUTOTUNE, deterministic=True)
        .with_options(options())
        .prefetch(AUTOTUNE)))


TEXT_VOCABS = ("bert", "words")


# A tokenizer reads its vocabulary and builds its lookup table (0.3 s for BERT's 30,522
# WordPieces); an evaluation asked for the same one five times. Tokenizers are stateless
# after construction, so callers of one process share them, per vocabulary file as it is
# on disk (path, size, mtime) and settings; the 4 most recently used are kept.
_TOKENIZERS = collections.OrderedDict()


def make_tokenizer(config: Config) -> CaptionTokenizer:
    if config.data.text_vocab not in TEXT_VOCABS:
        raise ValueError(f"unknown text_vocab {config.data.text_vocab!r}; choose from "
                         f"{TEXT_VOCABS}")
    if config.data.text_vocab == "words" and not config.data.vocab_file:
        raise ValueError("text_vocab=words reads the data's word vocabulary: set vocab_file "
                         "(hgan-train sets it from the data dir's word_vocab.txt)")
    args = (vocab_path(config.model.bert, config.data.vocab_file), config.data.max_len,
            config.data.max_phrases, config.data.lower_case)
    if not tf.executing_eagerly():  # a graph's tokenizer belongs to that graph
        return CaptionTokenizer(*args)
    stat = tf.io.gfile.stat(args[0])
    return _most_recent(_TOKENIZERS, (*args, stat.length, stat.mtime_nsec),
                        lambda: CaptionTokenizer(*args), keep=4)

