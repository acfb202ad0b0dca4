"""The evaluation's HTML page: built from hand-made arrays (what each section says), then
written by hgan-eval for the trained tiny runs of both families and read in a real browser
(the figures equal the metrics JSON's, the failing queries are the right ones, every image
loads)."""
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from hgan import families
from hgan.config import experiments
from hgan.evaluation import html_report, metrics
from hgan.evaluation.report import Extras

from tests_support import headless_browser


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 24), colour).save(buffer, "PNG")
    return buffer.getvalue()


def _inputs(experiment=None):
    """5 captions × 4 images (one per identity). First right image at ranks 1, 4, 2, 1, 4:
    captions 1 and 4 fail worst (tied, query order), then 2."""
    t2i = np.array([[0.9, 0.1, 0.2, 0.3],
                    [0.1, 0.9, 0.8, 0.7],
                    [0.5, 0.4, 0.1, 0.2],
                    [0.1, 0.2, 0.3, 0.0],
                    [0.9, 0.8, 0.7, 0.6]])
    captions = [b"a man in red.", b"<b>bold</b> & co", b"a woman.", b"a bag.", b"shoes."]
    texts = {"label": np.array([0, 0, 1, 2, 3]), "caption": np.array(captions, object),
             "image_index": np.array([0, 0, 1, 2, 3])}
    images = {"label": np.arange(4), "path": np.array([b"a.png", b"b.png", b"c.png",
                                                       b"d.png"], object)}
    word = t2i * 2
    word[1, 3] = np.nan  # a pair the word level did not score
    arrays = {"t2i": t2i, "texts": texts, "images": images,
              "levels": {"sentence": t2i, "word": word}}
    metrics_of = metrics.both_directions(t2i, t2i.T, texts["label"], images["label"])
    report = {"split": "test", "queries": 5, "gallery": 4, "timing": {"exact_s": 1.5},
              "exact": metrics_of, "checkpoint": "ckpt-7", "data_dir": "DATA",
              "config": {"family": "hgan", "data": {"max_len": 6, "max_phrases": 2}}}
    if experiment:
        e = experiments.get(experiment)
        report["experiment"] = {"name": e.name, "paper_dataset": e.dataset,
                                "dataset": "tiny", "mode": e.mode,
                                "comparison": experiments.comparison(e, report)}
    split = {"encoded": [_png((200, 0, 0)), _png((0, 200, 0)), _png((0, 0, 200)),
                         _png((90, 90, 90))],
             "identity": ["p0", "p1", "p2", "p3"], "captions": captions,
             "phrases": [0, 1, 3, 2, 2],  # max_phrases 2: caption 2 loses one
             "pieces": [3, 5, 4, 7, 1]}  # max_len 6 keeps 4: captions 1 and 3 are cut
    extras = Extras(levels={"sentence": metrics_of}, level_note="levels rank alone",
                    notes=["", "| w | t2i R1 |", "|---|---|", "| w=0 | 50.00 |",
                           "\nFig. 4 over the split: 61.0% content words"],
                    query_figures={1: [("word map <1>", Image.new("RGB", (40, 20)))]},
                    reads_phrases=True)
    ranks = metrics.first_match_rank(t2i, texts["label"], images["label"])
    return report, arrays, extras, split, ranks


def _rows(page, table_id):
    table = re.search(rf"<table id='{table_id}'>(.*?)</table>", page, re.S).group(1)
    return re.findall(r"<tr([^>]*)>(.*?)</tr>", table, re.S)


