"""The evaluation report of any family: the JSON, the Markdown table, the Fig. 3 PNG and the
HTML page (``hgan.families.evaluate`` gives it a family's report).

What only one family can show (HGAN's levels and Fig. 4, IATV's two stages and its
stage-1 weight sweep) comes from the family's ``report_extras`` hook (``hgan.families``),
which returns an ``Extras``; this module never probes the model."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Optional

import numpy as np

from hgan.config import experiments
from hgan.config import Config
from hgan.data import pipeline, records
from hgan.evaluation import figures, html_report, metrics
from hgan.tf_compat import tf

_COLUMNS = ("R1", "R5", "R10", "mAP", "mINP")
MODES = ("exact", "stage1", "two_stage", "full_gallery")
# The worst queries whose pictures a family's hook draws (HGAN: two Fig. 4 word maps each).
QUERY_FIGURES = 3


@dataclasses.dataclass
class Extras:
    """What a family adds to its evaluation report; its ``report_extras`` hook returns one.

    entries: added to the JSON report (HGAN: ``selection``, Fig. 4 as numbers);
    markdown: lines of the Markdown table's family part, placed after the modes' table;
    notes: Markdown lines the page shows under the family's name (what ``markdown`` says
      beyond the levels, which the page shows in a table of its own);
    figures: {name: path} of the PNGs the hook wrote beside the report;
    levels: {level: {"t2i": metrics, "i2t": metrics}}, each level of the model ranking the
      gallery alone (HGAN: sentence / word / phrase; IATV: stage 1 / stage 2);
    level_note: how those levels rank, one sentence;
    query_figures: {query row: [(title, PIL image)]}, pictures of the worst queries
      (HGAN: Fig. 4 word maps);
    reads_phrases: the model reads noun phrases, so ``data.max_phrases`` cuts what it sees.
    """

    entries: dict = dataclasses.field(default_factory=dict)
    markdown: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)
    figures: dict = dataclasses.field(default_factory=dict)
    levels: dict = dataclasses.field(default_factory=dict)
    level_note: str = ""
    query_figures: dict = dataclasses.field(default_factory=dict)
    reads_phrases: bool = False


# A family's hook: (model, report, arrays or None, queries, figure prefix or None) → Extras.
# ``report`` is the family's report so far; ``arrays`` {"t2i" (the final text-to-image
# matrix), "texts", "images", "levels" ({level: [Q, G] scores, NaN where the level scored
# no pair})}; ``queries`` {"fig3": the caption rows Fig. 3 shows, "worst": the worst
# queries' rows whose pictures are wanted}; the prefix is where its PNGs go (None: none).
ReportExtras = Callable[..., Extras]


def markdown_table(report: dict, family: tuple = ()) -> str:
    """The modes' table, then the family's lines (``Extras.markdown``), then AP@50 and
    class Rank-1 where the data has them."""
    lines = ["| mode | direction | " + " | ".join(_COLUMNS) + " | time (s) |",
             "|---|---|" + "---|" * (len(_COLUMNS) + 1)]
    for mode in MODES:
        if mode not in report:
            continue
        for direction in ("t2i", "i2t"):
            m = report[mode][direction]
            lines.append(f"| {mode} | {direction} | " +
                         " | ".join(f"{m[c]:.2f}" for c in _COLUMNS) +
                         f" | {report['timing'][f'{mode}_s']:.1f} |")
    lines += list(family)
    for mode in MODES:
        m = report.get(mode, {})
        if "AP@50" in m.get("t2i", {}):
            by_class, class_r1 = m["t2i"].get("class_AP@50"), m["i2t"].get("class_R1")
            lines.append(f"\nCUB/Flowers, {mode}: text-to-image AP@50"
                         + ("" if by_class is None else
                            f" of class queries = {by_class:.2f} (the papers' AP@50),")
                         + f" per sentence = {m['t2i']['AP@50']:.2f}"
                         + ("" if class_r1 is None
                            else f"; image-to-text class Rank-1 = {class_r1:.2f}"))
    return "\n".join(lines)


def write(report: dict, model, config: Config, checkpoint_path: str, data_dir: str,
          split: str, output_json: str, figures: bool = True,
          experiment: Optional[experiments.Experiment] = None,
          extras: Optional[ReportExtras] = None) -> dict:
    """Completes a family's evaluation report and writes it: ``output_json``, the Markdown
    table beside it (.md) and, with ``figures``, the Fig. 3 PNG, the family's PNGs
    (``extras``) and the HTML page (.html, ``report["html"]``). With an ``experiment``, the
    paper's figures of that row beside the measured ones (``report["experiment"]``, the
    Markdown's last table and the page's metrics table)."""
    arrays = report.pop("_arrays", None)
    prefix = os.path.splitext(output_json)[0]
    os.makedirs(os.path.dirname(os.path.abspath(output_json)), exist_ok=True)
    ranks = worst = None
    if arrays is not None:
        ranks = metrics.first_match_rank(arrays["t2i"], arrays["texts"]["label"],
                                         arrays["images"]["label"])
        worst = html_report.worst_queries(ranks)
    family = Extras()
    if extras is not None:
        queries = {"fig3": fig3_queries(arrays) if arrays is not None else [],
                   "worst": worst[:QUERY_FIGURES] if figures and worst is not None else []}
        family = extras(model, report, arrays, queries, prefix if figures else None)
        report.update(family.entries)
    # The JSON's top-level t2i/i2t are HGAN's exact mode (the reference), IATV's two-stage
    # (its final ranking), or the only mode's.
    main_mode = next(m for m in ("exact", "full_gallery", "two_stage", "stage1") if m in report)
    report["t2i"], report["i2t"] = report[main_mode]["t2i"], report[main_mode]["i2t"]
    report.update(checkpoint=checkpoint_path, config=config.to_dict(),
                  data_dir=data_dir)
    report["markdown"] = markdown_table(report, family.markdown)
    dataset = pipeline.load_manifest(data_dir).get("dataset", "")
    if experiment is not None:
        report["experiment"] = {"name": experiment.name, "paper_dataset": experiment.dataset,
                                "dataset": dataset, "mode": experiment.mode,
                                "comparison": experiments.comparison(experiment, report)}
        report["markdown"] += "\n\n" + experiments.comparison_markdown(experiment, report,
                                                                        dataset)
    with open(output_json, "w") as f:
        json.dump(report, f, indent=2, default=_jsonable)
    with open(prefix + ".md", "w") as f:
        f.write(report["markdown"] + "\n")
    if figures and arrays is not None:
        split_records = read_split(data_dir, split, pipeline.make_tokenizer(config))
        report["figures"] = {**write_figures(split_records["encoded"], arrays, prefix),
                             **family.figures}
        page = html_report.page(report, arrays, family, split_records, ranks,
                                main_mode=main_mode, dataset=dataset)
        report["html"] = _write_text(prefix + ".html", page)
    return report


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def read_split(data_dir: str, split: str, tokenizer) -> dict:
    """What the page shows of a split's records: per image (gallery order) ``encoded``
    bytes and ``identity`` (the dataset's own id); per caption (query order) ``captions``,
    ``phrases`` (its noun phrases, all of them) and ``pieces`` (its WordPieces before
    truncation)."""
    out = {"encoded": [], "identity": [], "captions": [], "phrases": []}
    ds = tf.data.TFRecordDataset(pipeline.split_files(data_dir, split)).map(records.parse_example)
    for ex in ds:
        out["encoded"].append(ex["encoded"].numpy())
        out["identity"].append(ex["identity"].numpy().decode("utf-8", "replace"))
        out["captions"].extend(ex["captions"].numpy().tolist())
        out["phrases"].extend(ex["phrase_spans"].row_lengths().numpy().tolist())
    out["pieces"] = tokenizer.lengths(out["captions"])[1]
    return out


def _write_text(path: str, text: str) -> str:
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(f"{path}.tmp", path)
    return path


def fig3_queries(arrays: dict, queries: int = 4) -> np.ndarray:
    """The caption rows the Fig. 3 grid shows: ``queries`` spread over the split."""
    n = len(arrays["texts"]["label"])
    return np.linspace(0, n - 1, min(queries, n)).astype(int)


def write_figures(encoded: list, arrays: dict, prefix: str) -> dict:
    """Fig. 3: the top 10 images of a few captions, the right identity marked (``encoded``:
    the split's image bytes in gallery order)."""
    texts, images, t2i = arrays["texts"], arrays["images"], arrays["t2i"]
    picks = fig3_queries(arrays)
    ranked = np.argsort(-t2i[picks], axis=1, kind="stable")[:, :10]
    grid = figures.top10_grid(
        [texts["caption"][q].decode() for q in picks], texts["label"][picks],
        [[encoded[g] for g in row] for row in ranked],
        [images["label"][row] for row in ranked])
    out = {"top10": prefix + "_top10.png"}
    grid.save(out["top10"])
    return out
