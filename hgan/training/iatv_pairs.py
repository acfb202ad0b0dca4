"""IATV's stage-2 training pairs (§4.2): "for each visual or textual sample, we take its 20
most similar samples from the other modality by stage-1 network and construct
textual-visual pair samples for stage-2 training", labelled 1 for the same identity; or, for
Table 2's "w/o stage-1", random pairs. ``pair_dataset`` streams them as batches."""
from __future__ import annotations

import numpy as np

from hgan.config import Config
from hgan.data import mirror, pipeline, records
from hgan.evaluation import rerank
from hgan.evaluation.metrics import unit_rows
from hgan.tf_compat import tf


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
    text, image = unit_rows(text_feats), unit_rows(image_feats)
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


def _positive_pairs(text_labels, image_labels) -> np.ndarray:
    """[P, 2] (text, image) of every same-identity pair, without an Nt × Ni matrix."""
    order = np.argsort(image_labels, kind="stable")
    sorted_labels = image_labels[order]
    start = np.searchsorted(sorted_labels, text_labels, "left")
    stop = np.searchsorted(sorted_labels, text_labels, "right")
    counts = stop - start
    texts = np.repeat(np.arange(len(text_labels)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    images = order[np.repeat(start, counts) + offsets]
    return np.stack([texts, images], 1).astype(np.int64).reshape(-1, 2)


def random_pairs(text_labels, image_labels, k: int = 20, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``mine_pairs``'s output without stage 1 (Table 2 "w/o stage-1"): every positive pair
    (each text with every image of its identity) plus every text with k random images and
    every image with k random texts (without replacement), each pair once, sorted by
    (text, image); label 1 = same identity. Random pairs alone would be almost all
    negatives (1 in the number of identities is a match)."""
    text_labels, image_labels = np.asarray(text_labels), np.asarray(image_labels)
    rng = np.random.default_rng(seed)
    nt, ni = len(text_labels), len(image_labels)
    k_images, k_texts = min(k, ni), min(k, nt)
    images = np.stack([rng.choice(ni, k_images, replace=False) for _ in range(nt)])
    texts = np.stack([rng.choice(nt, k_texts, replace=False) for _ in range(ni)])
    t2i = np.stack([np.repeat(np.arange(nt), k_images), images.ravel()], 1)
    i2t = np.stack([texts.ravel(), np.repeat(np.arange(ni), k_texts)], 1)
    positives = _positive_pairs(text_labels, image_labels)
    pairs = np.unique(np.concatenate([t2i, i2t, positives]), axis=0)
    text_index, image_index = pairs[:, 0], pairs[:, 1]
    return text_index, image_index, (text_labels[text_index] ==
                                     image_labels[image_index]).astype(np.int32)


def sample_pairs(text_index, image_index, match, text_labels, image_labels,
                 positive_share: float = 0.0, random_negative_share: float = 0.0,
                 seed: int = 0):
    """Endless stage-2 training pairs (text, image, label) drawn from the mined ones.

    With both shares 0 (the paper): the mined pairs in a new random order each epoch.
    ``positive_share`` > 0: each pair is a mined positive with this probability (drawn with
    replacement), else a mined negative (the mined pairs are 12–16 % positive on the demo).
    ``random_negative_share`` > 0: a negative is, with this probability, a random pair of
    two different identities instead of a mined (stage-1 hard) one. Both are demo-only
    departures (docs/design.md, "IATV stage 2 on the demo"): from scratch on hard negatives
    alone the matcher stays at chance for the demo's step budget.
    Deterministic for a seed. ``text_labels`` / ``image_labels``: identities of all
    training captions / images (the random negatives' pool).
    """
    text_index, image_index = np.asarray(text_index), np.asarray(image_index)
    match = np.asarray(match, np.int32)
    text_labels, image_labels = np.asarray(text_labels), np.asarray(image_labels)
    for name, value in (("positive_share", positive_share),
                        ("random_negative_share", random_negative_share)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    rng = np.random.default_rng(seed)
    if positive_share <= 0 and random_negative_share <= 0:
        while True:
            for j in rng.permutation(len(match)):
                yield int(text_index[j]), int(image_index[j]), int(match[j])
    positives, negatives = np.flatnonzero(match == 1), np.flatnonzero(match == 0)
    if positive_share > 0 and not len(positives):
        raise ValueError("positive_share > 0 but no mined pair is positive")
    while True:
        if positive_share > 0:
            j = (rng.choice(positives) if rng.random() < positive_share or not len(negatives)
                 else rng.choice(negatives))
        else:
            j = rng.integers(len(match))
        if match[j] == 0 and rng.random() < random_negative_share:
            while True:  # two different identities (a few tries at most on a real split)
                t, i = rng.integers(len(text_labels)), rng.integers(len(image_labels))
                if text_labels[t] != image_labels[i]:
                    yield int(t), int(i), 0
                    break
        else:
            yield int(text_index[j]), int(image_index[j]), int(match[j])


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
                 tokenizer, seed: int, text_labels=None, image_labels=None) -> tf.data.Dataset:
    """Batches of stage-2 pairs (``sample_pairs`` with ``model.positive_share`` and
    ``model.random_negative_share``; shuffled and repeated): ``image`` [B, H, W, 3]
    (flipped as in stage 1, the caption's left and right swapped with it), the tokenizer's
    outputs [B, L] and ``match`` [B] (1 = same identity). ``text_labels`` /
    ``image_labels``: identities of all ``captions`` / ``encoded`` images (needed for random
    negatives). Deterministic for a seed."""
    share = config.model.random_negative_share
    if share > 0 and (text_labels is None or image_labels is None):
        raise ValueError("model.random_negative_share > 0 needs text_labels and image_labels")
    text_labels = np.zeros(len(captions)) if text_labels is None else text_labels
    image_labels = np.zeros(len(encoded)) if image_labels is None else image_labels

    def pairs():
        for t, i, y in sample_pairs(text_index, image_index, match, text_labels,
                                    image_labels, config.model.positive_share, share, seed):
            yield encoded[i], captions[t], np.int32(y)

    ds = tf.data.Dataset.from_generator(pairs, output_signature=(
        tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.string),
        tf.TensorSpec([], tf.int32)))
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed).batch(2)))

    def load(pair, flip_seed):
        image_bytes, caption, label = pair
        image, flipped = pipeline.training_image(image_bytes, config, flip_seed)
        out = {"image": image, "caption": caption, "match": label}
        return out if flipped is None else {**out, pipeline.FLIPPED: flipped}

    def tokenize(batch):
        out = {k: v for k, v in batch.items() if k not in ("caption", pipeline.FLIPPED)}
        caption = batch["caption"]
        if pipeline.FLIPPED in batch:  # the flipped images' captions, left and right swapped
            caption = mirror.mirror_where(batch[pipeline.FLIPPED], caption)[0]
        out.update(tokenizer(caption))
        return out

    ds = (ds.map(load, num_parallel_calls=pipeline.AUTOTUNE, deterministic=True)
          .batch(config.data.batch_size, drop_remainder=True)
          .map(tokenize, num_parallel_calls=pipeline.AUTOTUNE, deterministic=True))
    return ds.with_options(pipeline.options(distributed=True)).prefetch(pipeline.AUTOTUNE)
