"""Every table row of both papers as a named experiment: its family, the overrides on top of
a preset, the dataset it was reported on, and the paper's figures.

  hgan-train --experiment=hgan/table3/+word --config=demo --data_dir=... --model_dir=...
  hgan-eval --model_dir=... --data_dir=... --output_json=...   # prints paper vs measured
  hgan-experiments --experiments=hgan/table3/+BERT,hgan/table3/+phrase --seeds=0,1,2 ...

hgan-train writes the experiment's name into the model_dir (``experiment.json``), so
hgan-eval knows which row it measured. docs/experiments.md's table of rows is generated from
here (``table_markdown``; ``tests/test_experiments.py`` keeps the page equal to it).

Figures are as printed: percent, keyed ``{direction: {metric: value}}`` with directions
``t2i`` / ``i2t`` and metrics ``R1`` / ``R5`` / ``R10`` / ``mAP`` / ``AP@50`` /
``class_AP@50`` / ``class_R1`` (the names of hgan-eval's report). CUB / Flowers' AP@50 is
one query per class ("given a query textual class", IATV §4.1; HGAN §4 the same), so those
rows compare ``class_AP@50``; the report's ``AP@50`` is one query per sentence. ``mode``
says which of the report's modes the paper's number corresponds to: HGAN scores every pair
(``exact``); IATV's stage-1 rows are ``stage1``, its stage-2 rows ``two_stage`` (or
``full_gallery`` for "w/o stage-1", which the caption says does not screen with stage 1).

How rows were read where the papers leave it open (each also in docs/design.md):
- HGAN Table 2's "Concat Last Four" (55.2 / 77.3 / 84.9) equals Table 3's "+BERT" row:
  Table 2 is the sentence-level model, so its rows switch the word and phrase levels off.
- HGAN Table 4's row of the default partition (4×4 / 3×2, 58.34) equals Table 3's "+word"
  (58.3) and not the full model (59.0): Table 4 is read as the word-level model.
- HGAN Table 5's "HGAN w Max Gumbel" selects one item (k1 = k2 = 1); "w/o Gumbel" is soft
  attention (Eqs. 3–4). The text's "w/o reward" (57.0) has no row in the table.
- HGAN Fig. 5's values are only plotted; the text gives the best setting (k1 = 4, k2 = 2,
  the full model's 59.0). Its rows sweep the word level's k1 or k2 with the other at its
  best, and hold the phrase level at the full model's k1 = 4, k2 = 2.
- IATV Tables 1 and 2 share their Stage-1 / Stage-2 rows; both names exist.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

from hgan.config.base import Config
from hgan.config.presets import resolve

EXPERIMENT_FILE = "experiment.json"
DIRECTIONS = ("t2i", "i2t")
METRICS = ("R1", "R5", "R10", "mAP", "AP@50", "class_AP@50", "class_R1")
# HGAN's matching levels, each of which evaluation also ranks alone (``levels_exact``).
LEVELS = ("sentence", "word", "phrase")


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    family: str  # "hgan" | "iatv"
    overrides: tuple  # "section.field=value" items on top of the preset, as --set reads them
    dataset: str  # what the paper reported it on: cuhk_pedes | cub | flowers
    paper: dict  # {"t2i": {"R1": ...}, "i2t": {...}}: percent, as printed
    mode: str  # the report mode the paper's figures correspond to
    description: str

    def command(self) -> str:
        """The hgan-train command line of this row (data and model dirs left to the user)."""
        return f"hgan-train --experiment={self.name} --data_dir=... --model_dir=..."


_HGAN_MODES = ("exact",)
_CUHK_METRICS = ("R1", "R5", "R10", "mAP")
_SENTENCE_ONLY = ("model.use_word=false", "model.use_phrase=false")
# Fig. 5 sweeps the word level's k only: the phrase head keeps the full model's k1 / k2.
_PHRASE_AT_BEST = ("model.phrase_k1=4", "model.phrase_k2=2")


def _t2i(*values, metrics=("R1", "R5", "R10")) -> dict:
    return {"t2i": {m: v for m, v in zip(metrics, values) if v is not None}}


def _rows() -> list[Experiment]:
    rows = []

    def add(name, family, overrides, dataset, paper, mode, description):
        rows.append(Experiment(name, family, tuple(overrides), dataset, paper, mode,
                               description))

    # ---- HGAN (Zheng et al., ACM MM 2020) ------------------------------------------------
    add("hgan/table1/hgan", "hgan", [], "cuhk_pedes",
        {"t2i": {"R1": 59.00, "R5": 79.49, "R10": 86.62, "mAP": 37.80},
         "i2t": {"R1": 71.16, "R5": 90.05, "R10": 95.06, "mAP": 36.60}}, "exact",
        "HGAN against the state of the art (Table 1): the full model")
    for key, label, r1, r5, r10 in (("last", "Last Hidden", 53.8, 76.1, 83.2),
                                    ("second_to_last", "Second-to-last Hidden", 54.3, 77.1,
                                     84.3),
                                    ("concat4", "Concat Last Four Hidden", 55.2, 77.3, 84.9)):
        add(f"hgan/table2/{key}", "hgan", [f"model.bert_layers={key}", *_SENTENCE_ONLY],
            "cuhk_pedes", _t2i(r1, r5, r10), "exact",
            f"BERT layers (Table 2): {label}; the sentence-level model (its last row is "
            "Table 3's +BERT)")
    no_bert = ("model.use_bert=false", *_SENTENCE_ONLY)
    table3 = (("L_ide", ["model.weight_pair=0", *no_bert], 43.5, 74.1),
              ("L_pair", ["model.weight_ide=0", *no_bert], 47.1, 79.8),
              ("L_ide+L_pair", list(no_bert), 51.8, 82.5),
              ("+BERT", list(_SENTENCE_ONLY), 55.2, 84.9),
              ("+word", ["model.use_phrase=false"], 58.3, 85.7),
              ("+phrase", [], 59.0, 86.6))
    for key, overrides, r1, r10 in table3:
        add(f"hgan/table3/{key}", "hgan", overrides, "cuhk_pedes",
            _t2i(r1, r10, metrics=("R1", "R10")), "exact",
            f"Components (Table 3): {key}")
    table4 = (((2, 2), (2, 2), 32, 54.29, 76.15, 83.67),
              ((4, 4), (2, 2), 21, 57.41, 78.07, 85.09),
              ((4, 4), (3, 2), 15, 58.34, 79.08, 85.82),
              ((4, 4), (4, 4), 8, 57.24, 78.74, 85.56),
              ((4, 8), (2, 2), 7, 58.03, 78.74, 85.88),
              ((4, 8), (3, 2), 5, 58.14, 79.84, 85.88))
    for pool, stride, regions, r1, r5, r10 in table4:
        p, s = ",".join(map(str, pool)), ",".join(map(str, stride))
        add(f"hgan/table4/k{pool[0]}x{pool[1]}_s{stride[0]}x{stride[1]}", "hgan",
            [f"model.word_pool={p}", f"model.word_stride={s}", "model.use_phrase=false"],
            "cuhk_pedes",
            _t2i(r1, r5, r10), "exact",
            f"Partition (Table 4): kernel {pool[0]}×{pool[1]}, stride {stride[0]}×"
            f"{stride[1]}, {regions} regions; the word-level model (its 4×4 / 3×2 row is "
            "Table 3's +word)")
    add("hgan/table5/w_o_gumbel", "hgan", ["model.attention=soft"], "cuhk_pedes",
        _t2i(56.1, 78.1, 85.5), "exact", "Gumbel module (Table 5): soft attention")
    add("hgan/table5/max_gumbel", "hgan", ["model.k1=1", "model.k2=1"], "cuhk_pedes",
        _t2i(57.6, 78.5, 86.0), "exact", "Gumbel module (Table 5): one item selected")
    add("hgan/table5/hgan", "hgan", [], "cuhk_pedes", _t2i(59.0, 79.5, 86.6), "exact",
        "Gumbel module (Table 5): the full model")
    for k1 in (1, 2, 3, 4, 5, 6):
        add(f"hgan/fig5/k1={k1}", "hgan", [f"model.k1={k1}", "model.k2=2", *_PHRASE_AT_BEST],
            "cuhk_pedes",
            _t2i(59.0) if k1 == 4 else {}, "exact",
            f"Fig. 5: k1 = {k1} words per region, k2 = 2 (values only plotted; k1 = 4 is "
            "the best, the full model)")
    for k2 in (1, 3, 4):
        add(f"hgan/fig5/k2={k2}", "hgan", ["model.k1=4", f"model.k2={k2}", *_PHRASE_AT_BEST],
            "cuhk_pedes", {}, "exact",
            f"Fig. 5: k2 = {k2} regions per word, k1 = 4 (values only plotted)")
    for dataset, i2t, ap50 in (("cub", 68.9, 71.7), ("flowers", 72.4, 75.1)):
        add(f"hgan/table6/{dataset}", "hgan", [], dataset,
            {"t2i": {"class_AP@50": ap50}, "i2t": {"class_R1": i2t}}, "exact",
            f"Generalisation (Table 6): {dataset}; t2i AP@50 over class queries, i2t "
            "Rank-1 over classes")

    # ---- IATV (Li et al., ICCV 2017) -----------------------------------------------------
    stage1, stage2 = _t2i(21.55, None, 54.78), _t2i(25.94, None, 60.48)
    for table in ("table1", "table2"):
        add(f"iatv/{table}/stage1", "iatv", [], "cuhk_pedes", stage1, "stage1",
            "Stage-1 (CNN-LSTM with the CMCE loss), its own ranking")
        add(f"iatv/{table}/stage2", "iatv", [], "cuhk_pedes", stage2, "two_stage",
            "Stage-2 (latent co-attention) re-ranking stage 1's top 20")
    triplet = ["model.stage1_loss=triplet"]
    add("iatv/table2/triplet", "iatv", triplet, "cuhk_pedes", _t2i(14.76, None, 51.29),
        "stage1", "Stage 1 trained with a triplet loss instead of CMCE")
    add("iatv/table2/w_o_sma_spa_stage1", "iatv",
        ["model.semantic_attention=false", "model.spatial_attention=false",
         "model.stage1_init=false"],
        "cuhk_pedes", _t2i(17.19, None, 57.82), "full_gallery",
        "Stage-2 w/o SMA+SPA+stage-1: no stage-1 initialisation, no stage-1 screening "
        "(every gallery item scored)")
    add("iatv/table2/w_o_sma_spa", "iatv",
        ["model.semantic_attention=false", "model.spatial_attention=false"], "cuhk_pedes",
        _t2i(22.11, None, 58.05), "two_stage", "Stage-2 w/o SMA+SPA")
    add("iatv/table2/w_o_sma", "iatv", ["model.semantic_attention=false"], "cuhk_pedes",
        _t2i(23.58, None, 58.68), "two_stage", "Stage-2 w/o SMA")
    add("iatv/table2/w_o_id", "iatv", ["model.identity_labels=false"], "cuhk_pedes",
        _t2i(23.47, None, 54.77), "two_stage", "Stage-2 w/o ID: every image its own identity")
    # §4.2's GoogLeNet (TF-Hub); evaluation re-ranks at least 50
    cub_flowers = ["model.backbone=googlenet"]
    for table, dataset, trip, s1, s2 in (("table3", "cub", (52.5, 52.4), (61.5, 55.5), 57.6),
                                         ("table4", "flowers", (64.3, 64.9), (68.4, 68.0),
                                          70.1)):
        add(f"iatv/{table}/triplet", "iatv", cub_flowers + triplet, dataset,
            {"i2t": {"class_R1": trip[0]}, "t2i": {"class_AP@50": trip[1]}}, "stage1",
            f"{dataset}: stage 1 with a triplet loss")
        add(f"iatv/{table}/stage1", "iatv", cub_flowers, dataset,
            {"i2t": {"class_R1": s1[0]}, "t2i": {"class_AP@50": s1[1]}}, "stage1",
            f"{dataset}: stage 1")
        add(f"iatv/{table}/stage2", "iatv", cub_flowers, dataset,
            {"t2i": {"class_AP@50": s2}}, "two_stage",
            f"{dataset}: stage 2 re-ranking stage 1's top 50 (AP@50 needs at least 50)")
    return rows


EXPERIMENTS = {e.name: e for e in _rows()}


def get(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        close = [n for n in EXPERIMENTS if name.split("/")[-1] in n][:8]
        raise ValueError(f"unknown experiment {name!r}"
                         + (f"; did you mean one of {close}?" if close else "")
                         + " (hgan-experiments --list prints them all)")
    return EXPERIMENTS[name]


def config(name: str, preset: str = "paper", overrides=()) -> Config:
    """The config of experiment ``name``: ``preset`` with the row's family and overrides,
    then ``overrides`` (a user's --set items, which win)."""
    e = get(name)
    return resolve(preset, [*e.overrides, *overrides], family=e.family)


# --- the name beside a run --------------------------------------------------------------
def save_name(model_dir: str, name: str) -> None:
    """Records which experiment a model_dir runs (refuses to relabel a model_dir)."""
    get(name)
    previous = load_name(model_dir)
    if previous not in (None, name):
        raise ValueError(f"{model_dir} runs experiment {previous!r}, not {name!r}")
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, EXPERIMENT_FILE)
    with open(f"{path}.tmp", "w") as f:
        json.dump({"experiment": name}, f)
    os.replace(f"{path}.tmp", path)


