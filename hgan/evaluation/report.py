"""The evaluation report of any family: the JSON, the Markdown table and the Fig. 3 PNG
(``hgan.families.evaluate`` gives it a family's report).

What only one family can show (HGAN's Fig. 4: which words the regions select) comes from
the family's ``ReportExtras`` hook (``hgan.families``), never from probing the model."""
from __future__ import annotations

import json
import os
from typing import Callable, Optional

import numpy as np

from hgan.config import experiments
from hgan.config import Config
from hgan.data import pipeline, records
from hgan.evaluation import figures
from hgan.tf_compat import tf

_COLUMNS = ("R1", "R5", "R10", "mAP", "mINP")


def markdown_table(report: dict) -> str:
    lines = ["| mode | direction | " + " | ".join(_COLUMNS) + " | time (s) |",
             "|---|---|" + "---|" * (len(_COLUMNS) + 1)]
    for mode in ("exact", "stage1", "two_stage", "full_gallery"):
        if mode not in report:
            continue
        for direction in ("t2i", "i2t"):
            m = report[mode][direction]
            lines.append(f"| {mode} | {direction} | " +
                         " | ".join(f"{m[c]:.2f}" for c in _COLUMNS) +
                         f" | {report['timing'][f'{mode}_s']:.1f} |")
    if report.get("levels_exact"):
        lines += ["", "| level alone (exact) | t2i R1 | t2i mAP | i2t R1 | i2t mAP |",
                  "|---|---|---|---|---|"]
        for level, m in report["levels_exact"].items():
            lines.append(f"| {level} | {m['t2i']['R1']:.2f} | {m['t2i']['mAP']:.2f} | "
                         f"{m['i2t']['R1']:.2f} | {m['i2t']['mAP']:.2f} |")
    if "selection" in report:
        sel = report["selection"]
        lines.append(f"\nFig. 4 over the split: {100 * sel['content_share']:.1f}% of the regions' "
                     f"selected words are content words (colours, garments, accessories, "
                     f"hair), {100 * sel['punctuation_share']:.1f}% punctuation; most "
                     f"selected: {', '.join(w for w, _ in sel['most_selected'][:6])}")
    if report.get("stage1_weight_sweep"):
        lines += ["", "| two-stage score (logit + w · cos/τ) | t2i R1 | i2t R1 |", "|---|---|---|"]
        for name, (t2i, i2t) in report["stage1_weight_sweep"].items():
            lines.append(f"| {name} | {t2i:.2f} | {i2t:.2f} |")
    for mode in ("exact", "stage1", "two_stage", "full_gallery"):
        m = report.get(mode, {})
        if "AP@50" in m.get("t2i", {}):
            class_r1 = m["i2t"].get("class_R1")
            lines.append(f"\nCUB/Flowers, {mode}: text-to-image AP@50 = {m['t2i']['AP@50']:.2f}"
                         + ("" if class_r1 is None
                            else f", image-to-text class Rank-1 = {class_r1:.2f}"))
    return "\n".join(lines)


# A family's hook: (model, arrays, queries, figure prefix or None) → (entries to add to the
# report, {figure name: path} of the figures it wrote). ``arrays`` are the exact mode's
# {"t2i", "texts", "images"}; ``queries`` the caption rows the Fig. 3 grid shows.
ReportExtras = Callable[..., tuple]


def write(report: dict, model, config: Config, checkpoint_path: str, data_dir: str,
          split: str, output_json: str, figures: bool = True,
          experiment: Optional[experiments.Experiment] = None,
          extras: Optional[ReportExtras] = None) -> dict:
    """Completes a family's evaluation report and writes it: ``output_json``, the Markdown
    table beside it (.md) and, with ``figures``, the Fig. 3 PNG and the family's
    (``extras``). With an ``experiment``, the paper's figures of that row beside the
    measured ones (``report["experiment"]`` and the Markdown's last table)."""
    arrays = report.pop("_arrays", None)
    prefix = os.path.splitext(output_json)[0]
    extra_figures = {}
    if arrays is not None and extras is not None:
        entries, extra_figures = extras(model, arrays, fig3_queries(arrays),
                                        prefix if figures else None)
        report.update(entries)
    # The JSON's top-level t2i/i2t are HGAN's exact mode (the reference), IATV's two-stage
    # (its final ranking), or the only mode's.
    main_mode = next(m for m in ("exact", "full_gallery", "two_stage", "stage1") if m in report)
    report["t2i"], report["i2t"] = report[main_mode]["t2i"], report[main_mode]["i2t"]
    report.update(checkpoint=checkpoint_path, config=config.to_dict(),
                  data_dir=data_dir)
    report["markdown"] = markdown_table(report)
    if experiment is not None:
        dataset = pipeline.load_manifest(data_dir).get("dataset", "")
        report["experiment"] = {"name": experiment.name, "paper_dataset": experiment.dataset,
                                "dataset": dataset, "mode": experiment.mode,
                                "comparison": experiments.comparison(experiment, report)}
        report["markdown"] += "\n\n" + experiments.comparison_markdown(experiment, report,
                                                                        dataset)
    os.makedirs(os.path.dirname(os.path.abspath(output_json)), exist_ok=True)
    with open(output_json, "w") as f:
        json.dump(report, f, indent=2, default=_jsonable)
    with open(os.path.splitext(output_json)[0] + ".md", "w") as f:
        f.write(report["markdown"] + "\n")
    if figures and arrays is not None:
        report["figures"] = {**write_figures(data_dir, split, arrays, prefix), **extra_figures}
    return report


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _image_bytes(data_dir: str, split: str) -> list[bytes]:
    ds = tf.data.TFRecordDataset(pipeline.split_files(data_dir, split)).map(records.parse_example)
    return [ex["encoded"].numpy() for ex in ds]


def fig3_queries(arrays: dict, queries: int = 4) -> np.ndarray:
    """The caption rows the Fig. 3 grid shows: ``queries`` spread over the split."""
    n = len(arrays["texts"]["label"])
    return np.linspace(0, n - 1, min(queries, n)).astype(int)


def write_figures(data_dir: str, split: str, arrays: dict, prefix: str) -> dict:
    """Fig. 3: the top 10 images of a few captions, the right identity marked."""
    texts, images, t2i = arrays["texts"], arrays["images"], arrays["t2i"]
    encoded = _image_bytes(data_dir, split)
    picks = fig3_queries(arrays)
    ranked = np.argsort(-t2i[picks], axis=1, kind="stable")[:, :10]
    grid = figures.top10_grid(
        [texts["caption"][q].decode() for q in picks], texts["label"][picks],
        [[encoded[g] for g in row] for row in ranked],
        [images["label"][row] for row in ranked])
    out = {"top10": prefix + "_top10.png"}
    grid.save(out["top10"])
    return out
