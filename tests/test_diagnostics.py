"""``hgan.diagnostics`` on inputs whose answers are known."""
import numpy as np

from hgan import diagnostics


def test_spread_tells_a_collapsed_set_from_a_spread_one():
    rng = np.random.default_rng(0)
    spread_out = rng.normal(size=(200, 16))
    collapsed = spread_out * 0.05 + np.ones(16)
    assert abs(diagnostics.spread(spread_out)["mean_cosine"]) < 0.05
    assert diagnostics.spread(collapsed)["mean_cosine"] > 0.95
    line = np.outer(rng.normal(size=50), np.ones(8))
    assert diagnostics.spread(line)["top_axis_share"] > 0.999


def test_hubness_finds_one_item_on_top_of_every_list():
    scores = np.random.default_rng(1).normal(size=(10, 6))
    scores[:, 4] += 100.0
    assert diagnostics.hubness(scores) == {"top1_hub_share": 1.0, "distinct_top1": 1}
    assert diagnostics.hubness(np.eye(5))["distinct_top1"] == 5


def test_content_words_and_punctuation():
    assert diagnostics.is_content("Red") and diagnostics.is_content("backpack")
    assert not diagnostics.is_content("the") and not diagnostics.is_content(".")
    assert diagnostics.is_punctuation("...") and not diagnostics.is_punctuation("a.")