def load_name(model_dir: str) -> Optional[str]:
    path = os.path.join(model_dir, EXPERIMENT_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["experiment"]


# --- paper against measured -------------------------------------------------------------
def measured(experiment: Experiment, report: dict) -> dict:
    """{direction: {metric: value}} of ``report`` (hgan-eval's) in the experiment's mode, for
    the metrics the paper gives; a mode or metric the report lacks is left out."""
    section = report.get(experiment.mode, {})
    out = {}
    for direction, metrics in experiment.paper.items():
        values = section.get(direction, {})
        out[direction] = {m: values[m] for m in metrics if m in values}
    return out


def comparison(experiment: Experiment, report: dict) -> list[dict]:
    """One row per paper figure: {"direction", "metric", "paper", "measured", "diff"}."""
    got = measured(experiment, report)
    rows = []
    for direction in DIRECTIONS:
        for metric in METRICS:
            if metric not in experiment.paper.get(direction, {}):
                continue
            paper = experiment.paper[direction][metric]
            value = got.get(direction, {}).get(metric)
            rows.append({"direction": direction, "metric": metric, "paper": paper,
                         "measured": value,
                         "diff": None if value is None else value - paper})
    return rows


def comparison_markdown(experiment: Experiment, report: dict, dataset: str = "") -> str:
    lines = [f"Experiment {experiment.name} ({experiment.description}); paper figures on "
             f"{experiment.dataset}, measured in mode {experiment.mode}"
             + (f" on {dataset}" if dataset else "") + ":", "",
             "| direction | metric | paper | measured | measured − paper |",
             "|---|---|---|---|---|"]
    for r in comparison(experiment, report):
        m = "–" if r["measured"] is None else f"{r['measured']:.2f}"
        d = "–" if r["diff"] is None else f"{r['diff']:+.2f}"
        lines.append(f"| {r['direction']} | {r['metric']} | {r['paper']:.2f} | {m} | {d} |")
    if not experiment.paper:
        lines.append("| – | – | (only plotted in the paper) | | |")
    sentence_ap = report.get(experiment.mode, {}).get("t2i", {}).get("AP@50")
    if "class_AP@50" in experiment.paper.get("t2i", {}) and sentence_ap is not None:
        lines += ["", f"(t2i AP@50 with one query per sentence, not the paper's figure: "
                  f"{sentence_ap:.2f}.)"]
    if dataset and dataset != experiment.dataset:
        lines += ["", f"(The paper's figures are on {experiment.dataset}; this run is on "
                  f"{dataset}: compare directions, not values.)"]
    return "\n".join(lines)


def _figures(paper: dict) -> str:
    parts = []
    for direction in DIRECTIONS:
        for metric in METRICS:
            if metric in paper.get(direction, {}):
                parts.append(f"{direction} {metric} {paper[direction][metric]:g}")
    return ", ".join(parts) or "plotted only"


def table_markdown() -> str:
    """docs/experiments.md's table of every row (generated; a test keeps the page equal)."""
    lines = ["| Experiment (`--experiment=`) | Paper row | Overrides | Data | Paper |",
             "|---|---|---|---|---|"]
    for e in EXPERIMENTS.values():
        overrides = " ".join(f"`{o}`" for o in e.overrides) or "(preset)"
        lines.append(f"| `{e.name}` | {e.description} | {overrides} | {e.dataset} | "
                     f"{_figures(e.paper)} |")
    return "\n".join(lines)
