"""HGAN's part of the evaluation report (``Family.report_extras``, which ``hgan.families``
hands to ``hgan.evaluation.report``): each level ranked alone (the exact mode's
``levels_exact``), Fig. 4 as numbers (the shares of the word level's region selections that
are content words and punctuation) and as figures (the word map of the first Fig. 3 query,
and of the worst queries with their own image and with the image ranked first)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from hgan.data import pipeline
from hgan.evaluation import diagnostics, figures
from hgan.evaluation.report import Extras
from hgan.tf_compat import tf


def report_extras(model, report: dict, arrays: Optional[dict], queries: dict,
                  prefix: Optional[str]) -> Extras:
    """``levels_exact`` as the report's levels (and its Markdown table); with the word level
    and the exact mode's arrays, the ``selection`` entry and, with a ``prefix``, the Fig. 4
    word map of the first Fig. 3 query (``{prefix}_word_map.png``) and of each of
    ``queries["worst"]``."""
    levels = report.get("levels_exact", {})
    extras = Extras(markdown=levels_markdown(levels), levels=levels,
                    level_note="Each level's score ranks the whole gallery alone (exact "
                               "mode); the fused score weights them by eval.score_weights.",
                    reads_phrases=model.phrase_head is not None)
    if model.word_head is None or arrays is None:
        return extras
    selection = selection_report(model, arrays)
    extras.entries["selection"] = selection
    extras.notes.append(
        f"\nFig. 4 over the split: {100 * selection['content_share']:.1f}% of the regions' "
        f"selected words are content words (colours, garments, accessories, hair), "
        f"{100 * selection['punctuation_share']:.1f}% punctuation; most selected: "
        f"{', '.join(w for w, _ in selection['most_selected'][:6])}")
    extras.markdown += extras.notes
    if prefix is None:
        return extras
    texts, images = arrays["texts"], arrays["images"]
    first = int(queries["fig3"][0])
    worst = [int(q) for q in queries["worst"]]
    words_of = word_keys_of(model.config, [texts["caption"][q] for q in [first] + worst])
    own = texts["image_index"].astype(int)
    path = prefix + "_word_map.png"
    word_maps(model, arrays, first, [own[first]], words_of)[0].save(path)
    extras.figures["word_map"] = path
    for q in worst:
        top = int(np.argmax(arrays["t2i"][q]))  # the first of its ranking: another identity
        maps = word_maps(model, arrays, q, [own[q], top], words_of)
        extras.query_figures[q] = [
            (f"Fig. 4: the words its own image's regions select ({_path(images, own[q])})",
             maps[0]),
            (f"… and those of the image ranked first ({_path(images, top)})", maps[1])]
    return extras


def _path(images: dict, g: int) -> str:
    path = images["path"][g]
    return path.decode("utf-8", "replace") if isinstance(path, bytes) else str(path)


def levels_markdown(levels: dict) -> list:
    if not levels:
        return []
    lines = ["", "| level alone (exact) | t2i R1 | t2i mAP | i2t R1 | i2t mAP |",
             "|---|---|---|---|---|"]
    for level, m in levels.items():
        lines.append(f"| {level} | {m['t2i']['R1']:.2f} | {m['t2i']['mAP']:.2f} | "
                     f"{m['i2t']['R1']:.2f} | {m['i2t']['mAP']:.2f} |")
    return lines


def word_maps(model, arrays: dict, q: int, gallery: list, words_of) -> list:
    """Fig. 4 of caption ``q`` with each image of ``gallery``: for every region of the
    image, the words it selects and their Eq. 7 weights."""
    texts, images = arrays["texts"], arrays["images"]
    _, weights = model.word_head.selections(texts["word"][q:q + 1],
                                            texts["word_mask"][q:q + 1],
                                            images["word"][gallery])
    words = words_of(texts["caption"][q])
    keep = np.flatnonzero(texts["word_mask"][q] > 0)
    return [figures.word_selection_map([words[i] for i in range(len(keep))],
                                       weights.numpy()[0, j][:, keep])
            for j in range(len(gallery))]


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