def test_the_page_says_why_from_the_arrays_it_is_given():
    report, arrays, extras, split, ranks = _inputs()
    assert ranks.tolist() == [1, 4, 2, 1, 4]
    page = html_report.page(report, arrays, extras, split, ranks, "exact", dataset="tiny")
    # The metrics table holds the report's figures.
    row = re.search(r"<tr data-mode='exact' data-direction='t2i'>(.*?)</tr>", page, re.S)
    cells = dict(re.findall(r"data-metric='([^']+)'>([^<]*)<", row.group(1)))
    assert cells["R1"] == f"{report['exact']['t2i']['R1']:.2f}" == "40.00"
    assert cells["mAP"] == f"{report['exact']['t2i']['mAP']:.2f}"
    assert "not a named paper row" in page and "class='paper'" not in page
    # The worst queries: rank 4, 4, then 2, each with its top images (4 here).
    queries = re.findall(r"<div class='query' data-row='(\d+)' data-rank='(\d+)'", page)
    assert queries == [("1", "4"), ("4", "4"), ("2", "2")]
    assert "data-failing='3'" in page
    first = page[page.index("data-row='1' data-rank='4'"):page.index("data-row='4' data-rank")]
    assert re.findall(r"data-rank='(\d)' data-match='(\d)'", first) == [
        ("1", "0"), ("2", "0"), ("3", "0"), ("4", "1")]
    # Each image's level scores; NaN (a pair the level did not score) shows as –.
    assert "sentence 0.900<br>word 1.800" in first and "word –" in first
    assert "word map &lt;1&gt;" in first and first.count("data:image/png;base64,") == 1
    assert first.count("data:image/jpeg;base64,") == 4  # the thumbnails
    # Captions are text, never markup.
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in page and "<b>bold" not in page
    # By caption length: max_len 6 keeps 4 WordPieces; captions 1 (rank 4) and 3 (rank 1)
    # are beyond it. By phrases: caption 2 has 3 > 2.
    length = _rows(page, "by-length")
    assert "beyond-cap" in length[-1][0] and "data-queries='2'" in length[-1][0]
    assert ">50.00<" in length[-1][1] and "max_len=6" in length[-1][1]
    assert sum(int(re.search(r"data-queries='(\d+)'", a).group(1)) for a, _ in length[1:]) == 5
    phrases = _rows(page, "by-phrases")
    assert "data-queries='1'" in phrases[-1][0] and ">0.00<" in phrases[-1][1]
    assert "2 of 5 captions (40.0%) are cut" in page and "1 of 5 captions (20.0%) lose" in page
    # The levels and the family's notes.
    assert _rows(page, "levels")[1][0] == " data-level='sentence'"
    assert "levels rank alone" in page
    assert "<td>w=0</td><td>50.00</td>" in page and "<p>Fig. 4 over the split" in page


def test_a_named_row_puts_the_papers_figures_in_the_table():
    report, arrays, extras, split, ranks = _inputs(experiment="hgan/table1/hgan")
    page = html_report.page(report, arrays, extras, split, ranks, "exact", dataset="tiny")
    paper = re.search(r"<tr class='paper' data-mode='exact' data-direction='i2t'>(.*?)</tr>",
                      page, re.S).group(1)
    assert dict(re.findall(r"data-metric='([^']+)'>([^<]*)<", paper)) == {
        "R1": "71.16", "R5": "90.05", "R10": "95.06", "mAP": "36.60", "mINP": "–"}
    assert "hgan/table1/hgan" in page and "This run is on tiny" in page


def test_class_level_figures_get_their_columns():
    # A CUB row: the paper gives t2i AP@50 of class queries and i2t class Rank-1; the
    # report has them, and AP@50 per sentence beside them, labelled.
    report, arrays, extras, split, ranks = _inputs()
    report["exact"]["t2i"]["AP@50"], report["exact"]["i2t"]["class_R1"] = 55.5, 66.6
    report["exact"]["t2i"]["class_AP@50"] = 60.25
    e = experiments.get("hgan/table6/cub")
    report["experiment"] = {"name": e.name, "paper_dataset": "cub", "dataset": "cub",
                            "mode": "exact", "comparison": experiments.comparison(e, report)}
    page = html_report.page(report, arrays, extras, split, ranks, "exact", dataset="cub")
    header = re.search(r"<table id='metrics'><tr>(.*?)</tr>", page, re.S).group(1)
    assert re.findall(r"<th>([^<]+)</th>", header)[2:] == [
        "R1", "R5", "R10", "mAP", "mINP", "AP@50 per sentence", "AP@50 class queries",
        "class_R1", "time (s)"]
    rows = {(a, d): dict(re.findall(r"data-metric='([^']+)'>([^<]*)<", cells))
            for a, d, cells in re.findall(
                r"<tr (?:class='(\w+)' )?data-mode='exact' data-direction='(\w+)'>(.*?)</tr>",
                page, re.S)}
    assert rows[("", "t2i")]["AP@50"] == "55.50" and rows[("", "i2t")]["AP@50"] == "–"
    assert rows[("", "t2i")]["class_AP@50"] == "60.25"
    assert rows[("paper", "t2i")]["class_AP@50"] == "71.70"
    assert rows[("paper", "t2i")]["AP@50"] == "–"  # the paper's AP@50 is the class queries'
    assert rows[("paper", "i2t")]["class_R1"] == "68.90"
    assert "compare directions" not in page  # the paper's dataset


