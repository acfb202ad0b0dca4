"""``hgan.config.experiments``: every paper row by name, its figures, the table in
docs/experiments.md, and hgan-experiments (rows × seeds)."""
import collections
import csv
import json
import os

import numpy as np
import pytest

from hgan import families
from hgan.config import experiments
from hgan.config import PRESET_NAMES, resolve
from hgan.training import run_dir
from tests_support import ROOT

PAGE = os.path.join(ROOT, "docs", "experiments.md")
BEGIN, END = "<!-- experiments:begin -->", "<!-- experiments:end -->"


def test_every_row_of_both_papers_is_there():
    tables = collections.Counter(name.rsplit("/", 1)[0] for name in experiments.EXPERIMENTS)
    assert tables == {"hgan/table1": 1, "hgan/table2": 3, "hgan/table3": 6, "hgan/table4": 6,
                      "hgan/table5": 3, "hgan/fig5": 9, "hgan/table6": 2,
                      "iatv/table1": 2, "iatv/table2": 7, "iatv/table3": 3, "iatv/table4": 3}


@pytest.mark.parametrize("name", sorted(experiments.EXPERIMENTS))
def test_each_row_resolves_on_every_preset(name):
    e = experiments.get(name)
    for preset in PRESET_NAMES:
        config = experiments.config(name, preset)
        assert config.family == e.family
        for item in e.overrides:  # each of the row's overrides took effect
            field = item.split("=", 1)[0]
            alone = resolve(preset, [item], family=e.family)
            assert config.get(field) == alone.get(field), (name, item)
    for direction, metrics in e.paper.items():
        assert direction in experiments.DIRECTIONS and set(metrics) <= set(experiments.METRICS)
    assert e.mode in (("exact",) if e.family == "hgan" else ("stage1", "two_stage",
                                                             "full_gallery"))


def test_rows_read_as_the_papers_numbers_say():
    get = experiments.get
    # Table 2's last row is Table 3's +BERT: the sentence-level model.
    assert get("hgan/table2/concat4").paper == get("hgan/table3/+BERT").paper | {
        "t2i": {"R1": 55.2, "R5": 77.3, "R10": 84.9}}
    assert get("hgan/table3/+BERT").paper["t2i"] == {"R1": 55.2, "R10": 84.9}
    for key in ("last", "second_to_last", "concat4"):
        config = experiments.config(f"hgan/table2/{key}")
        assert not config.model.use_word and not config.model.use_phrase
        assert config.model.bert_layers == key
    # Table 4's default partition is Table 3's +word (58.34 against 58.3): word level.
    assert get("hgan/table4/k4x4_s3x2").paper["t2i"]["R1"] == 58.34
    assert not experiments.config("hgan/table4/k4x4_s3x2").model.use_phrase
    # IATV's Triplet trains stage 1 with the triplet loss; w/o stage-1 drops the init.
    assert experiments.config("iatv/table2/triplet").model.stage1_loss == "triplet"
    assert not experiments.config("iatv/table2/w_o_sma_spa_stage1").model.stage1_init
    assert get("iatv/table2/w_o_sma_spa_stage1").mode == "full_gallery"
    # Each IATV stage-2 row selects its checkpoint on the ranking it reports ("w/o
    # stage-1": every val pair scored by stage 2, not the two-stage figure).
    from hgan.evaluation import iatv_scoring
    for name, e in experiments.EXPERIMENTS.items():
        if e.family == "iatv" and e.mode != "stage1":
            assert iatv_scoring.reported_mode(experiments.config(name)) == e.mode, name
    # CUB / Flowers' AP@50 is one query per class (IATV §4.1, HGAN §4): those rows compare
    # class_AP@50 (the report's AP@50 is one query per sentence).
    assert get("iatv/table3/stage2").paper == {"t2i": {"class_AP@50": 57.6}}
    for name in ("hgan/table6/cub", "hgan/table6/flowers", "iatv/table3/triplet",
                 "iatv/table3/stage1", "iatv/table4/triplet", "iatv/table4/stage1",
                 "iatv/table4/stage2"):
        assert "class_AP@50" in get(name).paper["t2i"] and \
            "AP@50" not in get(name).paper["t2i"], name
    assert get("hgan/table6/flowers").paper == {"t2i": {"class_AP@50": 75.1},
                                                "i2t": {"class_R1": 72.4}}
    # A user's --set items come after the row's.
    assert experiments.config("hgan/table3/+word", "demo", ["use_phrase=true"]).model.use_phrase
    # Fig. 5 sweeps the word level's k only: the phrase head stays at the full model's
    # k1 = 4, k2 = 2 in every row, on every preset, while the word level moves.
    full = experiments.config("hgan/table1/hgan").model
    fig5 = [n for n in experiments.EXPERIMENTS if n.startswith("hgan/fig5/")]
    for preset in PRESET_NAMES:
        for name in fig5:
            model = experiments.config(name, preset).model
            assert (model.phrase_k1, model.phrase_k2) == (full.k1, full.k2) == (4, 2), name
            key, value = name.rsplit("/", 1)[1].split("=")
            assert getattr(model, key) == int(value), name
    assert {experiments.config(n).model.k1 for n in fig5} == {1, 2, 3, 4, 5, 6}


