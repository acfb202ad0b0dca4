"""Caption lengths and what a run's caps cut (hgan/data/caption_stats.py): distributions
computed by hand, the run's figures read from the counts of its own vocabulary only."""
import pytest

from hgan.config import preset
from hgan.data import caption_stats as cs
from tests_support import write_wordpiece_vocab

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    return write_wordpiece_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")


def test_percentiles_are_nearest_rank_and_exact():
    dist = cs.distribution(range(1, 1001))
    # 99.9 % of 1000 is 999 exactly (not the 999.0000000000001 of floats, which gives 1000).
    assert dist["percentiles"] == {"50": 500, "90": 900, "99": 990, "99.9": 999, "max": 1000}
    assert dist["mean"] == 500.5
    dist = cs.distribution([7, 14, 40, 7])
    assert dist == {"counts": {"7": 2, "14": 1, "40": 1},
                    "percentiles": {"50": 7, "90": 40, "99": 40, "99.9": 40, "max": 40},
                    "mean": 17.0}
    assert cs.over(dist, 13) == 2 and cs.over(dist, 40) == 0
    assert cs.histogram(dist) == [(0, 5, 0), (6, 11, 2), (12, 17, 1), (18, 23, 0),
                                  (24, 29, 0), (30, 35, 0), (36, 41, 1)]
    assert cs.distribution([]) == {"counts": {}, "percentiles": {
        "50": 0, "90": 0, "99": 0, "99.9": 0, "max": 0}, "mean": 0.0}


def test_words_and_wordpieces_are_counted_as_the_run_tokenises(vocab):
    captions = ["a man wearing black shoes.", "A WOMAN in a red coat", "a caf\u00e9 man."]
    counted = cs.count(captions, vocab)
    # words: a man wearing black shoes . | a woman in a red coat | a cafe man .
    assert counted == {"words": [6, 6, 4], "wordpieces": [7, 6, 4]}
    assert cs.count(captions) == {"words": [6, 6, 4], "wordpieces": None}
    assert cs.count([], vocab) == {"words": [], "wordpieces": []}


def lengths(vocab_sha="v", words_sha="w", phrases=(2, 4, 13, 2)):
    """caption_lengths of one split of four captions: 7, 14, 40, 7 WordPieces; 7, 13, 40,
    7 words; ``phrases`` noun phrases."""
    return cs.summarize({"train": {"wordpieces": [7, 14, 40, 7], "words": [7, 13, 40, 7],
                                   "phrases": list(phrases)}},
                        {"source": "bert", "sha256": vocab_sha, "tokens": 19}, words_sha)


def test_the_presets_cuts_in_the_summary():
    cuts = lengths()["splits"]["train"]["cut_by_presets"]
    assert set(cuts) == {"paper/hgan", "paper/iatv", "demo/hgan", "demo/iatv"}
    assert cuts["paper/hgan"] == {"captions": 4, "tokens": {
        "counted_in": "wordpieces", "exact": True, "max_len": 64, "cut": 0, "share": 0.0,
        "longest": 40, "max_len_for_99.9": 42, "max_len_for_all": 42}, "phrases": {
        "max_phrases": 8, "cut": 1, "share": 25.0, "most": 13, "max_phrases_for_99.9": 13,
        "max_phrases_for_all": 13}}
    # IATV's paper preset reads the data's words; IATV reads no noun phrases.
    assert cuts["paper/iatv"]["tokens"]["counted_in"] == "words"
    assert "phrases" not in cuts["paper/iatv"]
    # The demo's 40 tokens leave 38 for the caption: the 40-WordPiece caption is cut.
    assert (cuts["demo/hgan"]["tokens"]["cut"], cuts["demo/hgan"]["phrases"]["cut"]) == (1, 1)


