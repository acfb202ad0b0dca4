"""How long captions are, in tokens and in noun phrases, and what a run's caps cut.

A run reads at most ``data.max_len`` tokens of a caption, [CLS] and [SEP] included, and
its first ``data.max_phrases`` noun phrases (``hgan.data.tokenization``,
``hgan.data.pipeline``); the rest of a longer caption is cut. The import counts, per
caption (``count``):

* ``wordpieces``: its WordPieces under the vocabulary the import was given (``hgan-prep
  --bert`` or ``--vocab_file``; the manifest records its sha256), lower-cased as a run
  lower-cases them;
* ``words``: the words of BERT's basic tokenizer, punctuation marks included: its tokens
  under the data's own word vocabulary (``data.text_vocab=words`` maps each word to one
  token, [UNK] included), and a lower bound of its WordPieces under any vocabulary;
* ``phrases``: its noun phrases, as the import's tagger found them.

``summarize`` makes the manifest's ``caption_lengths`` of them: per split, each count's
``distribution`` and what the caps of the ``paper`` and ``demo`` presets would cut. A run
reads from it what its own caps cut (``run_cuts``), without tokenising anything: exactly
when its vocabulary is the one the counts were made with (the same sha256), else a lower
bound from the word counts. ``describe`` says it in a line or two, and warns, with the
``--set`` that would keep them whole, when the caps cut more than 0.1 % of the captions.
"""
from __future__ import annotations

import collections
import fractions
import hashlib
import math
from typing import Iterable, Optional, Sequence

from hgan.config import Config, presets
from hgan.data.tokenization import CaptionTokenizer, vocab_path
from hgan.tf_compat import tf

PERCENTILES = ("50", "90", "99", "99.9")
COVERAGE = "99.9"  # percent of captions a run's caps should keep whole; below it, a warning
FRAME = 2  # [CLS] and [SEP] take two of data.max_len
PRESETS = ("paper", "demo")  # the presets whose cut the manifest gives
BATCH = 4096  # captions per tokenizer call
UNITS = {"wordpieces": "WordPieces", "words": "words"}


def fingerprint(vocab_file: str) -> dict:
    """{"sha256", "tokens"} of a vocab file: two runs count alike when their sha256 agree."""
    with tf.io.gfile.GFile(vocab_file, "rb") as f:
        data = f.read()
    return {"sha256": hashlib.sha256(data).hexdigest(), "tokens": len(data.splitlines())}


def count(captions: Sequence[str], vocab_file: str = "", lower_case: bool = True) -> dict:
    """{"words": [per caption], "wordpieces": [per caption] (None without a vocab)}."""
    words, pieces = [], []
    if vocab_file:
        tokenizer = CaptionTokenizer(vocab_file, FRAME + 1, 1, lower_case)
        for start in range(0, len(captions), BATCH):
            batch_words, batch_pieces = tokenizer.lengths(captions[start:start + BATCH])
            words += batch_words
            pieces += batch_pieces
        return {"words": words, "wordpieces": pieces}
    from tensorflow_text.python.ops.bert_tokenizer import BasicTokenizer
    basic = BasicTokenizer(lower_case=lower_case)
    for start in range(0, len(captions), BATCH):
        batch = tf.constant(list(captions[start:start + BATCH]), tf.string)
        words += basic.tokenize(batch).row_lengths().numpy().tolist()
    return {"words": words, "wordpieces": None}


def distribution(values: Iterable[int]) -> dict:
    """{"counts": {n: captions} (the histogram, bin width 1), "percentiles": {"50", "90",
    "99", "99.9", "max"}, "mean"} of per-caption counts."""
    counts = collections.Counter(int(v) for v in values)
    total = sum(counts.values())
    return {"counts": {str(n): counts[n] for n in sorted(counts)},
            "percentiles": {**{p: percentile(counts, p) for p in PERCENTILES},
                            "max": max(counts, default=0)},
            "mean": round(sum(n * c for n, c in counts.items()) / total, 2) if total else 0.0}


def percentile(counts: dict, p: str) -> int:
    """The nearest-rank percentile ``p`` of {n: how many}: the smallest n that at least
    p % of the values do not exceed (0 for no values)."""
    total = sum(counts.values())
    rank = math.ceil(fractions.Fraction(p) * total / 100)  # exact: 99.9 % of 1000 is 999
    seen = 0
    for n in sorted(counts, key=int):
        seen += counts[n]
        if seen >= rank:
            return int(n)
    return 0