def test_unknown_names_say_where_the_names_are():
    with pytest.raises(ValueError, match="unknown experiment.*table3/\\+word"):
        experiments.get("hgan/table9/+word")


def test_the_docs_table_is_generated_from_the_registry():
    text = open(PAGE, encoding="utf-8").read()
    assert BEGIN in text and END in text, "docs/experiments.md lost the experiments markers"
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == experiments.table_markdown(), (
        "docs/experiments.md's table differs from hgan.config.experiments; regenerate it with "
        "python -c 'from hgan.config import experiments; print(experiments.table_markdown())'")
    for name in experiments.EXPERIMENTS:
        assert f"`{name}`" in table


def test_comparison_puts_the_paper_beside_the_measured_row():
    e = experiments.get("hgan/table3/+word")
    report = {"exact": {"t2i": {"R1": 60.0, "R10": 80.5, "mAP": 1.0}, "i2t": {"R1": 9.0}}}
    rows = experiments.comparison(e, report)
    assert rows == [
        {"direction": "t2i", "metric": "R1", "paper": 58.3, "measured": 60.0,
         "diff": pytest.approx(1.7)},
        {"direction": "t2i", "metric": "R10", "paper": 85.7, "measured": 80.5,
         "diff": pytest.approx(-5.2)}]
    # A mode the report lacks leaves the measured cells empty, never made up.
    iatv = experiments.get("iatv/table2/stage2")
    assert [r["measured"] for r in experiments.comparison(iatv, report)] == [None, None]
    text = experiments.comparison_markdown(e, report, dataset="demo")
    assert "| t2i | R1 | 58.30 | 60.00 | +1.70 |" in text and "this run is on demo" in text
    # A class-level row compares the class queries' AP@50 and labels the per-sentence one.
    cub = experiments.get("hgan/table6/cub")
    report = {"exact": {"t2i": {"AP@50": 40.0, "class_AP@50": 70.0, "R1": 9.0},
                        "i2t": {"class_R1": 60.0}}}
    assert [(r["metric"], r["measured"]) for r in experiments.comparison(cub, report)] == [
        ("class_AP@50", 70.0), ("class_R1", 60.0)]
    text = experiments.comparison_markdown(cub, report, dataset="cub")
    assert "| t2i | class_AP@50 | 71.70 | 70.00 | -1.70 |" in text
    assert "one query per sentence, not the paper's figure: 40.00" in text


