"""Retrieval metrics of both papers, on a score matrix [queries, gallery] (higher = closer)."""
from __future__ import annotations

import numpy as np


def unit_rows(x, dtype=np.float32) -> np.ndarray:
    """Each row of ``x`` [..., D] l2-normalised (a zero row stays zero): the cosine side
    of every global retrieval here (stage-1 screening, IATV's pair mining, FAISS)."""
    x = np.asarray(x, dtype)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _checked(similarity, query_ids, gallery_ids) -> tuple:
    """The three as arrays, the scores [queries, gallery items] as the ids say."""
    similarity = np.asarray(similarity)
    query_ids, gallery_ids = np.asarray(query_ids), np.asarray(gallery_ids)
    if similarity.shape != (len(query_ids), len(gallery_ids)):
        raise ValueError(f"similarity {similarity.shape} does not match "
                         f"{len(query_ids)} queries × {len(gallery_ids)} gallery items")
    return similarity, query_ids, gallery_ids


def _ranked_relevance(similarity, query_ids, gallery_ids):
    """[Q, G] bool: whether each query's ranked gallery item is relevant."""
    similarity, query_ids, gallery_ids = _checked(similarity, query_ids, gallery_ids)
    # Stable sort on the negated scores: ties keep gallery order, so results are repeatable.
    order = np.argsort(-similarity, axis=1, kind="stable")
    return gallery_ids[order] == query_ids[:, None]


# Queries with at most this many relevant gallery items have their positions counted
# (a few passes over the row each) rather than searched for in a sort of the whole row.
COUNT_UP_TO = 32
# Rows searched (``_searched_positions``) with more tied relevant items than this are
# ranked by their stable argsort instead.
TIED_UP_TO = 8


def _true_columns(mask: np.ndarray, fill: int) -> np.ndarray:
    """[B, P] the columns where each row of ``mask`` [B, G] is True, ascending, P the most
    of a row, the rest ``fill``."""
    counts = mask.sum(axis=1)
    r, c = np.nonzero(mask)  # row by row, columns ascending
    out = np.full((len(mask), int(counts.max(initial=0))), fill, np.int64)
    out[r, np.arange(len(r)) - np.repeat(np.cumsum(counts) - counts, counts)] = c
    return out


