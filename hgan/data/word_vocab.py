"""A word vocabulary built from the training captions (IATV §3.2.1: "each word is encoded as
a one-hot vector" over the words of the data, not BERT's WordPieces).

The file has BERT's vocab layout (one token per line, [PAD] [UNK] [CLS] [SEP] first), so
``hgan.data.tokenization.CaptionTokenizer`` reads it unchanged: with no ``##`` pieces in
it, WordPiece maps a known word to itself and any other word to [UNK]. Words are split the
way that tokenizer's basic step splits them (lower-cased, accents stripped, punctuation a
word of its own), so the vocabulary and the tokenizer agree on what a word is.
"""
from __future__ import annotations

import collections
import os
from typing import Iterable

from hgan.data import mirror
from hgan.tf_compat import tf

FILE = "word_vocab.txt"
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def split_words(captions: list[str], lower_case: bool = True) -> list[list[str]]:
    """Each caption's words as the tokenizer's basic step splits them."""
    from tensorflow_text.python.ops.bert_tokenizer import BasicTokenizer
    if not captions:
        return []
    tokens = BasicTokenizer(lower_case=lower_case).tokenize(tf.constant(captions))
    return [[w.decode("utf-8") for w in row] for row in tokens.to_list()]


def build(captions: Iterable[str], min_count: int = 1, lower_case: bool = True,
          batch: int = 4096) -> list[str]:
    """The vocabulary: ``SPECIALS``, then every word seen at least ``min_count`` times and
    the mirror image of each such "left" / "right" word (``hgan.data.mirror``), most
    frequent first (ties alphabetical), so the file is the same on every run."""
    counts: collections.Counter = collections.Counter()
    captions = list(captions)
    for a in range(0, len(captions), batch):
        for words in split_words(captions[a:a + batch], lower_case):
            counts.update(words)
    kept = {w for w, c in counts.items() if c >= min_count and w not in SPECIALS}
    # A flipped training image has its caption's left and right swapped (hgan.data.mirror):
    # a side word's mirror image is kept with it, ranked as if seen as often.
    for word in sorted(kept):
        partner = mirror.mirror_word(word)
        if partner is not None and partner not in kept:
            kept.add(partner)
            counts[partner] = counts[word]
    words = sorted(kept, key=lambda w: (-counts[w], w))
    return list(SPECIALS) + words


def write(path: str, vocab: list[str]) -> None:
    """Writes ``vocab`` atomically, one token per line."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    os.replace(tmp, path)
