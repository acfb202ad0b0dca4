"""The evaluation's HTML page: one self-contained file beside the metrics JSON (images
inlined as data URIs, no script, no build step) that shows why a figure is what it is.

* the metrics of every mode, with the paper's figures of the run's named row beside them;
* each level of the model ranking alone (from the family's hook);
* text-to-image R1 by caption length in WordPieces and by number of noun phrases, with the
  buckets that ``data.max_len`` truncates and ``data.max_phrases`` cuts marked;
* the queries that fail worst (the right identity furthest down), each with its top 10
  images, the right identity marked, every level's score of each, and the family's
  pictures of it (HGAN: Fig. 4 word maps);
* the family's notes (HGAN: Fig. 4 as numbers; IATV: the stage-1 weight sweep).

``page`` builds it from what evaluation computed (``hgan.evaluation.report.write`` calls
it); nothing is scored again here."""
from __future__ import annotations

import base64
import html
import io

import numpy as np
from PIL import Image

from hgan.evaluation import breakdown

WORST_QUERIES = 8
TOP = 10
THUMB_HEIGHT = 64
MODES = ("exact", "stage1", "two_stage", "full_gallery")
COLUMNS = ("R1", "R5", "R10", "mAP", "mINP", "AP@50", "class_AP@50", "class_R1")
# CUB / Flowers: the papers' AP@50 is the class queries' (``class_AP@50``); ``AP@50`` is one
# query per sentence.
HEADINGS = {"AP@50": "AP@50 per sentence", "class_AP@50": "AP@50 class queries"}

_STYLE = """
body { font: 14px/1.4 sans-serif; margin: 24px auto; max-width: 1180px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child, td.label { text-align: left; }
tr.paper td { background: #eef3fb; font-style: italic; }
tr.beyond-cap td { background: #fdecea; }
.bar { background: #4a7bd0; height: 10px; min-width: 1px; }
.meta, .note { color: #555; }
.query { border-top: 1px solid #ddd; padding: 10px 0; }
.caption { font-size: 15px; margin: 4px 0; }
.strip { display: flex; flex-wrap: wrap; gap: 6px; align-items: flex-start; }
.thumb { margin: 0; width: 96px; font-size: 11px; text-align: center; }
.thumb img { height: %dpx; border: 3px solid #d22; }
.thumb.match img { border-color: #2a2; }
.thumb.right { margin-left: 18px; }
.maps { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 8px; }
.maps img { max-width: 560px; border: 1px solid #ccc; }
figcaption { color: #444; }
""" % THUMB_HEIGHT


