"""IATV evaluation: stage-1 retrieval, then two-stage retrieval (§3.2, §4.2, §4.4).

* ``stage1``: the cosine of the stage-1 embeddings ranks the whole gallery;
* ``two_stage``: stage 1 picks each query's ``eval.rerank_k`` (§4.2: 20) nearest items
  of the other modality, stage 2 re-scores those pairs and re-orders them (by its logit,
  plus stage 1's weighted by ``model.stage1_weight`` where set); every other item
  keeps its stage-1 order behind them (``hgan.evaluation.rerank.rerank``);
* ``full_gallery``: stage 2 scores every pair (Table 2's "w/o stage-1": no "easy result
  screening"). A model trained with ``stage1_init=false`` gets it whenever ``two_stage``
  is asked for, and it is then the report's top level.

Both directions, with the metrics of ``hgan.evaluation.metrics`` (R1/5/10, mAP, mINP; AP@50
per sentence and per class, and class Rank-1, on CUB / Flowers). The report has the layout of
``hgan.evaluation.hgan_scoring.evaluate`` with the modes ``stage1`` and ``two_stage``; its
top-level ``t2i`` / ``i2t`` are the two-stage ones.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np

from hgan.config import Config
from hgan.data import pipeline
from hgan.evaluation import encode, metrics, rerank
from hgan.modeling.iatv.model import IATV
from hgan.tf_compat import tf


# "full_gallery": stage 2 scores every pair, no stage-1 screening (Table 2 "w/o stage-1").
MODES = ("stage1", "two_stage", "full_gallery")


def reported_mode(config: Config) -> str:
    """The ranking an IATV model's figures are read from (the report's top level, and the
    val figure that selects its checkpoint): "two_stage", or "full_gallery" for Table 2's
    "w/o stage-1" (``stage1_init=false``: "not using stage-1 network for ... easy result
    screening")."""
    return "two_stage" if config.model.stage1_init else "full_gallery"


def _compiled(model: IATV) -> dict:
    def make(ref):
        def encode_image(image, regions):
            out = {"embedding": ref().encode_image(image, training=False)}
            if regions:
                out["regions"] = ref().encode_regions(image, training=False)
            return out

        return {
            "image": tf.function(encode_image, reduce_retracing=True),
            "text": tf.function(lambda x: ref().encode_text(x, training=False),
                                reduce_retracing=True),
            "pairs": tf.function(lambda r, t: ref().pair_logits(r, t, training=False),
                                 reduce_retracing=True)}

    return encode.compiled(model, "iatv", make)


def encode_split(model: IATV, data_dir: str, config: Config, split: str, tokenizer=None,
                 regions: bool = True, log=None) -> tuple[dict, dict]:
    """IATV's features of a split (``hgan.evaluation.encode.encode_split``).

    texts: ``embedding`` [Nt, E], ``input_word_ids`` / ``input_mask`` [Nt, L], ``label``,
    ``caption``, ``image_index``; images: ``embedding`` [Ni, E], ``regions`` [Ni, N, C]
    (stage 2's CNN; only with ``regions=True``), ``label``, ``path``. ``log``: progress.
    """
    fns = _compiled(model)
    token_keys = ("input_word_ids", "input_mask")
    return encode.encode_split(
        lambda image: fns["image"](image, regions), lambda x: {"embedding": fns["text"](x)},
        data_dir, config, split, tokenizer or pipeline.make_tokenizer(config), token_keys,
        keep_inputs=token_keys, log=log)


def stage1_scores(texts: dict, images: dict) -> np.ndarray:
    """[Nt, Ni] cosine of the stage-1 embeddings (§3.1.1: inner products of l2-normalised
    features)."""
    t = texts["embedding"] / np.linalg.norm(texts["embedding"], axis=1, keepdims=True)
    v = images["embedding"] / np.linalg.norm(images["embedding"], axis=1, keepdims=True)
    return t @ v.T


def pairs_per_batch(config: Config, words: int, regions: int, channels: int,
                    memory_budget_bytes: int = 256 << 20) -> int:
    """Stage-2 pairs per scoring call within the budget: per pair the spatial attention's
    [words, regions, K] tensors (Eq. 6, a few copies) and the region features dominate."""
    per_pair = 4 * (3 * words * regions * config.model.attention_dim + regions * channels)
    return max(1, min(4096, memory_budget_bytes // per_pair))


def two_stage_scores(model: IATV, texts: dict, images: dict, k: int,
                     stage1=None, fuse: bool = True,
                     logits: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """(t2i [Nt, Ni], i2t [Ni, Nt]) float64 two-stage matrices: row order is the final
    ranking; each query's stage-1 top ``k`` carry their two-stage score (``IATV.two_stage_
    score``: stage 2's logit, plus ``model.stage1_weight`` · cos/τ), above every other
    item, which keep their stage-1 order. ``fuse=False``: stage 2's logit alone.
    ``logits`` [Nt, Ni]: receives stage 2's logit of every pair scored."""
    stage1 = stage1_scores(texts, images) if stage1 is None else stage1
    ids, mask, regions = texts["input_word_ids"], texts["input_mask"], images["regions"]
    batch = pairs_per_batch(model.config, ids.shape[1], regions.shape[1], regions.shape[2])
    score = _compiled(model)["pairs"]

    def pair_logits(text_index, image_index):
        tokens = {"input_word_ids": ids[text_index], "input_mask": mask[text_index]}
        raw = score(regions[image_index], tokens).numpy().astype(np.float64)
        if logits is not None:
            logits[text_index, image_index] = raw
        return model.two_stage_score(raw, stage1[text_index, image_index]) if fuse else raw

    t2i = rerank.rerank(stage1, pair_logits, k, batch)
    i2t = rerank.rerank(stage1.T, lambda q, g: pair_logits(g, q), k, batch)
    return t2i, i2t


def class_two_stage_scores(model: IATV, texts: dict, images: dict, k: int,
                           stage1=None) -> tuple[np.ndarray, np.ndarray]:
    """(classes [C], [C, Ni] float64) two-stage ranking of one text query per class (CUB /
    Flowers' "query textual class", IATV §4.1): stage 1 ranks the gallery by the class's
    mean stage-1 score (``metrics.class_queries``), and its top ``k`` are re-ordered by the
    mean over the class's sentences of the two-stage score (``IATV.two_stage_score``) of
    each (sentence, image) pair; the rest keep their stage-1 order. As many stage-2 pairs
    as the per-sentence two-stage ranking: each of a class's sentences with k images."""
    stage1 = stage1_scores(texts, images) if stage1 is None else stage1
    classes, fused = metrics.class_queries(stage1, texts["label"])
    members = [np.flatnonzero(texts["label"] == c) for c in classes]
    ids, mask, regions = texts["input_word_ids"], texts["input_mask"], images["regions"]
    batch = pairs_per_batch(model.config, ids.shape[1], regions.shape[1], regions.shape[2])
    score = _compiled(model)["pairs"]

    def class_pair_scores(class_index, image_index):
        sentences = [members[c] for c in class_index]
        text = np.concatenate(sentences)
        image = np.repeat(image_index, [len(m) for m in sentences])
        out = np.empty(len(text), np.float64)
        for a in range(0, len(text), batch):
            t, i = text[a:a + batch], image[a:a + batch]
            logits = score(regions[i], {"input_word_ids": ids[t], "input_mask": mask[t]})
            out[a:a + batch] = model.two_stage_score(logits.numpy().astype(np.float64),
                                                     stage1[t, i])
        pair = np.repeat(np.arange(len(class_index)), [len(m) for m in sentences])
        return np.bincount(pair, out) / np.bincount(pair)

    return classes, rerank.rerank(fused, class_pair_scores, k, batch)


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


def stage1_weight_sweep(model: IATV, texts: dict, images: dict, stage1: np.ndarray, k: int,
                        weights) -> dict:
    """Two-stage R1 both ways as ``model.stage1_weight`` takes each of ``weights``, stage 2's
    logits of every re-ranked pair computed once → {"stage1": (t2i R1, i2t R1),
    "w=<weight>": (...), ...}. hgan-eval --stage1_weights prints it (how the demo preset's
    weight was chosen on the val split)."""
    pairs = _compiled(model)["pairs"]
    wanted = {(int(q), int(g)) for q, row in enumerate(rerank.top_k_ordered(stage1, k))
              for g in row}
    wanted |= {(int(t), int(g)) for g, row in enumerate(rerank.top_k_ordered(stage1.T, k))
               for t in row}
    todo = np.array(sorted(wanted))
    logits = {}  # (text, image) → stage-2 logit, for every pair some query re-ranks
    for a in range(0, len(todo), 512):
        t, i = todo[a:a + 512, 0], todo[a:a + 512, 1]
        tokens = {key: texts[key][t] for key in ("input_word_ids", "input_mask")}
        logits.update(zip(map(tuple, todo[a:a + 512].tolist()),
                          pairs(images["regions"][i], tokens).numpy().tolist()))
    lookup = np.vectorize(lambda t, g: logits[(int(t), int(g))], otypes=[np.float64])

    def r1(t2i, i2t):
        both = metrics.both_directions(t2i, i2t, texts["label"], images["label"])
        return both["t2i"]["R1"], both["i2t"]["R1"]

    config = model.config
    out = {"stage1": r1(stage1, stage1.T)}
    try:
        for w in weights:  # the model's own two-stage score at each weight
            model.config = config.replace(stage1_weight=float(w))
            t2i = rerank.rerank(stage1, lambda q, g: model.two_stage_score(
                lookup(q, g), stage1[q, g]), k)
            i2t = rerank.rerank(stage1.T, lambda q, g: model.two_stage_score(
                lookup(g, q), stage1[g, q]), k)
            out[f"w={float(w):g}"] = r1(t2i, i2t)
    finally:
        model.config = config
    return out


def evaluate(model: IATV, data_dir: str, config: Config, split: str, modes=MODES,
             rerank_k=None, stage1_weights=(), log=None) -> dict:
    """The report: {"split", "queries", "gallery", "candidates", "timing", "stage1",
    "two_stage", "t2i", "i2t"} (each mode {"t2i", "i2t"} of metrics; top-level = two-stage,
    or stage 1 without it) plus, under ``"_arrays"``, the final t2i matrix, the features and
    the levels' scores (``"levels"``: stage 1's cosine, stage 2's logit of the pairs it
    scored) for ``hgan.evaluation.report``'s figures and page. ``stage1_weights``: also
    ``"stage1_weight_sweep"`` (``stage1_weight_sweep``) over those weights. ``log``:
    progress of the encoding.

    On CUB / Flowers, both modes report ``AP@50`` (one query per sentence) and
    ``class_AP@50`` (one query per class, the papers' figure; two-stage by
    ``class_two_stage_scores``); class Rank-1, which averages raw scores over a class's
    sentences, stage 1 only (two-stage scores of different candidates are not on one
    scale; IATV §4.5 reports it for stage 1 only).
    """
    unknown = set(modes) - set(MODES)
    if unknown or not modes:
        raise ValueError(f"unknown IATV modes {sorted(unknown)}; choose from {MODES}")
    class_level = pipeline.load_manifest(data_dir).get("dataset") in metrics.CLASS_LEVEL_DATASETS
    k = metrics.rerank_depth(rerank_k or config.eval.rerank_k, class_level)
    t0 = time.time()
    texts, images = encode_split(model, data_dir, config, split,
                                 regions=bool({"two_stage", "full_gallery"} & set(modes)),
                                 log=log)
    report = {"split": split, "queries": int(len(texts["label"])),
              "gallery": int(len(images["label"])), "candidates": int(k),
              "timing": {"encode_s": time.time() - t0}}
    t0 = time.time()
    stage1 = stage1_scores(texts, images)
    report["timing"]["stage1_s"] = time.time() - t0
    if "stage1" in modes:
        report["stage1"] = metrics.both_directions(stage1, stage1.T, texts["label"],
                                                   images["label"], ap50=class_level,
                                                   class_r1=class_level)
    t2i = stage1
    # Stage 2's logit of every pair it scores (NaN elsewhere): the report's stage 2 alone.
    logits = np.full(stage1.shape, np.nan)
    if "two_stage" in modes:
        t0 = time.time()
        t2i, i2t = two_stage_scores(model, texts, images, k, stage1, logits=logits)
        report["timing"]["two_stage_s"] = time.time() - t0
        report["two_stage"] = metrics.both_directions(t2i, i2t, texts["label"],
                                                      images["label"], ap50=class_level)
        if class_level:  # the papers' AP@50: one query per class
            t0 = time.time()
            classes, ranked = class_two_stage_scores(model, texts, images, k, stage1)
            report["two_stage"]["t2i"]["class_AP@50"] = metrics.class_query_ap_at_k(
                ranked, classes, images["label"], metrics.AP_DEPTH)
            report["timing"]["two_stage_s"] += time.time() - t0
    if "full_gallery" in modes or (not config.model.stage1_init and "two_stage" in modes):
        t0 = time.time()
        full = max(len(texts["label"]), len(images["label"]))
        # Stage 2 alone: "w/o stage-1" means no screening by it, nor a share of the score.
        t2i, i2t = two_stage_scores(model, texts, images, full, stage1, fuse=False,
                                    logits=logits)
        report["timing"]["full_gallery_s"] = time.time() - t0
        report["full_gallery"] = metrics.both_directions(t2i, i2t, texts["label"],
                                                         images["label"], ap50=class_level)
    if stage1_weights:
        report["stage1_weight_sweep"] = stage1_weight_sweep(model, texts, images, stage1, k,
                                                            stage1_weights)
    main = report[next(m for m in ("full_gallery", "two_stage", "stage1") if m in report)]
    report["t2i"], report["i2t"] = main["t2i"], main["i2t"]
    levels = {"stage 1": stage1}
    if not np.isnan(logits).all():
        levels["stage 2"] = logits
    report["_arrays"] = {"t2i": t2i, "texts": texts, "images": images, "levels": levels}
    return report