def histogram(dist: dict, bins: int = 8) -> list[tuple[int, int, int]]:
    """``dist``'s counts in at most ``bins`` bins of equal width from 0: (first, last,
    captions) each; the short histogram the import prints."""
    top = dist["percentiles"]["max"]
    width = max(1, math.ceil((top + 1) / bins))
    out = []
    for first in range(0, top + 1, width):
        last = first + width - 1
        out.append((first, last, sum(c for n, c in dist["counts"].items()
                                     if first <= int(n) <= last)))
    return out


def over(dist: dict, cap: int) -> int:
    """How many captions of ``dist`` count more than ``cap``."""
    return sum(c for n, c in dist["counts"].items() if int(n) > cap)


def summarize(per_split: dict, wordpiece_vocab: Optional[dict], word_vocab_sha256: str,
              lower_case: bool = True) -> dict:
    """The manifest's ``caption_lengths`` from ``per_split`` = {split: {"words": [...],
    "wordpieces": [...] or None, "phrases": [...]}} (per caption, as ``count`` gives
    them). ``wordpiece_vocab``: what the WordPieces were counted with ({"source",
    "sha256", "tokens"}); ``word_vocab_sha256``: the data's word_vocab.txt."""
    splits = {}
    for split, counts in per_split.items():
        stats = {"captions": len(counts["words"]),
                 "wordpieces": (None if counts["wordpieces"] is None
                                else distribution(counts["wordpieces"])),
                 "words": distribution(counts["words"]),
                 "phrases": distribution(counts["phrases"])}
        stats["cut_by_presets"] = {
            f"{name}/{family}": cuts(stats, config, "wordpieces" if config.data.text_vocab
                                     == "bert" else "words")
            for name in PRESETS for family, config in presets.PRESETS[name].items()}
        splits[split] = stats
    return {"lower_case": lower_case, "wordpiece_vocab": wordpiece_vocab,
            "word_vocab_sha256": word_vocab_sha256, "splits": splits}


def cuts(stats: dict, config: Config, tokens: str, exact: bool = True) -> dict:
    """What ``config``'s caps cut of a split's ``stats`` (one split of ``summarize``),
    its tokens counted as ``tokens`` ("wordpieces" or "words"; "wordpieces" without
    WordPiece counts falls back to words, a lower bound, as does ``exact=False``):
    {"captions", "tokens": {...}, "phrases": {...} (only where the model reads them)}."""
    if stats[tokens] is None:
        tokens, exact = "words", False
    dist, total = stats[tokens], stats["captions"]
    body = config.data.max_len - FRAME
    out = {"captions": total, "tokens": {
        "counted_in": tokens, "exact": exact, "max_len": config.data.max_len,
        "cut": over(dist, body), "share": _share(over(dist, body), total),
        "longest": dist["percentiles"]["max"],
        f"max_len_for_{COVERAGE}": dist["percentiles"][COVERAGE] + FRAME,
        "max_len_for_all": dist["percentiles"]["max"] + FRAME}}
    if config.model.uses_phrases:
        dist = stats["phrases"]
        cap = config.data.max_phrases
        out["phrases"] = {"max_phrases": cap, "cut": over(dist, cap),
                          "share": _share(over(dist, cap), total),
                          "most": dist["percentiles"]["max"],
                          f"max_phrases_for_{COVERAGE}": dist["percentiles"][COVERAGE],
                          "max_phrases_for_all": dist["percentiles"]["max"]}
    return out


def run_cuts(caption_lengths: dict, config: Config, split: str, vocab_file: str) -> dict:
    """What ``config``'s caps cut of ``split`` (``cuts``), for a run tokenising with
    ``vocab_file``; {} for a split the data does not have."""
    stats = caption_lengths["splits"].get(split)
    if stats is None:
        return {}
    sha = fingerprint(vocab_file)["sha256"] if vocab_file else None
    same_case = config.data.lower_case == caption_lengths["lower_case"]
    counted = caption_lengths["wordpiece_vocab"] or {}
    if same_case and sha is not None and sha == counted.get("sha256"):
        return cuts(stats, config, "wordpieces")
    if same_case and sha is not None and sha == caption_lengths["word_vocab_sha256"]:
        return cuts(stats, config, "words")
    return cuts(stats, config, "words", exact=False)