def test_a_run_reads_its_cut_from_the_counts_of_its_own_vocabulary(tmp_path):
    run_vocab = tmp_path / "vocab.txt"
    run_vocab.write_text("\n".join(SPECIAL) + "\n")
    sha = cs.fingerprint(str(run_vocab))["sha256"]
    config = preset("tiny").replace(max_len=16, max_phrases=3)  # 14 tokens, 3 phrases
    same = cs.run_cuts(lengths(vocab_sha=sha), config, "train", str(run_vocab))
    assert same["tokens"] == {"counted_in": "wordpieces", "exact": True, "max_len": 16,
                              "cut": 1, "share": 25.0, "longest": 40, "max_len_for_99.9": 42,
                              "max_len_for_all": 42}
    words = cs.run_cuts(lengths(words_sha=sha), config, "train", str(run_vocab))
    assert (words["tokens"]["counted_in"], words["tokens"]["exact"]) == ("words", True)
    other = cs.run_cuts(lengths(), config, "train", str(run_vocab))
    assert (other["tokens"]["counted_in"], other["tokens"]["exact"]) == ("words", False)
    upper = cs.run_cuts(lengths(vocab_sha=sha), config.replace(lower_case=False), "train",
                        str(run_vocab))
    assert upper["tokens"]["exact"] is False  # counted lower-cased: not this run's tokens
    assert cs.run_cuts(lengths(vocab_sha=sha), config, "test", str(run_vocab)) == {}
    iatv = preset("tiny", "iatv").replace(max_len=16)
    assert "phrases" not in cs.run_cuts(lengths(vocab_sha=sha), iatv, "train", str(run_vocab))


def test_a_run_says_what_its_caps_cut_and_how_to_raise_them(tmp_path):
    config = preset("tiny").replace(max_len=16, max_phrases=3)
    lines = cs.describe(cs.cuts(lengths()["splits"]["train"], config, "wordpieces"), "train")
    assert lines == [
        "train captions cut by data.max_len=16 (14 WordPieces after [CLS] and [SEP]): 1 of 4 "
        "(25.000 %); the longest has 40",
        "WARNING: data.max_len=16 cuts 1 of the 4 train captions (25.000 %, more than 0.1 %): "
        "--set=data.max_len=42 keeps all of them whole",
        "train captions with more noun phrases than data.max_phrases=3 (the last ones are "
        "dropped): 2 of 4 (50.000 %); the most is 13",
        "WARNING: data.max_phrases=3 drops phrases of 2 of the 4 train captions (50.000 %, "
        "more than 0.1 %): --set=data.max_phrases=13 keeps all of them whole"]
    # Two values when 99.9 % of the captions fit a smaller cap than all of them do.
    assert cs.how_to_keep("max_len", 45, 52) == (
        "--set=data.max_len=45 keeps 99.9 % of them whole, --set=data.max_len=52 all of them")
    whole = cs.describe(cs.cuts(lengths(phrases=(1, 1, 1, 1))["splits"]["train"],
                                preset("paper"), "wordpieces"), "train")
    assert whole == [
        "train captions cut by data.max_len=64 (62 WordPieces after [CLS] and [SEP]): 0 of 4 "
        "(0.000 %); the longest has 40",
        "train captions with more noun phrases than data.max_phrases=8 (the last ones are "
        "dropped): 0 of 4 (0.000 %); the most is 1"]
    bound = cs.describe(cs.cuts(lengths()["splits"]["train"], config, "words", exact=False),
                        "val")
    assert bound[0].startswith("val captions cut by data.max_len=16: at least 1 of 4 "
                               "(25.000 %), counted in words")
    assert "hgan-prep --bert=<this run's BERT>" in bound[0]
    assert bound[1].startswith("WARNING: data.max_len=16 cuts at least 1 of the 4 val captions")


def test_a_cap_that_cuts_a_thousandth_or_less_is_no_warning():
    def lines(long_captions):
        pieces = [10] * (1000 - long_captions) + [70] * long_captions
        stats = cs.summarize({"s": {"wordpieces": pieces, "words": pieces,
                                    "phrases": [1] * 1000}}, None, "")["splits"]["s"]
        return cs.describe(cs.cuts(stats, preset("paper"), "wordpieces"), "train")

    assert "1 of 1,000 (0.100 %)" in lines(1)[0]
    assert not any("WARNING" in line for line in lines(1))
    assert lines(2)[1] == ("WARNING: data.max_len=64 cuts 2 of the 1,000 train captions "
                           "(0.200 %, more than 0.1 %): --set=data.max_len=72 keeps all of "
                           "them whole")


def test_without_wordpiece_counts_the_presets_cut_is_a_lower_bound_in_words():
    stats = cs.summarize({"s": {"wordpieces": None, "words": [5, 70], "phrases": [1, 1]}},
                         None, "")["splits"]["s"]
    assert stats["wordpieces"] is None
    tokens = stats["cut_by_presets"]["paper/hgan"]["tokens"]
    assert (tokens["counted_in"], tokens["exact"], tokens["cut"]) == ("words", False, 1)
