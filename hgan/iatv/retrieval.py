"""IATV's two stages at work: stage-1 candidate mining (§4.2) and two-stage re-ranking.

* ``mine_pairs``: "for each visual or textual sample, we take its 20 most similar samples
  from the other modality by stage-1 network and construct textual-visual pair samples for
  stage-2 training and testing", labelled 1 for the same identity (§3.2.2, §4.2).
* ``rerank``: stage 1 ranks the whole gallery, stage 2 re-scores each query's top k and
  re-orders them; every other item keeps its stage-1 order behind them (§4.4: "stage-1
  network chooses only 20 most closest images of each query text for stage 2").
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from hgan.tf_compat import tf


def _normalise(x):
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _top_k_rows(queries, keys, k: int, chunk: int) -> np.ndarray:
    """[len(queries), k] indices of each query's k largest cosines, best first; ties go
    to the lower index (``tf.math.top_k``'s rule, the same as a stable sort)."""
    out = np.zeros((len(queries), k), np.int64)
    for a in range(0, len(queries), chunk):
        scores = queries[a:a + chunk] @ keys.T
        out[a:a + chunk] = tf.math.top_k(scores, k=k).indices.numpy()
    return out


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
    nearest_images = _top_k_rows(text, image, k_images, chunk)  # [Nt, k]
    nearest_texts = _top_k_rows(image, text, k_texts, chunk)  # [Ni, k]
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


def rerank(stage1_scores, stage2_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
           k: int = 20, batch_size: int = 512) -> np.ndarray:
    """Two-stage retrieval: stage 2 re-orders each query's stage-1 top k.

    Args:
      stage1_scores: [Q, G] stage-1 similarities (higher = closer).
      stage2_fn: ``(query_indices [P], gallery_indices [P]) -> [P]`` stage-2 scores of
        those pairs (higher = more likely a match; pass logits rather than sigmoid
        confidences, which saturate to ties). Called with at most ``batch_size`` pairs.
      k: candidates per query re-scored by stage 2 (§4.2: 20), capped at G.

    Returns: [Q, G] float64 whose row-wise descending order is the final ranking: the top
    k carry their stage-2 scores (ties kept in stage-1 order), every other item its
    stage-1 score shifted below them (stage-1 order kept). For image-to-text, pass the
    transposed stage-1 matrix and a ``stage2_fn`` taking (image, text) indices.
    """
    stage1 = np.asarray(stage1_scores, np.float64)
    q, g = stage1.shape
    k = min(k, g)
    top = np.argsort(-stage1, axis=1, kind="stable")[:, :k]  # [Q, k], stage-1 order
    queries = np.repeat(np.arange(q), k)
    candidates = top.ravel()
    scores = np.empty(q * k, np.float64)
    for a in range(0, q * k, batch_size):
        part = np.asarray(stage2_fn(queries[a:a + batch_size], candidates[a:a + batch_size]))
        if part.shape != (len(queries[a:a + batch_size]),):
            raise ValueError(f"stage2_fn returned shape {part.shape} for "
                             f"{len(queries[a:a + batch_size])} pairs")
        scores[a:a + batch_size] = part
    top_scores = _break_ties_by_position(scores.reshape(q, k))
    # Outside the top k: stage-1 scores shifted (float64, so no new ties) below the lowest
    # re-ranked score of the row.
    shift = stage1.max(axis=1) - top_scores.min(axis=1) + 1.0
    final = stage1 - shift[:, None]
    np.put_along_axis(final, top, top_scores, axis=1)
    return final


def _break_ties_by_position(scores: np.ndarray) -> np.ndarray:
    """Subtracts position·ε (ε below a row's smallest gap between distinct scores), so
    equal scores keep their column (stage-1) order and distinct ones their order."""
    out = scores.copy()
    for row in out:
        distinct = np.unique(row)
        gap = np.diff(distinct).min() if len(distinct) > 1 else 1.0
        row -= np.arange(len(row)) * (gap / (2.0 * len(row)))
    return out


def pair_scorer(matcher, word_ids, input_mask, regions, direction: str = "t2i"):
    """A ``stage2_fn`` for ``rerank`` from a stage-2 matcher and precomputed inputs.

    Args:
      matcher: a ``CoAttentionMatcher``.
      word_ids, input_mask: [Nt, T] tokens of the texts; regions: [Ni, N, C] the CNN's
        region features of the images.
      direction: "t2i" (queries are texts) or "i2t" (queries are images).
    Returns: fn(query_indices, gallery_indices) -> [P] float64 logits.
    """
    if direction not in ("t2i", "i2t"):
        raise ValueError(f"direction must be t2i or i2t, got {direction!r}")
    word_ids, input_mask = np.asarray(word_ids), np.asarray(input_mask)
    regions = np.asarray(regions, np.float32)
    score = tf.function(lambda inputs: matcher(inputs, training=False)["logits"],
                        reduce_retracing=True)

    def fn(query_indices, gallery_indices):
        texts, images = ((query_indices, gallery_indices) if direction == "t2i"
                         else (gallery_indices, query_indices))
        inputs = {"regions": regions[images], "input_word_ids": word_ids[texts],
                  "input_mask": input_mask[texts]}
        return score(inputs).numpy().astype(np.float64)

    return fn