def test_a_model_dir_keeps_its_experiment(tmp_path):
    d = str(tmp_path)
    assert experiments.load_name(d) is None
    experiments.save_name(d, "iatv/table2/triplet")
    experiments.save_name(d, "iatv/table2/triplet")  # the same again: a resume
    assert experiments.load_name(d) == "iatv/table2/triplet"
    with pytest.raises(ValueError, match="runs experiment 'iatv/table2/triplet'"):
        experiments.save_name(d, "iatv/table2/stage2")
    with pytest.raises(ValueError, match="unknown experiment"):
        experiments.save_name(str(tmp_path / "other"), "nope")


# --- the rows that were missing or wrong, run by name at a tiny size -----------------------
_TINY_IATV = ["image_height=32", "image_width=16", "backbone=small_cnn", "fc_units=16",
              "embed_dim=16", "word_dim=8", "lstm_units=8", "attention_dim=8",
              "importance_hidden=8", "fc_hidden=8", "decoder_steps=2", "candidates=3",
              "batch_size=4", "stage1_steps=2", "stage2_text_steps=1", "stage2_joint_steps=1",
              "checkpoint_every=2", "eval_every=0"]
_TINY_HGAN = ["bert=scratch:2x16", "batch_size=4", "identities_per_batch=2", "max_steps=2",
              "checkpoint_every=2", "eval_every=0"]


@pytest.fixture(scope="module")
def tiny_cub(tmp_path_factory):
    """A CUB import (Reed et al.'s layout through data_prep's writer): class-level data."""
    from data_prep import writer
    from tests_support import make_reed
    root = tmp_path_factory.mktemp("cub")
    names = [f"{i:03d}.{w}_Bird" for i, w in enumerate(
        ["Red", "Blue", "Green", "Black", "White", "Yellow", "Shirt", "Jacket"], 1)]
    make_reed(root / "raw", {n: 3 for n in names}, split_files={
        "trainvalclasses.txt": names[:6], "valclasses.txt": names[4:6],
        "testclasses.txt": names[6:]},
        colours={n: (30 * i, 220 - 25 * i, 60 + 15 * i) for i, n in enumerate(names)})
    writer.write_dataset("cub", str(root / "raw"), str(root / "tfr"))
    return str(root / "tfr")


# One trained row per family (the other rows are checked as configs above); the IATV one is
# the row with the most of its own: no stage-1 init, and the full-gallery mode it reports.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["hgan/table2/last", "iatv/table2/w_o_sma_spa_stage1"])
def test_a_row_runs_by_name_and_eval_prints_the_paper_beside_it(name, tiny_data, tiny_vocab,
                                                                 request, tmp_path):
    e = experiments.get(name)
    if e.dataset == "cub":  # the CUB row on a CUB import: AP@50 over a re-rank of >= 50
        tiny_data = request.getfixturevalue("tiny_cub")
    extra = (_TINY_HGAN if e.family == "hgan" else _TINY_IATV) + [f"vocab_file={tiny_vocab}"]
    stage1_only = e.mode == "stage1"  # stop after stage 1: the row reads stage 1 only
    extra += ["max_steps=2"] if stage1_only else []
    config = experiments.config(name, "tiny", extra)
    model_dir = str(tmp_path / "run")
    run_dir.reconcile_config(config, model_dir)
    experiments.save_name(model_dir, name)
    lines = []
    families.train(config, tiny_data, model_dir, val_split="none", log=lines.append)
    if name == "iatv/table2/triplet":
        assert any(ln.startswith("step 1/") and "triplet=" in ln for ln in lines), lines
    if name == "iatv/table2/w_o_sma_spa_stage1":  # stage 2 neither copied nor mined
        assert any("w/o stage-1" in ln for ln in lines), lines
        assert any("drawn at random" in ln for ln in lines), lines
        assert not any("initialised from stage 1" in ln for ln in lines), lines
        from hgan.modeling.iatv.model import load_model
        from test_iatv_train import _weights
        s1_cnn, s2_cnn, _, _ = _weights(load_model(model_dir, "latest")[0])
        assert max(np.abs(a - b).max() for a, b in zip(s1_cnn, s2_cnn)) > 0
    out = str(tmp_path / "test.json")
    report = families.evaluate(model_dir, tiny_data, "test", out, checkpoint="latest",
                               figures=False,
                               modes=("exact",) if stage1_only else ("exact", "two_stage"))
    saved = json.load(open(out))
    assert saved["experiment"]["name"] == name and saved["experiment"]["mode"] == e.mode
    cells = saved["experiment"]["comparison"]
    assert cells and all(c["measured"] is not None for c in cells)
    assert cells[0]["measured"] == report[e.mode][cells[0]["direction"]][cells[0]["metric"]]
    assert f"Experiment {name}" in report["markdown"]
    if e.mode == "full_gallery":  # no stage-1 screening: the top level is every pair scored
        assert saved["t2i"] == saved["full_gallery"]["t2i"]
    if e.dataset == "cub":
        assert cells[0]["metric"] == "class_AP@50" and saved["candidates"] >= 50
        assert "backbone=googlenet" in e.overrides  # §4.2's (small_cnn stands in offline)