def worst_queries(ranks, count: int = WORST_QUERIES) -> np.ndarray:
    """Rows of the queries that fail worst: those whose first right image is not first,
    furthest down first (ties in query order), at most ``count``."""
    ranks = np.asarray(ranks)
    failing = np.flatnonzero(ranks > 1)
    return failing[np.argsort(-ranks[failing], kind="stable")][:count]


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _number(value, digits: int = 2) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def data_uri(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    kind = "jpeg" if fmt == "JPEG" else fmt.lower()
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnail(encoded: bytes, height: int = THUMB_HEIGHT) -> str:
    """A JPEG data URI of an encoded image, ``height`` pixels high."""
    image = Image.open(io.BytesIO(encoded)).convert("RGB")
    width = max(1, round(image.width * height / image.height))
    return data_uri(image.resize((width, height), Image.BILINEAR), "JPEG")


def _metrics(report: dict) -> str:
    """Every mode's metrics both ways; under the experiment's mode, the paper's figures."""
    experiment = report.get("experiment") or {}
    paper = {}
    for row in experiment.get("comparison", []):
        paper.setdefault(row["direction"], {})[row["metric"]] = row["paper"]
    modes = [m for m in MODES if m in report]
    present = {c for m in modes for d in ("t2i", "i2t") for c in report[m][d]}
    present |= {c for figures in paper.values() for c in figures}
    columns = [c for c in COLUMNS if c in present]
    rows = ["<table id='metrics'><tr><th>mode</th><th>direction</th>" +
            "".join(f"<th>{_e(HEADINGS.get(c, c))}</th>" for c in columns) +
            "<th>time (s)</th></tr>"]
    for mode in modes:
        seconds = report.get("timing", {}).get(f"{mode}_s")
        for direction in ("t2i", "i2t"):
            values = report[mode][direction]
            rows.append(f"<tr data-mode='{mode}' data-direction='{direction}'>"
                        f"<td>{mode}</td><td class='label'>{direction}</td>" +
                        "".join(f"<td data-metric='{_e(c)}'>{_number(values.get(c))}</td>"
                                for c in columns) + f"<td>{_number(seconds, 1)}</td></tr>")
            if mode == experiment.get("mode") and direction in paper:
                rows.append(f"<tr class='paper' data-mode='{mode}' data-direction="
                            f"'{direction}'><td>paper</td><td class='label'>{direction}</td>" +
                            "".join(f"<td data-metric='{_e(c)}'>"
                                    f"{_number(paper[direction].get(c))}</td>"
                                    for c in columns) + "<td></td></tr>")
    rows.append("</table>")
    if experiment:
        note = (f"Experiment <b>{_e(experiment['name'])}</b>: the rows marked paper hold the "
                f"paper's figures ({_e(experiment['paper_dataset'])}), beside mode "
                f"{_e(experiment['mode'])}.")
        if not paper:
            note = (f"Experiment <b>{_e(experiment['name'])}</b>: the paper only plots this "
                    "row, so there is no figure to put beside it.")
        elif experiment.get("dataset") and experiment["dataset"] != experiment["paper_dataset"]:
            note += (f" This run is on {_e(experiment['dataset'])}: compare directions, "
                     "not values.")
    else:
        note = ("This run is not a named paper row, so no paper figure stands beside it: "
                "<code>hgan-train --experiment=NAME</code> records the row a run reproduces "
                "and <code>hgan-eval --experiment=NAME</code> compares with one "
                "(<code>hgan-experiments --list</code> names them all).")
    rows.append(f"<p id='experiment' class='note'>{note}</p>")
    return "\n".join(rows)


def _levels(extras) -> str:
    if not extras.levels:
        return ("<p id='levels' class='note'>No level was ranked alone in this evaluation "
                "(HGAN ranks its levels in the exact mode).</p>")
    rows = ["<table id='levels'><tr><th>level</th><th>t2i R1</th><th>t2i mAP</th>"
            "<th>i2t R1</th><th>i2t mAP</th></tr>"]
    for level, m in extras.levels.items():
        rows.append(f"<tr data-level='{_e(level)}'><td>{_e(level)}</td>" +
                    "".join(f"<td data-direction='{d}' data-metric='{c}'>"
                            f"{_number(m[d][c])}</td>"
                            for d in ("t2i", "i2t") for c in ("R1", "mAP")) + "</tr>")
    rows.append("</table>")
    if extras.level_note:
        rows.append(f"<p class='note'>{_e(extras.level_note)}</p>")
    return "\n".join(rows)


def _bucket_table(table_id: str, title: str, buckets: list, beyond: str) -> str:
    rows = [f"<table id='{table_id}'><tr><th>{_e(title)}</th><th>captions</th>"
            "<th>t2i R1</th><th></th></tr>"]
    for b in buckets:
        label = _e(b.label) + (f" ({_e(beyond)})" if b.beyond_cap and beyond else "")
        rows.append(f"<tr class='{'beyond-cap' if b.beyond_cap and beyond else 'bucket'}' "
                    f"data-queries='{b.queries}'><td>{label}</td><td>{b.queries}</td>"
                    f"<td>{_number(b.r1)}</td><td style='width:220px'>" +
                    ("" if b.r1 is None else
                     f"<div class='bar' style='width:{b.r1:.1f}%'></div>") + "</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _by_caption(ranks, split: dict, data: dict, reads_phrases: bool) -> str:
    pieces_cap = int(data["max_len"]) - 2  # [CLS] and [SEP] take two of max_len
    phrase_cap = int(data["max_phrases"])
    pieces, phrases = np.asarray(split["pieces"]), np.asarray(split["phrases"])
    matched = np.asarray(ranks) > 0
    cut = int((matched & (pieces > pieces_cap)).sum())
    dropped = int((matched & (phrases > phrase_cap)).sum())
    total = max(int(matched.sum()), 1)
    out = [f"<p class='note'>Length in WordPieces before truncation; <code>max_len="
           f"{data['max_len']}</code> keeps {pieces_cap} of them besides [CLS] and [SEP]: "
           f"{cut} of {total} captions ({100 * cut / total:.1f}%) are cut.</p>",
           _bucket_table("by-length", "WordPieces",
                         breakdown.r1_by_value(ranks, pieces, pieces_cap,
                                               breakdown.length_width(pieces_cap)),
                         f"cut by max_len={data['max_len']}")]
    if reads_phrases:
        out.append(f"<p class='note'>Noun phrases per caption, all of them; <code>"
                   f"max_phrases={phrase_cap}</code> keeps the first {phrase_cap}: {dropped} "
                   f"of {total} captions ({100 * dropped / total:.1f}%) lose some.</p>")
    else:
        out.append("<p class='note'>Noun phrases per caption: this model does not read "
                   "them, so no cap applies; the buckets show how R1 follows the captions' "
                   "detail.</p>")
    out.append(_bucket_table("by-phrases", "noun phrases",
                             breakdown.r1_by_value(ranks, phrases, phrase_cap),
                             f"beyond the first {phrase_cap}, dropped by max_phrases"
                             if reads_phrases else ""))
    return "\n".join(out)


def _scores(levels: dict, q: int, g: int) -> str:
    return "<br>".join(f"{_e(name)} {_number(float(m[q, g]), 3)}"
                       for name, m in levels.items())


def _queries(arrays: dict, ranks, split: dict, extras, main_mode: str) -> str:
    texts, images, t2i = arrays["texts"], arrays["images"], arrays["t2i"]
    levels = arrays.get("levels", {})
    ranks = np.asarray(ranks)
    matched, failing = int((ranks > 0).sum()), int((ranks > 1).sum())
    worst = worst_queries(ranks)
    out = [f"<p id='failing' class='note' data-failing='{failing}' data-shown='{len(worst)}'>"
           f"{failing} of {matched} captions do not find their identity first (mode "
           f"{_e(main_mode)}, text to image)" +
           (f"; the {len(worst)} worst, by the rank of the first image of the right "
            "identity (green: the right identity, red: another one; under each image, "
            "each level's score, – where that level did not score the pair):" if len(worst)
            else ": no failing query to show.") + "</p>"]
    thumbs = {}

    def thumb(g):
        if g not in thumbs:
            thumbs[g] = thumbnail(split["encoded"][g])
        return thumbs[g]

    def figure(q, g, position, css):
        match = images["label"][g] == texts["label"][q]
        return (f"<figure class='thumb {'match' if match else 'miss'}{css}' data-row='{g}' "
                f"data-rank='{position}' data-match='{int(match)}'><img src='{thumb(g)}' "
                f"alt='{_e(split['identity'][g])}'><figcaption>#{position} · id "
                f"{_e(split['identity'][g])}<br>{_scores(levels, q, g)}</figcaption></figure>")

    for q in worst:
        q = int(q)
        order = np.argsort(-t2i[q], kind="stable")
        rank = int(ranks[q])
        own = int(texts["image_index"][q])
        strip = [figure(q, int(g), i + 1, "") for i, g in enumerate(order[:TOP])]
        if rank > TOP:
            strip.append(figure(q, int(order[rank - 1]), rank, " right"))
        maps = "".join(f"<figure><img class='wordmap' src='{data_uri(image)}' "
                       f"alt='{_e(title)}'><figcaption>{_e(title)}</figcaption></figure>"
                       for title, image in extras.query_figures.get(q, []))
        out.append(
            f"<div class='query' data-row='{q}' data-rank='{rank}' "
            f"data-label='{int(texts['label'][q])}'>"
            f"<p class='caption'>“{_e(texts['caption'][q].decode('utf-8', 'replace'))}”</p>"
            f"<p class='meta'>identity {_e(split['identity'][own])} · caption {q} · "
            f"{split['pieces'][q]} WordPieces, {split['phrases'][q]} noun phrases · first "
            f"right image at rank <b>{rank}</b> of {len(images['label'])}</p>"
            f"<div class='strip'>{''.join(strip)}</div>"
            + (f"<div class='maps'>{maps}</div>" if maps else "") + "</div>")
    return "\n".join(out)


def markdown_html(lines) -> str:
    """The family's Markdown lines (``Extras.markdown``) as HTML: tables and paragraphs."""
    out, table = [], []

    def flush():
        if table:
            cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in table]
            body = [r for r in cells[1:] if not all(set(c) <= set("-: ") for c in r)]
            out.append("<table class='family'><tr>" +
                       "".join(f"<th>{_e(c)}</th>" for c in cells[0]) + "</tr>" +
                       "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>"
                               for r in body) + "</table>")
            table.clear()

    for line in "\n".join(lines).split("\n"):
        if line.strip().startswith("|"):
            table.append(line)
            continue
        flush()
        if line.strip():
            out.append(f"<p>{_e(line.strip())}</p>")
    flush()
    return "\n".join(out)


