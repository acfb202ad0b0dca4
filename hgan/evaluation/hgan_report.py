"""HGAN's part of the evaluation report: Fig. 4 as numbers (the shares of the word level's
region selections that are content words and punctuation) and as a figure (the word map of
one query). ``hgan.families`` hands ``report_extras`` to ``hgan.evaluation.report``."""
from __future__ import annotations

from typing import Optional

import numpy as np

from hgan.data import pipeline
from hgan.evaluation import diagnostics, figures
from hgan.tf_compat import tf


def report_extras(model, arrays: dict, queries: np.ndarray,
                  prefix: Optional[str]) -> tuple[dict, dict]:
    """The report's ``selection`` entry and, with a ``prefix``, the Fig. 4 word map of the
    first Fig. 3 query (``{prefix}_word_map.png``); nothing for a model without the word
    level."""
    if model.word_head is None:
        return {}, {}
    entries = {"selection": selection_report(model, arrays)}
    if prefix is None:
        return entries, {}
    texts, images = arrays["texts"], arrays["images"]
    q = int(queries[0])
    g = int(texts["image_index"][q])
    _, weights = model.word_head.selections(texts["word"][q:q + 1], texts["word_mask"][q:q + 1],
                                            images["word"][g:g + 1])
    words = word_keys_of(model.config)(texts["caption"][q])
    keep = np.flatnonzero(texts["word_mask"][q] > 0)
    figure = figures.word_selection_map([words[i] for i in range(len(keep))],
                                        weights.numpy()[0, 0][:, keep])
    path = prefix + "_word_map.png"
    figure.save(path)
    return entries, {"word_map": path}


def word_keys_of(config, captions=()):
    """caption bytes → the strings of its word-level keys in slot order: whole words
    (``word_keys="words"``) or WordPiece tokens after [CLS]. The ``captions`` given (bytes)
    are tokenised up front in one call."""
    tokenizer = pipeline.make_tokenizer(config)
    if config.model.word_keys == "words":
        unique = list(dict.fromkeys(captions))
        known = dict(zip(unique, tokenizer.captions_words([c.decode() for c in unique])))
        return lambda caption: (known[caption] if caption in known
                                else tokenizer.caption_words(caption.decode()))

    def pieces(caption):
        ids = tokenizer(tf.constant([caption]))["input_word_ids"][0].numpy()
        return tokenizer.id_to_token(ids)[1:]
    return pieces


def selection_report(model, arrays: dict) -> dict:
    """Fig. 4 as numbers over the split: the shares of the word level's region selections
    that are content words and punctuation (``hgan.evaluation.diagnostics.selection_words``)."""
    limit = diagnostics.SELECTION_QUERIES
    stats = diagnostics.selection_words(
        model.word_head, arrays["texts"], arrays["images"],
        word_keys_of(model.config, list(arrays["texts"]["caption"][:limit])), limit=limit)
    return {k: stats[k] for k in ("selections", "content_share", "punctuation_share",
                                  "most_selected")}