def test_no_failing_query_and_a_model_without_phrases():
    report, arrays, extras, split, ranks = _inputs()
    extras.reads_phrases = False
    page = html_report.page(report, arrays, extras, split, np.ones(5, int), "exact")
    assert "no failing query to show" in page and "class='query'" not in page
    assert "this model does not read them" in page
    assert "beyond-cap" not in "".join(a for a, _ in _rows(page, "by-phrases"))


def test_captions_that_are_not_the_evaluated_ones_are_refused():
    report, arrays, extras, split, ranks = _inputs()
    split["captions"] = split["captions"][::-1]
    with pytest.raises(ValueError, match="do not hold the evaluated captions"):
        html_report.page(report, arrays, extras, split, ranks, "exact")


def _read_page(browser, path):
    """The page as the browser shows it: tables' cells by their data attributes, the
    failing queries, and whether every image loaded."""
    from selenium.webdriver.common.by import By
    browser.get("file://" + path)
    cells = {}
    for cell in browser.find_elements(By.CSS_SELECTOR, "#metrics td[data-metric]"):
        row = cell.find_element(By.XPATH, "..")
        key = (row.get_attribute("class") or "measured", row.get_attribute("data-mode"),
               row.get_attribute("data-direction"), cell.get_attribute("data-metric"))
        cells[key] = cell.text
    levels = {(row.get_attribute("data-level"), cell.get_attribute("data-direction"),
               cell.get_attribute("data-metric")): cell.text
              for row in browser.find_elements(By.CSS_SELECTOR, "#levels tr[data-level]")
              for cell in row.find_elements(By.CSS_SELECTOR, "td[data-metric]")}
    queries = []
    for div in browser.find_elements(By.CSS_SELECTOR, ".query"):
        thumbs = div.find_elements(By.CSS_SELECTOR, ".thumb")
        queries.append({"rank": int(div.get_attribute("data-rank")),
                        "thumbs": [(int(t.get_attribute("data-rank")),
                                    t.get_attribute("data-match") == "1") for t in thumbs],
                        "maps": len(div.find_elements(By.CSS_SELECTOR, "img.wordmap"))})
    images = browser.find_elements(By.TAG_NAME, "img")
    loaded = [browser.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", img) for img in images]
    failing = browser.find_element(By.ID, "failing")
    length_rows = browser.find_elements(By.CSS_SELECTOR, "#by-length tr[data-queries]")
    family = [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
              for row in browser.find_elements(By.CSS_SELECTOR, "table.family tr")]
    return {"cells": cells, "levels": levels, "queries": queries, "loaded": loaded,
            "family": family,
            "failing": int(failing.get_attribute("data-failing")),
            "by_length": [(r.get_attribute("class"), int(r.get_attribute("data-queries")),
                           r.text) for r in length_rows],
            "text": browser.find_element(By.TAG_NAME, "body").text}


def _check_common(seen, saved):
    """What both families' pages must show: the metrics JSON's figures, the failing
    queries (their count from the JSON's R1, the right image where the rank says), every
    image loaded, and every query in one caption-length bucket."""
    for mode in html_report.MODES:
        for direction in ("t2i", "i2t") if mode in saved else ():
            for metric in ("R1", "R5", "R10", "mAP", "mINP"):
                assert seen["cells"][("measured", mode, direction, metric)] == \
                    f"{saved[mode][direction][metric]:.2f}", (mode, direction, metric)
    matched = saved["queries"] - saved["t2i"]["queries_without_match"]
    failing = round(matched * (100 - saved["t2i"]["R1"]) / 100)
    assert seen["failing"] == failing
    assert len(seen["queries"]) == min(failing, html_report.WORST_QUERIES) > 0
    assert [q["rank"] for q in seen["queries"]] == sorted(
        (q["rank"] for q in seen["queries"]), reverse=True)
    for q in seen["queries"]:
        assert q["rank"] > 1
        hits = [rank for rank, match in q["thumbs"] if match]
        assert min(hits) == q["rank"]  # the first green image sits at the query's rank
        assert len(q["thumbs"]) >= min(10, saved["gallery"])
    assert seen["loaded"] and all(seen["loaded"])
    assert sum(n for _, n, _ in seen["by_length"]) == matched
    assert "beyond-cap" in seen["by_length"][-1][0]
    assert f"max_len={saved['config']['data']['max_len']}" in seen["by_length"][-1][2]


@pytest.mark.slow
def test_hgan_evals_page_in_a_real_browser(hgan_run, tiny_data, tmp_path):
    # hgan_run is not a named row: --experiment names one (Table 1), whose paper figures
    # then stand in the table.
    out = str(tmp_path / "eval" / "metrics.json")
    report = families.evaluate(hgan_run, tiny_data, "test", out, modes=("exact",),
                               experiment="hgan/table1/hgan")
    saved = json.load(open(out))
    assert report["html"] == str(tmp_path / "eval" / "metrics.html")
    browser = headless_browser()
    try:
        seen = _read_page(browser, report["html"])
        shot = str(tmp_path / "report.png")
        browser.save_screenshot(shot)
        print(f"screenshot: {shot}")
    finally:
        browser.quit()
    _check_common(seen, saved)
    paper = experiments.get("hgan/table1/hgan").paper
    for direction, figures in paper.items():
        for metric, value in figures.items():
            assert seen["cells"][("paper", "exact", direction, metric)] == f"{value:.2f}"
    for level, m in saved["levels_exact"].items():
        for direction in ("t2i", "i2t"):
            assert seen["levels"][(level, direction, "R1")] == f"{m[direction]['R1']:.2f}"
    assert {level for level, _, _ in seen["levels"]} == {"sentence", "word", "phrase"}
    # Fig. 4 of the worst queries: their own image and the one ranked first.
    assert [q["maps"] for q in seen["queries"]] == [2] * min(3, len(seen["queries"]))
    assert "Fig. 4 over the split" in seen["text"]
    assert "dropped by max_phrases" in seen["text"]  # HGAN reads phrases: the cap is marked


@pytest.mark.slow
def test_iatv_evals_page_in_a_real_browser(iatv_run, tiny_data, tmp_path):
    # No named row: the page says so. Stage 2 alone at this preset's stage-1 weight (0) is
    # the two-stage ranking itself; the weight sweep stands under IATV's notes.
    out = str(tmp_path / "metrics.json")
    report = families.evaluate(iatv_run[0], tiny_data, "test", out, stage1_weights=(0, 1))
    saved = json.load(open(out))
    browser = headless_browser()
    try:
        seen = _read_page(browser, report["html"])
    finally:
        browser.quit()
    _check_common(seen, saved)
    assert not any(kind == "paper" for kind, *_ in seen["cells"])
    assert "not a named paper row" in seen["text"]
    for level, mode in (("stage 1", "stage1"), ("stage 2", "two_stage")):
        for direction in ("t2i", "i2t"):
            assert seen["levels"][(level, direction, "R1")] == \
                f"{saved[mode][direction]['R1']:.2f}"
    assert all(q["maps"] == 0 for q in seen["queries"])
    t2i, i2t = saved["stage1_weight_sweep"]["w=1"]
    assert ["w=1", f"{t2i:.2f}", f"{i2t:.2f}"] in seen["family"]
    assert "does not read them" in seen["text"]