def page(report: dict, arrays: dict, extras, split: dict, ranks, main_mode: str,
         dataset: str = "") -> str:
    """The page of one evaluation.

    Args:
      report: the written report (``hgan.evaluation.report.write``: modes, ``config``,
        ``experiment``, ...).
      arrays: {"t2i" [Q, G] (the final ranking), "texts", "images", "levels" ({level:
        [Q, G] scores, NaN where unscored})}.
      extras: the family's ``hgan.evaluation.report.Extras``.
      split: ``hgan.evaluation.report.read_split`` of the evaluated split.
      ranks: [Q] first-match ranks of ``arrays["t2i"]``.
      main_mode: the mode whose ranking ``arrays["t2i"]`` is.
    """
    captions = [c for c in arrays["texts"]["caption"]]
    if captions != list(split["captions"]):
        raise ValueError(f"the records of split {report.get('split')!r} in "
                         f"{report.get('data_dir')} do not hold the evaluated captions in "
                         "order (changed during evaluation?); evaluate again")
    config = report["config"]
    title = (f"{config['family'].upper()} on {dataset or 'data'} "
             f"{report.get('split', '')}")
    body = [
        f"<h1>{_e(title)}</h1>",
        f"<p class='meta'>checkpoint {_e(report.get('checkpoint', ''))}<br>data "
        f"{_e(report.get('data_dir', ''))} · {report['queries']} captions, "
        f"{report['gallery']} images" +
        (f" · {report['candidates']} candidates re-ranked per query"
         if "candidates" in report else "") + "</p>",
        "<h2>Metrics</h2>", _metrics(report),
        "<h2>Each level alone</h2>", _levels(extras),
        "<h2>R1 by caption</h2>", _by_caption(ranks, split, config["data"], extras.reads_phrases),
        "<h2>The queries that fail worst</h2>",
        _queries(arrays, ranks, split, extras, main_mode),
    ]
    if extras.notes:
        body += [f"<h2>More from {_e(config['family'].upper())}</h2>",
                 markdown_html(extras.notes)]
    return ("<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>\n" +
            "\n".join(body) + "\n</body></html>\n")
