"""IATV's part of the evaluation report: each stage ranking alone, from the logits evaluation
kept, and the stage-1 weight sweep's table (which the shared Markdown table leaves to it)."""
import types

import numpy as np
import pytest

from hgan.evaluation import iatv_report, metrics, report


def _arrays(logits_everywhere=False):
    """4 captions × 3 images, one image per identity; stage 1 puts caption 0's image second
    and stage 2's logit lifts it to first; k = 2 re-ranked candidates per query."""
    stage1 = np.array([[0.5, 0.9, 0.1],
                       [0.2, 0.8, 0.3],
                       [0.1, 0.2, 0.7],
                       [0.6, 0.5, 0.4]])
    logits = np.array([[3.0, 1.0, 9.0],
                       [0.5, 2.0, 0.1],
                       [0.2, 0.3, 1.0],
                       [3.0, 2.5, 9.0]])
    top_t2i = np.argsort(-stage1, axis=1, kind="stable")[:, :2]
    top_i2t = np.argsort(-stage1.T, axis=1, kind="stable")[:, :2]
    scored = np.zeros(stage1.shape, bool)
    np.put_along_axis(scored, top_t2i, True, axis=1)
    for g, texts in enumerate(top_i2t):
        scored[texts, g] = True
    kept = logits if logits_everywhere else np.where(scored, logits, np.nan)
    texts = {"label": np.array([0, 1, 2, 0])}
    images = {"label": np.array([0, 1, 2])}
    return {"texts": texts, "images": images, "t2i": stage1,
            "levels": {"stage 1": stage1, "stage 2": kept}}, stage1, logits


def test_stage2_alone_reorders_stage1s_top_k_by_its_logit():
    arrays, stage1, logits = _arrays()
    s1 = metrics.both_directions(stage1, stage1.T, [0, 1, 2, 0], [0, 1, 2])
    levels = iatv_report.levels({"stage1": s1, "candidates": 2}, arrays, stage1_weight=0.5)
    assert levels["stage 1"] is s1  # read from the report, not ranked again
    # By hand: caption 0's top 2 by stage 1 are images 1, 0; the logits 1.0 < 3.0 put its
    # own image 0 first, and captions 1-3 keep theirs first: t2i R1 = 4/4 (stage 1: 3/4).
    assert levels["stage 2"]["t2i"]["R1"] == pytest.approx(100.0)
    assert s1["t2i"]["R1"] == pytest.approx(75.0)
    # Both ways against NumPy; the logits no top 2 asks for (caption 0, image 2: 9.0) are
    # never read.
    def reranked(first, second):
        out = np.zeros(first.shape)
        for q in range(len(first)):
            order = np.argsort(-first[q], kind="stable")
            top = order[:2][np.argsort(-second[q, order[:2]], kind="stable")]
            out[q, np.concatenate([top, order[2:]])] = np.arange(first.shape[1], 0, -1)
        return out

    hand = metrics.both_directions(reranked(stage1, logits), reranked(stage1.T, logits.T),
                                   [0, 1, 2, 0], [0, 1, 2])
    for direction in ("t2i", "i2t"):
        assert levels["stage 2"][direction] == pytest.approx(hand[direction])


def test_no_stage2_level_when_a_re_ranked_pair_has_no_logit():
    arrays, _, _ = _arrays()
    arrays["levels"]["stage 2"][0, 1] = np.nan  # a top-2 pair stage 2 never scored
    levels = iatv_report.levels({"candidates": 2}, arrays, stage1_weight=0.5)
    assert set(levels) == {"stage 1"}  # ranked from the arrays when the report lacks it
    assert levels["stage 1"]["t2i"]["R1"] == pytest.approx(75.0)


def test_full_gallery_adds_stage2_over_every_pair():
    arrays, _, _ = _arrays(logits_everywhere=True)
    full = {"t2i": {"R1": 12.5}, "i2t": {"R1": 25.0}}
    levels = iatv_report.levels({"candidates": 2, "full_gallery": full}, arrays, 0.5)
    assert list(levels) == ["stage 1", "stage 2", "stage 2, every pair"]
    assert levels["stage 2, every pair"] is full


def test_at_stage1_weight_0_stage2_alone_is_the_two_stage_ranking_already_measured():
    arrays, _, _ = _arrays()
    two_stage = {"t2i": {"R1": 1.0}, "i2t": {"R1": 2.0}}
    levels = iatv_report.levels({"candidates": 2, "two_stage": two_stage}, arrays, 0.0)
    assert levels["stage 2"] is two_stage
    # With a weight the two-stage ranking mixes stage 1 in: stage 2 is ranked alone.
    levels = iatv_report.levels({"candidates": 2, "two_stage": two_stage}, arrays, 0.5)
    assert levels["stage 2"]["t2i"]["R1"] == pytest.approx(100.0)


def test_the_sweep_table_is_the_families_not_the_shared_tables():
    sweep = {"stage1": (40.0, 30.0), "w=0": (50.0, 33.3), "w=1": (45.0, 35.0)}
    modes = {"two_stage": {d: {c: 1.0 for c in ("R1", "R5", "R10", "mAP", "mINP")}
                           for d in ("t2i", "i2t")},
             "timing": {"two_stage_s": 1.0}, "stage1_weight_sweep": sweep,
             "candidates": 3}
    assert "two-stage score" not in report.markdown_table(modes)
    model = types.SimpleNamespace(config=types.SimpleNamespace(
        model=types.SimpleNamespace(stage1_weight=0.25)))
    extras = iatv_report.report_extras(model, modes, None, {}, None)
    table = report.markdown_table(modes, extras.markdown)
    assert "| w=0 | 50.00 | 33.30 |" in table and "| stage1 | 40.00 | 30.00 |" in table
    assert extras.notes == extras.markdown  # the page shows it too
    assert "top 3" in extras.level_note and "0.25" in extras.level_note
    assert iatv_report.sweep_markdown({}) == []


@pytest.mark.slow
def test_evaluation_keeps_the_logits_that_rank_stage2_alone(iatv_run, tiny_data):
    # The tiny preset's stage-1 weight is 0, so its two-stage ranking is stage 2's alone:
    # ranked again from the logits evaluation kept (the shortcut turned off by passing a
    # weight), it gives the same figures.
    from hgan.evaluation import iatv_scoring
    from hgan.modeling.iatv.model import load_model
    model, config, _ = load_model(iatv_run[0])
    assert config.model.stage1_weight == 0
    result = iatv_scoring.evaluate(model, tiny_data, config, "test")
    logits = result["_arrays"]["levels"]["stage 2"]
    assert np.isfinite(logits).sum() >= len(logits) * result["candidates"]
    levels = iatv_report.levels(result, result["_arrays"], stage1_weight=1.0)
    for direction in ("t2i", "i2t"):
        assert levels["stage 2"][direction] == pytest.approx(result["two_stage"][direction])
        assert levels["stage 1"][direction] == result["stage1"][direction]