def describe(cut: dict, split: str) -> list[str]:
    """``cut`` (``cuts``) in plain words: one line per cap, and a WARNING line with the
    ``--set`` that keeps 99.9 % (and all) of the captions whole when a cap cuts more."""
    if not cut:
        return []
    total, tokens = cut["captions"], cut["tokens"]
    unit = UNITS[tokens["counted_in"]]
    body = tokens["max_len"] - FRAME
    if tokens["exact"]:
        lines = [f"{split} captions cut by data.max_len={tokens['max_len']} ({body} {unit} "
                 f"after [CLS] and [SEP]): {tokens['cut']:,} of {total:,} "
                 f"({tokens['share']:.3f} %); the longest has {tokens['longest']}"]
    else:
        lines = [f"{split} captions cut by data.max_len={tokens['max_len']}: at least "
                 f"{tokens['cut']:,} of {total:,} ({tokens['share']:.3f} %), counted in "
                 f"words (a caption has at least as many WordPieces): the manifest's "
                 "WordPiece counts are not for this run's vocabulary; hgan-prep --bert=<this "
                 "run's BERT> (or --vocab_file=<its vocab.txt>) counts them for it"]
    if _too_many(tokens["cut"], total):
        keep, keep_all = tokens[f"max_len_for_{COVERAGE}"], tokens["max_len_for_all"]
        if tokens["exact"]:
            how = how_to_keep("max_len", keep, keep_all)
        else:
            how = (f"keeping {COVERAGE} % of them whole takes --set=data.max_len={keep} or "
                   "more (counted in words; the import's WordPiece counts for this run's "
                   "vocabulary give the exact value)")
        lines.append(
            f"WARNING: data.max_len={tokens['max_len']} cuts "
            f"{'' if tokens['exact'] else 'at least '}{tokens['cut']:,} of the {total:,} "
            f"{split} captions ({tokens['share']:.3f} %, more than {_allowed()} %): {how}")
    phrases = cut.get("phrases")
    if phrases:
        lines.append(f"{split} captions with more noun phrases than data.max_phrases="
                     f"{phrases['max_phrases']} (the last ones are dropped): "
                     f"{phrases['cut']:,} of {total:,} ({phrases['share']:.3f} %); the most "
                     f"is {phrases['most']}")
        if _too_many(phrases["cut"], total):
            lines.append(
                f"WARNING: data.max_phrases={phrases['max_phrases']} drops phrases of "
                f"{phrases['cut']:,} of the {total:,} {split} captions "
                f"({phrases['share']:.3f} %, more than {_allowed()} %): "
                + how_to_keep("max_phrases", phrases[f"max_phrases_for_{COVERAGE}"],
                              phrases["max_phrases_for_all"]))
    return lines


def how_to_keep(field: str, keep: int, keep_all: int) -> str:
    """The ``--set`` of ``data.field`` that keeps COVERAGE % of the captions whole, and the
    one that keeps all of them (one, when they are the same value)."""
    if keep == keep_all:
        return f"--set=data.{field}={keep_all} keeps all of them whole"
    return (f"--set=data.{field}={keep} keeps {COVERAGE} % of them whole, "
            f"--set=data.{field}={keep_all} all of them")


def log_run_cuts(manifest: dict, config: Config, split: str, data_dir: str, log) -> dict:
    """Logs (``describe``) and returns what ``config``'s caps cut of ``split``, from the
    manifest of ``data_dir``: what training and evaluation say once, at their start."""
    if "caption_lengths" not in manifest:
        raise ValueError(f"{data_dir}/manifest.json has no caption_lengths: re-run hgan-prep")
    try:
        vocab = vocab_path(config.model.bert, config.data.vocab_file)
    except (OSError, ValueError):  # no vocab to compare: the task says why when it loads it
        vocab = ""
    cut = run_cuts(manifest["caption_lengths"], config, split, vocab)
    for line in describe(cut, split):
        log(line)
    return cut


def _share(part: int, total: int) -> float:
    return round(100 * part / total, 4) if total else 0.0


def _allowed() -> str:
    """The share of captions a cap may cut without a warning, as text ("0.1")."""
    return f"{100 - float(COVERAGE):.1f}"


def _too_many(cut: int, total: int) -> bool:
    """More than (100 - COVERAGE) % of ``total``, exactly."""
    return total > 0 and fractions.Fraction(cut, total) > 1 - fractions.Fraction(COVERAGE) / 100
