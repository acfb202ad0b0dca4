"""IATV's part of the evaluation report (``Family.report_extras``, which ``hgan.families``
hands to ``hgan.evaluation.report``): each stage ranking alone, and the Markdown table of
the stage-1 weight sweep (``hgan-eval --stage1_weights``)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from hgan.evaluation import metrics, rerank
from hgan.evaluation.report import Extras


def report_extras(model, report: dict, arrays: Optional[dict], queries: dict,
                  prefix: Optional[str]) -> Extras:
    """The levels ``stage 1`` (its cosine over the whole gallery) and ``stage 2`` (its
    logit alone re-ordering stage 1's top ``candidates``, the rest in stage-1 order; and
    over every pair where ``full_gallery`` ran), and the sweep's table. IATV draws no
    picture of its own (``queries`` and ``prefix`` unused)."""
    k = report.get("candidates")
    weight = model.config.model.stage1_weight
    sweep = sweep_markdown(report)
    return Extras(markdown=sweep, notes=sweep, levels=levels(report, arrays, weight),
                  level_note=f"Stage 1 ranks the whole gallery by its cosine; stage 2 by "
                             f"its logit alone re-orders stage 1's top {k} of each query "
                             f"(the two-stage score adds stage 1 with weight "
                             f"model.stage1_weight = {weight:g}).")


def levels(report: dict, arrays: Optional[dict], stage1_weight: float) -> dict:
    """{level: {"t2i", "i2t"} metrics} of each stage ranking alone, read from what
    evaluation computed: stage 2's logits of the pairs it scored, none scored again; at a
    ``stage1_weight`` of 0 the two-stage ranking is stage 2's alone, and its metrics are
    the report's."""
    out = {}
    if "stage1" in report:
        out["stage 1"] = report["stage1"]
    if not stage1_weight and "two_stage" in report:
        out["stage 2"] = report["two_stage"]
    if arrays is None:
        return out
    texts, images, scores = arrays["texts"], arrays["images"], arrays["levels"]
    stage1 = scores["stage 1"]
    if "stage 1" not in out:
        out["stage 1"] = metrics.both_directions(stage1, stage1.T, texts["label"],
                                                 images["label"])
    logits = scores.get("stage 2")
    if logits is not None and "stage 2" not in out:
        out.update(_stage2_alone(stage1, logits, int(report["candidates"]), texts["label"],
                                 images["label"]))
    if "full_gallery" in report:
        out["stage 2, every pair"] = report["full_gallery"]
    return out


def _stage2_alone(stage1, logits, k: int, text_labels, image_labels) -> dict:
    """{"stage 2": metrics} of stage 2's logit re-ordering stage 1's top ``k``, or {} when
    a re-ranked pair has no logit."""
    t2i = rerank.rerank(stage1, lambda q, g: logits[q, g], k)
    i2t = rerank.rerank(stage1.T, lambda q, g: logits[g, q], k)
    if not (np.isfinite(t2i).all() and np.isfinite(i2t).all()):
        return {}
    return {"stage 2": metrics.both_directions(t2i, i2t, text_labels, image_labels)}


def sweep_markdown(report: dict) -> list:
    """The two-stage R1 both ways at each stage-1 weight (``stage1_weight_sweep``)."""
    if not report.get("stage1_weight_sweep"):
        return []
    lines = ["", "| two-stage score (logit + w · cos/τ) | t2i R1 | i2t R1 |", "|---|---|---|"]
    for name, (t2i, i2t) in report["stage1_weight_sweep"].items():
        lines.append(f"| {name} | {t2i:.2f} | {i2t:.2f} |")
    return lines
