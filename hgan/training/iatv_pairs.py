"""IATV's stage-2 training pairs (§4.2): "for each visual or textual sample, we take its 20
most similar samples from the other modality by stage-1 network and construct
textual-visual pair samples for stage-2 training", labelled 1 for the same identity; or, for
Table 2's "w/o stage-1", random pairs. ``pair_dataset`` streams them as batches."""
from __future__ import annotations

import numpy as np

from hgan.config import Config
from hgan.data import pipeline, records
from hgan.evaluation import rerank
from hgan.tf_compat import tf


def _normalise(x):
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _nearest(queries, keys, k: int, chunk: int) -> np.ndarray:
    """[len(queries), k] indices of each query's k largest cosines, best first."""
    return np.concatenate([rerank.top_k_ordered(queries[a:a + chunk] @ keys.T, k)
                           for a in range(0, len(queries), chunk)])


def mine_pairs(text_feats, image_feats, text_labels, image_labels, k: int = 20,
               chunk: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage-2 pair samples from stage-1 nearest neighbours, both directions (§4.2).

    Args:
      text_feats [Nt, D], image_feats [Ni, D]: stage-1 features (cosine similarity).
      text_labels [Nt], image_labels [Ni]: identities.
      k: neighbours per sample (§4.2: 20), capped at the other modality's size.
      chunk: query rows per similarity block (memory is chunk × N floats).

    Returns: (text_index [P], image_index [P], label [P] int32, 1 = same identity), the
    union of every text's k nearest images and every image's k nearest texts, each pair
    once, sorted by (text, image).
    """
    text, image = _normalise(text_feats), _normalise(image_feats)
    text_labels, image_labels = np.asarray(text_labels), np.asarray(image_labels)
    if len(text) != len(text_labels) or len(image) != len(image_labels):
        raise ValueError("features and labels differ in length")
    k_images, k_texts = min(k, len(image)), min(k, len(text))
    nearest_images = _nearest(text, image, k_images, chunk)  # [Nt, k]
    nearest_texts = _nearest(image, text, k_texts, chunk)  # [Ni, k]
    t2i = np.stack([np.repeat(np.arange(len(text)), k_images), nearest_images.ravel()], 1)
    i2t = np.stack([nearest_texts.ravel(), np.repeat(np.arange(len(image)), k_texts)], 1)
    pairs = np.unique(np.concatenate([t2i, i2t]), axis=0)  # sorted by (text, image)
    text_index, image_index = pairs[:, 0], pairs[:, 1]
    labels = (text_labels[text_index] == image_labels[image_index]).astype(np.int32)
    return text_index, image_index, labels


def random_pairs(text_labels, image_labels, k: int = 20, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``mine_pairs``'s output without stage 1 (Table 2 "w/o stage-1"): every text with k
    random images and every image with k random texts (without replacement), each pair
    once, sorted by (text, image); label 1 = same identity."""
    text_labels, image_labels = np.asarray(text_labels), np.asarray(image_labels)
    rng = np.random.default_rng(seed)
    nt, ni = len(text_labels), len(image_labels)
    k_images, k_texts = min(k, ni), min(k, nt)
    images = np.stack([rng.choice(ni, k_images, replace=False) for _ in range(nt)])
    texts = np.stack([rng.choice(nt, k_texts, replace=False) for _ in range(ni)])
    t2i = np.stack([np.repeat(np.arange(nt), k_images), images.ravel()], 1)
    i2t = np.stack([texts.ravel(), np.repeat(np.arange(ni), k_texts)], 1)
    pairs = np.unique(np.concatenate([t2i, i2t]), axis=0)
    text_index, image_index = pairs[:, 0], pairs[:, 1]
    return text_index, image_index, (text_labels[text_index] ==
                                     image_labels[image_index]).astype(np.int32)


def split_records(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(image bytes [Ni], captions [Nt]) of a split, in the gallery / query order of
    ``hgan.data.pipeline`` (records in shard order, each record's captions in turn). Held in memory
    for random access by the stage-2 pairs: the encoded files, not decoded pixels."""
    encoded, captions = [], []
    ds = tf.data.TFRecordDataset(pipeline.split_files(data_dir, split)).map(records.parse_example)
    for example in ds:
        encoded.append(example["encoded"].numpy())
        captions.extend(example["captions"].numpy().tolist())
    return np.array(encoded, dtype=object), np.array(captions, dtype=object)


def pair_dataset(encoded, captions, text_index, image_index, match, config: Config,
                 tokenizer, seed: int) -> tf.data.Dataset:
    """Batches of mined stage-2 pairs, shuffled and repeated: ``image`` [B, H, W, 3]
    (augmented as in stage 1), the tokenizer's outputs [B, L] and ``match`` [B] (1 = same
    identity). Deterministic for a seed."""
    text_index, image_index = np.asarray(text_index), np.asarray(image_index)
    match = np.asarray(match, np.int32)

    def pairs():
        rng = np.random.default_rng(seed)
        while True:
            for j in rng.permutation(len(match)):
                yield encoded[image_index[j]], captions[text_index[j]], match[j]

    ds = tf.data.Dataset.from_generator(pairs, output_signature=(
        tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string),
        tf.TensorSpec([], tf.int32)))
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed).batch(2)))

    def load(pair, flip_seed):
        image_bytes, caption, label = pair
        image = pipeline.preprocess_image(pipeline.decode_image(image_bytes), config, training=True,
                                      seed=flip_seed)
        return {"image": image, "caption": caption, "match": label}

    def tokenize(batch):
        out = {k: v for k, v in batch.items() if k != "caption"}
        out.update(tokenizer(batch["caption"]))
        return out

    ds = (ds.map(load, num_parallel_calls=pipeline.AUTOTUNE, deterministic=True)
          .batch(config.data.batch_size, drop_remainder=True)
          .map(tokenize, num_parallel_calls=pipeline.AUTOTUNE, deterministic=True))
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(pipeline.AUTOTUNE)
