"""Noun-phrase extraction (hgan/phrases.py) on both taggers."""
import random

import nltk
import pytest

from hgan.data import phrases

PERCEPTRON_MISSING = phrases._perceptron() is None
TAGGERS = [
    "fallback",
    pytest.param("perceptron", marks=pytest.mark.skipif(
        PERCEPTRON_MISSING,
        reason="NLTK data 'averaged_perceptron_tagger_eng' is not installed "
               "(no PyPI package found that ships it; nltk.download needs the network)")),
]

# Caption -> phrases that must be among its noun phrases, whatever the tagger.
CAPTIONS = {
    # HGAN Fig. 1.
    "a woman in a black baseball cap and a red shoulder bag":
        ["a black baseball cap", "a red shoulder bag"],
    "The man is wearing a white t-shirt, blue jeans and black shoes. He carries a brown backpack.":
        ["a white t-shirt", "blue jeans", "black shoes", "a brown backpack"],
    "A young woman with long black hair is wearing a pink dress and white sandals, "
    "holding an umbrella in her right hand.":
        ["long black hair", "a pink dress", "white sandals", "an umbrella"],
    "This girl has a light blue denim jacket over a grey hoodie, dark pants and white sneakers.":
        ["a light blue denim jacket", "a grey hoodie", "dark pants", "white sneakers"],
    "The pedestrian is an older man in a navy coat and khaki trousers with a black messenger bag.":
        ["a navy coat", "khaki trousers", "a black messenger bag"],
}


def _texts(caption, tagger):
    return [text for text, _, _ in phrases.extract_noun_phrases(caption, tagger=tagger)]


@pytest.mark.parametrize("tagger", TAGGERS)
@pytest.mark.parametrize("caption", list(CAPTIONS))
def test_finds_garment_phrases(caption, tagger):
    found = _texts(caption, tagger)
    assert set(CAPTIONS[caption]) <= set(found), found


@pytest.mark.parametrize("tagger", TAGGERS)
def test_spans_are_utf8_byte_offsets(tagger):
    caption = ("Une passante en manteau rouge: a café-coloured coat 👜, grey suède shoes — "
               "and a “big” hat.")
    found = phrases.extract_noun_phrases(caption, tagger=tagger)
    encoded = caption.encode("utf-8")
    assert [text for text, _, _ in found if "coat" in text or "shoes" in text] == [
        "a café-coloured coat", "grey suède shoes"]
    for text, start, end in found:
        assert encoded[start:end].decode("utf-8") == text
    # After a multi-byte character, byte and character offsets differ: the test is not vacuous.
    coat = next(p for p in found if p[0] == "a café-coloured coat")
    assert coat[1] == caption.index("a café") and coat[2] == caption.index(" 👜") + 1


@pytest.mark.parametrize("tagger", TAGGERS)
def test_spans_are_ordered_and_disjoint(tagger):
    for caption in CAPTIONS:
        spans = [(s, e) for _, s, e in phrases.extract_noun_phrases(caption, tagger=tagger)]
        assert all(s < e for s, e in spans)
        assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))


def test_fallback_keeps_coordinated_colours_and_skips_verbs():
    found = _texts("A man wearing shorts and a black and white striped shirt.", "fallback")
    assert found == ["A man", "shorts", "a black and white striped shirt"]


def test_blank_caption_has_no_phrases():
    assert phrases.extract_noun_phrases("  ...  ", tagger="fallback") == []


def test_unknown_tagger_is_refused():
    with pytest.raises(ValueError, match="unknown tagger"):
        phrases.extract_noun_phrases("a red bag", tagger="spacy")


def test_tagger_name_says_which_tagger_is_the_default():
    assert phrases.tagger_name() == ("fallback" if PERCEPTRON_MISSING else "perceptron")


@pytest.mark.skipif(not PERCEPTRON_MISSING, reason="perceptron data is installed")
def test_forcing_the_missing_perceptron_raises():
    with pytest.raises(LookupError, match="averaged_perceptron_tagger_eng"):
        phrases.extract_noun_phrases("a red bag", tagger="perceptron")


def test_perceptron_path_uses_a_perceptron_tagger(monkeypatch):
    """Runs the perceptron branch even without NLTK data, with a tagger trained here."""
    random.seed(0)  # PerceptronTagger.train shuffles with the global generator
    tagger = nltk.tag.PerceptronTagger(load=False)
    sentences = [caption for caption in CAPTIONS for _ in range(3)]
    tagger.train([list(zip(*_fallback_tagged(s))) for s in sentences], nr_iter=5)
    monkeypatch.setattr(phrases, "_perceptron", lambda: tagger)
    assert phrases.tagger_name() == "perceptron"
    found = _texts("a woman in a black baseball cap and a red shoulder bag", None)
    assert {"a black baseball cap", "a red shoulder bag"} <= set(found)


def _fallback_tagged(caption):
    words = [m.group() for m in phrases.TOKEN_RE.finditer(caption)]
    return words, phrases._pos_tags(words, "fallback")


class _Installed:
    """Stands in for an installed perceptron: ``resolve_tagger`` only asks whether one is."""


def test_auto_resolves_to_what_is_installed(monkeypatch):
    monkeypatch.setattr(phrases, "_perceptron", lambda: None)
    assert phrases.resolve_tagger("auto") == "fallback"
    monkeypatch.setattr(phrases, "_perceptron", _Installed)
    assert phrases.resolve_tagger("auto") == "perceptron"


def test_a_named_tagger_is_kept_whatever_is_installed(monkeypatch):
    monkeypatch.setattr(phrases, "_perceptron", _Installed)
    assert phrases.resolve_tagger("fallback") == "fallback"
    assert phrases.resolve_tagger("perceptron") == "perceptron"
    monkeypatch.setattr(phrases, "_perceptron", lambda: None)
    assert phrases.resolve_tagger("fallback") == "fallback"


def test_requesting_a_missing_perceptron_fails_loudly(monkeypatch):
    monkeypatch.setattr(phrases, "_perceptron", lambda: None)
    with pytest.raises(LookupError, match="'perceptron' was requested") as error:
        phrases.resolve_tagger("perceptron")
    assert "taggers/averaged_perceptron_tagger_eng" in str(error.value)
    assert "'fallback'" in str(error.value)  # says what to do instead


def test_resolve_tagger_refuses_unknown_names():
    with pytest.raises(ValueError, match="unknown tagger 'nltk'"):
        phrases.resolve_tagger("nltk")


@pytest.mark.skipif(PERCEPTRON_MISSING, reason="NLTK data 'averaged_perceptron_tagger_eng' "
                    "is not installed (nltk.download needs the network)")
def test_the_installed_perceptron_resolves():
    assert phrases.resolve_tagger("perceptron") == "perceptron"
