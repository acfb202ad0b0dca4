"""The caption of a horizontally flipped image: "left" and "right" swap, in-graph.

A flipped image shows a person whose sides are exchanged (a bag in the right hand is in the
left one), so a training pair whose image is flipped keeps its caption true only if the
caption's sides swap with it. The swap is made on the caption text, before tokenisation, so
every tokenizer sees it: BERT's WordPieces ("leftmost" is ``left ##most``, and becomes
``right ##most``) and the word vocabulary of ``hgan.data.word_vocab`` alike.

Words are found the way BERT's basic tokenizer splits a caption (whitespace, punctuation,
CJK characters; ``left-hand`` is three words), so a swapped word is a word the tokenizer
sees. A swapped word keeps its case (``Left`` → ``Right``, ``LEFT`` → ``RIGHT``; any other
mix becomes lower case, which is what an uncased tokenizer reads anyway). Every "right"
swaps, the rare "right behind" and "all right" too.

"right" is one byte longer than "left", so the noun-phrase byte spans of the caption
(``hgan.data.records``) move with the words before and inside them: ``mirror_captions``
returns the spans of the swapped caption.
"""
from __future__ import annotations

import tensorflow_text as tf_text

from hgan.tf_compat import tf

# The word split of BERT's basic tokenizer (the one ``hgan.data.tokenization`` uses).
from tensorflow_text.python.ops.bert_tokenizer import (  # noqa: E402
    _DELIM_REGEX_PATTERN as _DELIM_PATTERN,
    _KEEP_DELIM_NO_WHITESPACE_PATTERN as _KEEP_DELIM_PATTERN,
)

_PAIRS = (("left", "right"), ("leftmost", "rightmost"), ("lefthand", "righthand"),
          ("lefthanded", "righthanded"), ("leftward", "rightward"),
          ("leftwards", "rightwards"))
# Lower-case word → its mirror image; closed under the swap.
MIRROR_WORDS = {**dict(_PAIRS), **{b: a for a, b in _PAIRS}}


def mirror_word(word: str):
    """The mirror image of one word in its case (as ``mirror_captions`` swaps it), or None
    for a word that no flip changes."""
    partner = MIRROR_WORDS.get(word.lower())
    if partner is None:
        return None
    if word.isupper():
        return partner.upper()
    return partner.capitalize() if word == word.lower().capitalize() else partner


def _table() -> tf.lookup.StaticHashTable:
    keys = list(MIRROR_WORDS)
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys),
                                            tf.constant([MIRROR_WORDS[k] for k in keys])), "")


def _first_upper(word: tf.Tensor) -> tf.Tensor:
    length = tf.strings.length(word)
    one = tf.minimum(length, 1)  # "" stays ""
    return tf.strings.join([tf.strings.upper(tf.strings.substr(word, tf.zeros_like(one), one)),
                            tf.strings.substr(word, one, length - one)])


def _same_case(word: tf.Tensor, swapped: tf.Tensor) -> tf.Tensor:
    """``swapped`` (lower case) in the case of ``word``: UPPER, Capitalised or lower."""
    upper = tf.strings.upper(word)
    lower = tf.strings.lower(word)
    all_upper = tf.equal(word, upper) & tf.not_equal(word, lower)
    capitalised = tf.equal(word, _first_upper(lower))
    return tf.where(all_upper, tf.strings.upper(swapped),
                    tf.where(capitalised, _first_upper(swapped), swapped))


@tf.autograph.experimental.do_not_convert  # plain TF ops; nothing to convert
def mirror_captions(captions: tf.Tensor, phrase_spans=None):
    """Swaps left and right in each caption of a batch.

    Args:
      captions: [B] strings.
      phrase_spans: None, or [B, M, 2] int UTF-8 byte spans [start, end) into the
        captions, -1 for a padded phrase.
    Returns:
      (captions [B], spans [B, M, 2] of the same dtype, or None): every word of
      ``MIRROR_WORDS`` replaced by its mirror image, the rest of each caption byte for byte
      as it was; each span covers the same words in the swapped caption.
    """
    captions = tf.convert_to_tensor(captions, tf.string)
    words, begin, end = tf_text.regex_split_with_offsets(captions, _DELIM_PATTERN,
                                                        _KEEP_DELIM_PATTERN)
    flat = words.flat_values
    partner = _table().lookup(tf.strings.lower(flat))
    hit = tf.not_equal(partner, "")
    new_words = tf.where(hit, _same_case(flat, partner), flat)
    # Each word preceded by the text between it and the word before (spaces), then the
    # caption's tail after its last word: the caption again, with the words swapped.
    row = words.value_rowids()
    starts = tf.concat([tf.zeros_like(begin[:, :1]), end[:, :-1]], axis=1).flat_values
    gaps = tf.strings.substr(tf.gather(captions, row), starts, begin.flat_values - starts)
    pieces = words.with_flat_values(tf.strings.join([gaps, new_words]))
    length = tf.cast(tf.strings.length(captions), tf.int64)
    last = tf.minimum(tf.maximum(tf.reduce_max(end, axis=1), 0), length)  # 0: no word
    tail = tf.strings.substr(captions, last, length - last)
    mirrored = tf.strings.join([tf.strings.reduce_join(pieces, axis=1), tail])
    if phrase_spans is None:
        return mirrored, None
    phrase_spans = tf.convert_to_tensor(phrase_spans)
    # A span's offset x moves by the length change of every swapped word ending at or
    # before x (a span starts and ends on word boundaries).
    growth = words.with_flat_values(tf.where(
        hit, tf.cast(tf.strings.length(new_words) - tf.strings.length(flat), tf.int64),
        tf.zeros_like(end.flat_values))).to_tensor()  # [B, W]
    word_end = end.to_tensor(default_value=tf.int64.max)  # [B, W]
    x = tf.cast(phrase_spans, tf.int64)  # [B, M, 2]
    before = word_end[:, None, None, :] <= x[..., None]  # [B, M, 2, W]
    shift = tf.reduce_sum(tf.where(before, growth[:, None, None, :], 0), axis=-1)
    spans = tf.where(x >= 0, x + shift, x)
    return mirrored, tf.cast(spans, phrase_spans.dtype)


def mirror_where(flipped: tf.Tensor, captions: tf.Tensor, phrase_spans=None):
    """``mirror_captions`` on the rows of a batch whose image was flipped.

    Args:
      flipped: [B] bool, the flip of each row's image.
      captions: [B] strings; phrase_spans: None or [B, M, 2] (as ``mirror_captions``).
    Returns: (captions [B], spans [B, M, 2] or None), swapped where ``flipped``.
    """
    mirrored, spans = mirror_captions(captions, phrase_spans)
    captions = tf.where(flipped, mirrored, captions)
    if phrase_spans is None:
        return captions, None
    return captions, tf.where(flipped[:, None, None], spans, phrase_spans)