def _counted_positions(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """[B, P] int: the 0-based positions of each row's relevant items in the ranking
    ``_ranked_relevance`` reads (descending scores, ties in column order, NaN last),
    ascending; P the most relevant items of a row, padded with the row length. Counted:
    ahead of a relevant item are the higher scores and the equal ones to its left (a NaN
    item: every number, and the NaNs to its left)."""
    length = relevant.shape[1]
    counts = relevant.sum(axis=1)
    picked = _true_columns(relevant, 0)
    columns = np.arange(length)
    out = np.full(picked.shape, length, np.int64)
    for k in range(picked.shape[1]):
        has = counts > k
        column = picked[:, k:k + 1]
        value = np.take_along_axis(scores, column, axis=1)
        ahead = (scores > value).sum(axis=1) + \
            ((scores == value) & (columns < column)).sum(axis=1)
        nan = np.isnan(value[:, 0])
        if nan.any():
            missing = np.isnan(scores[nan])
            ahead[nan] = (~missing).sum(axis=1) + (missing & (columns < column[nan])).sum(
                axis=1)
        out[has, k] = ahead[has]
    return np.sort(out, axis=1)


def _searched_positions(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """``_counted_positions`` for rows with many relevant items (class-level data: tens to
    hundreds a query): each row's values sorted once (NaN last), and each relevant item's
    higher scores read off by a binary search of its value; the equal ones to its left are
    counted in the row where its value occurs more than once, and a NaN item's ahead are
    every number and the NaNs to its left. A value sort is several times faster than the
    stable argsort of the row; a row with more than ``TIED_UP_TO`` tied relevant items (a
    model that gives many equal scores) takes that argsort instead, one pass per tie being
    dearer."""
    length = relevant.shape[1]
    counts = relevant.sum(axis=1)
    picked = _true_columns(relevant, 0)
    out = np.full(picked.shape, length, np.int64)
    ordered = np.sort(scores, axis=1)
    numbers = length - np.isnan(scores).sum(axis=1)
    for b in range(len(scores)):
        columns = picked[b, :counts[b]]
        values, row = scores[b, columns], ordered[b, :numbers[b]]
        above = np.searchsorted(row, values, side="right")  # a NaN value: past every number
        tied = np.flatnonzero(above - np.searchsorted(row, values, side="left") > 1)
        if len(tied) > TIED_UP_TO:
            order = np.argsort(-scores[b], kind="stable")
            out[b, :counts[b]] = np.flatnonzero(relevant[b, order])
            continue
        ahead = numbers[b] - above
        for i in tied:
            ahead[i] += np.count_nonzero(scores[b, :columns[i]] == values[i])
        nan = np.isnan(values)
        if nan.any():
            ahead[nan] = numbers[b] + np.searchsorted(np.flatnonzero(np.isnan(scores[b])),
                                                      columns[nan])
        out[b, :counts[b]] = ahead
    return np.sort(out, axis=1)


def retrieval_metrics(similarity, query_ids, gallery_ids, rows: int = 1024) -> dict:
    """Rank-1/5/10, mAP and mINP in percent, ranking the whole gallery per query.

    AP is the mean of the precision at each relevant position; mINP (Ye et al. 2021) is the
    number of relevant items over the position of the last one. Queries with no relevant
    item in the gallery are left out (and counted in ``queries_without_match``). Computed
    ``rows`` queries at a time (each query's figures are its own), so no ranking exists
    for the whole matrix at once. The relevant items' positions are counted where a
    block's queries have at most ``COUNT_UP_TO`` each (``_counted_positions``), else found
    by binary searches of each row's sorted values (``_searched_positions``): the positions
    a stable sort of each row gives, the same figures to the last bit.
    """
    similarity, query_ids, gallery_ids = _checked(similarity, query_ids, gallery_ids)
    firsts, aps, inps, without = [], [], [], 0
    for a in range(0, len(query_ids), rows):
        scores = similarity[a:a + rows]
        relevant = gallery_ids[None] == query_ids[a:a + rows, None]
        has_match = relevant.any(axis=1)
        without += int((~has_match).sum())
        scores, relevant = scores[has_match], relevant[has_match]
        if not len(relevant):
            continue
        count = relevant.sum(axis=1)
        positions = (_counted_positions if count.max() <= COUNT_UP_TO else
                     _searched_positions)(scores, relevant)  # [B, P], 0-based, ascending
        firsts.append(positions[:, 0])
        # Each relevant item's precision where the sorted row holds it, the rest 0, summed
        # along the row (the array a cumulative count over the sorted row gives).
        precision_at_hits = np.zeros(relevant.shape)
        row, slot = np.nonzero(positions < relevant.shape[1])
        precision_at_hits[row, positions[row, slot]] = (slot + 1) / (positions[row, slot] + 1)
        aps.append(precision_at_hits.sum(axis=1) / count)
        inps.append(count / (positions[np.arange(len(positions)), count - 1] + 1))
    if not firsts:
        raise ValueError("no query has a relevant gallery item")
    first, ap, inp = (np.concatenate(x) for x in (firsts, aps, inps))
    out = {f"R{k}": 100.0 * float(np.mean(first < k)) for k in (1, 5, 10)}
    out["mAP"] = 100.0 * float(ap.mean())
    out["mINP"] = 100.0 * float(inp.mean())
    out["queries_without_match"] = without
    return out


def first_match_rank(similarity, query_ids, gallery_ids, rows: int = 1024) -> np.ndarray:
    """[Q] int: the 1-based position of each query's first relevant gallery item in its
    ranking (the ranking ``retrieval_metrics`` reads: ties keep gallery order), 0 for a
    query with none. R1 is the share of 1s among the non-zero entries. Counts instead of
    sorting, ``rows`` queries at a time."""
    similarity, query_ids, gallery_ids = _checked(similarity, query_ids, gallery_ids)
    out = np.zeros(len(query_ids), np.int64)
    columns = np.arange(len(gallery_ids))
    for a in range(0, len(query_ids), rows):
        scores = similarity[a:a + rows]
        relevant = gallery_ids[None] == query_ids[a:a + rows, None]
        best = np.where(relevant, scores, -np.inf).max(axis=1, initial=-np.inf)[:, None]
        # Ahead of the first relevant item: every higher score, and equal ones to its left.
        first = np.argmax(relevant & (scores == best), axis=1)[:, None]
        ahead = (scores > best).sum(axis=1) + ((scores == best) & (columns < first)).sum(axis=1)
        out[a:a + rows] = np.where(relevant.any(axis=1), ahead + 1, 0)
    return out


def ap_at_k(similarity, query_classes, gallery_classes, k: int = 50) -> float:
    """Text-to-image AP@k of Reed et al. 2016 (CUB / Flowers), in percent.

    For each text query, the fraction of its top-k images of the query's class; averaged
    over the queries of each class, then over the classes.
    """
    relevant = _ranked_relevance(similarity, query_classes, gallery_classes)[:, :k]
    per_query = relevant.mean(axis=1)
    query_classes = np.asarray(query_classes)
    return 100.0 * float(np.mean([per_query[query_classes == c].mean()
                                  for c in np.unique(query_classes)]))


def class_queries(text_image_scores, text_classes) -> tuple[np.ndarray, np.ndarray]:
    """(classes [C], scores [C, Ni]): one text query per class ("given a query textual
    class", IATV §4.1; Reed et al. 2016) that scores each image by the mean of its
    sentences' scores (for cosine scores, the same ranking as the mean of the l2-normalised
    sentence embeddings). Needs scores on one scale across a row (stage 1, exact mode)."""
    scores = np.asarray(text_image_scores, np.float64)
    text_classes = np.asarray(text_classes)
    classes = np.unique(text_classes)
    return classes, np.stack([scores[text_classes == c].mean(axis=0) for c in classes])


def class_query_ap_at_k(class_scores, classes, image_classes, k: int = 50) -> float:
    """AP@k of class queries (``class_queries``, or a two-stage ranking of them) [C, Ni],
    in percent: each class's fraction of its top-k images of that class, the mean over
    classes (IATV §4.1: "the average matching percentage of all 50 test classes")."""
    relevant = _ranked_relevance(class_scores, classes, np.asarray(image_classes))[:, :k]
    return 100.0 * float(relevant.mean(axis=1).mean())


def class_ap_at_k(text_image_scores, text_classes, image_classes, k: int = 50) -> float:
    """Text-to-image AP@k with one query per class (``class_queries``), in percent: the
    papers' AP@50 on CUB / Flowers (IATV §4.1, HGAN §4), where ``ap_at_k`` is one query per
    sentence."""
    classes, fused = class_queries(text_image_scores, text_classes)
    return class_query_ap_at_k(fused, classes, image_classes, k)


# AP@50 reads each query's top 50: a two-stage ranking re-scores at least that many, or its
# AP@50 is stage 1's by construction (IATV Tables 3-4 report a gain).
AP_DEPTH = 50


def rerank_depth(k: int, class_level: bool) -> int:
    """Candidates a two-stage evaluation re-scores: ``k``, raised to ``AP_DEPTH`` where
    AP@50 is reported (CUB / Flowers)."""
    return max(int(k), AP_DEPTH) if class_level else int(k)


def class_rank1(text_image_scores, text_classes, image_classes) -> float:
    """Image-to-text Rank-1 over classes (Reed et al. 2016; IATV §4.5), in percent.

    The sentences of a class are fused into one: an image's score for class c is the mean of
    its scores with c's sentences; the image is right when its best class is its own.
    """
    scores = np.asarray(text_image_scores)
    text_classes, image_classes = np.asarray(text_classes), np.asarray(image_classes)
    classes = np.unique(text_classes)
    class_scores = np.stack([scores[text_classes == c].mean(axis=0) for c in classes], axis=1)
    predicted = classes[class_scores.argmax(axis=1)]
    return 100.0 * float(np.mean(predicted == image_classes))


# Datasets whose text-to-image queries are class descriptions (IATV Tables 3-4): AP@50 and
# image-to-text class Rank-1 are reported for them.
CLASS_LEVEL_DATASETS = ("cub", "flowers")


def both_directions(t2i, i2t, text_labels, image_labels, ap50: bool = False,
                    class_r1: bool = False) -> dict:
    """{"t2i", "i2t"} retrieval metrics of a [Nt, Ni] and a [Ni, Nt] score matrix; with
    ``ap50`` text-to-image ``AP@50`` (one query per sentence, averaged per class); with
    ``class_r1`` (scores on one scale: stage 1 / exact) also ``class_AP@50`` (one query per
    class: the papers' AP@50) and image-to-text class Rank-1 (both average raw scores over
    a class's sentences)."""
    out = {"t2i": retrieval_metrics(t2i, text_labels, image_labels),
           "i2t": retrieval_metrics(i2t, image_labels, text_labels)}
    if ap50:
        out["t2i"]["AP@50"] = ap_at_k(t2i, text_labels, image_labels, AP_DEPTH)
    if class_r1:
        out["t2i"]["class_AP@50"] = class_ap_at_k(t2i, text_labels, image_labels, AP_DEPTH)
        out["i2t"]["class_R1"] = class_rank1(np.asarray(i2t).T, text_labels, image_labels)
    return out
