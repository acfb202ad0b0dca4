"""The fallback noun-phrase chunker of ``hgan.data.phrases`` as TensorFlow ops.

An exported SavedModel receives raw sentences and must find their noun phrases without
Python or NLTK. This module re-implements the fallback path in-graph, with the same lexicon,
suffix rules and grammar: words are tagged by table lookup and ordered regex rules, each tag
becomes one character, and the chunk grammar becomes a regular expression over that tag
string, whose matches are the phrases. ``tests/test_phrase_graph.py`` checks it gives the
spans NLTK gives.
"""
from __future__ import annotations

import tensorflow_text as tf_text

from hgan.data.phrases import LEXICON, SUFFIX_RULES
from hgan.tf_compat import tf

# RE2 spelling of phrases.TOKEN_RE (Python's \w is Unicode-aware, RE2's is ASCII).
_WORD = r"[\p{L}\p{N}_]"
_TOKEN = rf"{_WORD}+(?:[-'’]{_WORD}+)*|[^\p{{L}}\p{{N}}_\s]"

# One character per tag class of the grammar of phrases.GRAMMAR.
_CLASS = {"DT": "D", "PRP$": "D", "CC": "A", "CD": "C", "VBN": "V", "VBG": "G"}


def _tag_char(tag: str) -> str:
    if tag.startswith("JJ"):
        return "J"
    if tag.startswith("NN"):
        return "N"
    return _CLASS.get(tag, "O")


# phrases.GRAMMAR's two rules, in order, over the tag characters; RE2 is leftmost-first like
# Python's re, and a rule-2 match can never contain the determiner that starts a rule-1 one.
_NP = r"D(?:[JV]A)?[JCVG]*N+|(?:[JV]A)?[JCV]*N+"


class GraphPhraseChunker(tf.Module):
    """``__call__(sentences [B] string)`` → ragged [B, (P), 2] int64 phrase byte spans."""

    def __init__(self, name: str = "phrase_chunker"):
        super().__init__(name=name)
        words = list(LEXICON)
        self._lexicon = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(words), tf.constant([_tag_char(LEXICON[w]) for w in words])),
            default_value="")
        self._rules = [(pattern, _tag_char(tag)) for pattern, tag in SUFFIX_RULES]

    @tf.autograph.experimental.do_not_convert  # plain TF ops; nothing to convert
    def __call__(self, sentences: tf.Tensor) -> tf.RaggedTensor:
        sentences = tf.convert_to_tensor(sentences, tf.string)
        tokens, starts, ends = tf_text.regex_split_with_offsets(
            sentences, rf"\s+|{_TOKEN}", _TOKEN)
        tags = tf.ragged.map_flat_values(self._tag, tokens)
        tag_string = tf.strings.reduce_join(tags, axis=-1)  # [B], one char per word
        pieces, p_start, p_end = tf_text.regex_split_with_offsets(tag_string, _NP, _NP)
        is_phrase = tf.ragged.map_flat_values(tf.strings.regex_full_match, pieces, _NP)
        first_word = tf.ragged.boolean_mask(p_start, is_phrase)
        last_word = tf.ragged.boolean_mask(p_end, is_phrase) - 1
        span_start = tf.gather(starts, first_word, batch_dims=1)
        span_end = tf.gather(ends, last_word, batch_dims=1)
        return tf.stack([span_start, span_end], axis=-1)

    def _tag(self, words: tf.Tensor) -> tf.Tensor:
        lowered = tf.strings.lower(words, encoding="utf-8")
        tag = self._lexicon.lookup(lowered)
        fallback = tf.fill(tf.shape(words), "O")
        for pattern, char in reversed(self._rules):  # the first matching rule must win
            fallback = tf.where(tf.strings.regex_full_match(lowered, pattern), char, fallback)
        return tf.where(tf.equal(tag, ""), fallback, tag)
