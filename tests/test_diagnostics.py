"""``hgan.evaluation.diagnostics`` on inputs whose answers are known."""
import numpy as np

from hgan.evaluation import diagnostics


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


def test_gradient_table_names_the_variables_with_the_largest_gradients(tiny_data,
                                                                       tiny_config):
    from hgan.data import pipeline
    from hgan.modeling.hgan.model import build_model
    config = tiny_config.replace(bert="scratch:2x16", bert_layers="last", batch_size=4,
                                 identities_per_batch=2)
    tokenizer = pipeline.make_tokenizer(config)
    model = build_model(config, tokenizer.vocab_size + 1, 6)
    batch = next(iter(pipeline.train_dataset(tiny_data, config, tokenizer)))
    table = diagnostics.gradient_table(model, batch, top=3)
    assert set(table["grad_norm"]) == set(table["loss"]) >= {"pair", "word", "total"}
    assert len(table["largest"]) == 3 and all(n > 0 for _, n in table["largest"])
    norms = [n for _, n in table["largest"]]
    assert norms == sorted(norms, reverse=True)