def test_the_seeds_table_is_mean_and_std_per_row_with_the_rule_under_it(tmp_path):
    # hgan-experiments on runs already evaluated (--report_only): two seeds of one row, one
    # of another; the table has mean ± std, the seeds, the paper's figure, and says how
    # checkpoints were chosen; --levels adds each level's R1 ranked alone.
    from tests_support import run_cli
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"dataset": "demo"}))
    out = tmp_path / "out"
    runs = {("hgan_table3_plus_word", "0"): 50.0, ("hgan_table3_plus_word", "1"): 60.0,
            ("iatv_table2_stage2", "0"): 30.0}
    for (row, seed), r1 in runs.items():
        d = out / row / f"seed{seed}"
        d.mkdir(parents=True)
        mode = "exact" if row.startswith("hgan") else "two_stage"
        levels = {"levels_exact": {level: {"t2i": {"R1": r1 - k}} for k, level in
                                   enumerate(("sentence", "word", "phrase"), 1)}}
        (d / "test.json").write_text(json.dumps(
            {mode: {"t2i": {"R1": r1, "R5": r1 + 10, "R10": r1 + 20, "mAP": r1 - 5},
                    "i2t": {"R1": r1 - 10, "mAP": r1 - 15}},
             **(levels if mode == "exact" else {})}))
        (d / "best.json").write_text(json.dumps({"selected_by": "t2i_R1", "step": 9}))
    text = run_cli("-m", "hgan.cli.experiments", "--experiments=hgan/table3/+word,"
                   "iatv/table2/stage2,hgan/table3/+BERT", "--seeds=0,1", f"--data_dir={data}",
                   f"--out_dir={out}", "--report_only", "--levels")
    table = (out / "table.md").read_text()
    assert table.strip() == text.strip()
    assert "| `hgan/table3/+word` | exact | 0,1 | 55.0 ± 5.0 | 65.0 ± 5.0 | 75.0 ± 5.0 |" \
        in table and "| t2i R1 58.3 |" in table
    # --levels: sentence / word / phrase R1 ranked alone, after the fused columns.
    assert "| sentence t2i R1 | word t2i R1 | phrase t2i R1 | paper |" in table
    assert "| 54.0 ± 5.0 | 53.0 ± 5.0 | 52.0 ± 5.0 | t2i R1 58.3 |" in table
    assert "| `iatv/table2/stage2` | two_stage | 0 | 30.0 ± 0.0 |" in table
    assert "| `hgan/table3/+BERT` | exact | – |" in table  # not run: said, not invented
    assert "by t2i_R1 (best.json)" in table and "seeds 0,1" in table
    rows = list(csv.reader(open(out / "table.csv")))
    assert rows[0][:5] == ["experiment", "mode", "seeds", "t2i_R1_mean", "t2i_R1_std"]
    assert rows[1][:5] == ["hgan/table3/+word", "exact", "0 1", "55.0000", "5.0000"]
