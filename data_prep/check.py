"""``hgan-prep check``: what a copy of a dataset holds, in plain words, before anything is
written. ``check(dataset, data_dir)`` returns a ``Report``; the import runs it first.

The copy is read the way the import reads it (``importers.iter_records``), except that each
image is checked by its file header instead of being decoded, so a check takes seconds.
The report says:

* the layout: which expected files and folders are there, missing or misnamed, and where
  they seem to be instead (an annotation file one folder down, images one folder too deep,
  an archive not extracted, CUHK-PEDES's ``caption_all.json`` without ``reid_raw.json``);
* per top-level image folder, how many of the images the annotations name are missing;
* blank captions, a caption repeated on one image, one caption text on several images
  (of other identities, in other splits);
* identities, images and captions per split beside the published split sizes
  (``importers.EXPECTED_SIZES``);
* whether the copy can produce the standard protocol (``Report.standard``): it can when
  no ``Problem`` was found; each problem says what to do. ``Report.importable`` is false
  when the import would keep nothing at all.
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import os

from data_prep import importers

NAMES = {"cuhk_pedes": "CUHK-PEDES", "icfg_pedes": "ICFG-PEDES", "rstpreid": "RSTPReid",
         "cub": "CUB-200-2011", "flowers": "Oxford-102 Flowers", "demo": "demo"}
SAMPLE = 200  # missing images looked for elsewhere, at most
EXAMPLES = 3  # examples named per finding
FOLDERS_LISTED = 12  # image folders listed one by one; beyond, only those with missing images
ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz", ".rar", ".7z")
# Skip reasons that mean an image could not be used (the rest are about the annotations).
IMAGE_REASONS = (importers.MISSING_IMAGE, importers.BAD_IMAGE, importers.BAD_FORMAT)


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something that keeps the copy from giving the standard protocol, and what to do;
    ``fatal``: the import would keep nothing."""
    what: str
    fix: str
    fatal: bool = False


@dataclasses.dataclass
class Report:
    """What ``check`` found. ``splits``: {split: {"identities", "images", "captions"}} that
    the import would keep; ``folders``: {image folder: {"referenced", "missing", "bad"}};
    ``skipped``: {skip reason: records}; ``captions``: the caption counts (``_captions``)."""
    dataset: str
    data_dir: str
    layout: list[str] = dataclasses.field(default_factory=list)
    problems: list[Problem] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    splits: dict = dataclasses.field(default_factory=dict)
    folders: dict = dataclasses.field(default_factory=dict)
    skipped: dict = dataclasses.field(default_factory=dict)
    captions: dict = dataclasses.field(default_factory=dict)
    records: int = 0
    importable: bool = True

    @property
    def standard(self) -> bool:
        """Whether the copy can produce the standard protocol of its dataset."""
        return self.importable and not self.problems

    def verdict(self) -> str:
        name = NAMES[self.dataset]
        if not self.importable:
            return f"hgan-prep cannot import this copy of {name}"
        if self.problems:
            return f"this copy cannot produce the standard {name} protocol"
        if self.dataset in importers.EXPECTED_SIZES:
            return f"this copy can produce the standard {name} protocol"
        return f"this copy of {name} can be imported whole"

    def text(self) -> str:
        """The report, as ``hgan-prep check`` prints it."""
        lines = [f"check of {self.data_dir} as --dataset={self.dataset} ({NAMES[self.dataset]})",
                 "layout:", *(f"  {line}" for line in self.layout)]
        if self.records:
            lines += _records_text(self)
        if self.warnings:
            lines += ["worth knowing:", *(f"  - {w}" for w in self.warnings)]
        if self.problems:
            lines.append(f"verdict: {self.verdict()}:")
            for number, problem in enumerate(self.problems, 1):
                lines += [f"  {number}. {problem.what}", f"     what to do: {problem.fix}"]
        else:
            lines.append(f"verdict: {self.verdict()}. Images were checked by their file "
                         "header only; hgan-prep decodes each one.")
        return "\n".join(lines)

    def problem(self, what: str, fix: str, fatal: bool = False) -> None:
        self.problems.append(Problem(what, fix, fatal))
        self.importable = self.importable and not fatal


class CopyError(ValueError):
    """A copy that cannot be imported at all (``Report.importable`` is false)."""

    def __init__(self, report: Report):
        problem = next(p for p in report.problems if p.fatal)
        super().__init__(f"{report.data_dir} cannot be imported as --dataset={report.dataset}: "
                         f"{problem.what}; what to do: {problem.fix}")
        self.report = report


def check(dataset: str, data_dir: str) -> Report:
    """Reads the copy ``data_dir`` of ``dataset`` (a layout of ``importers.LAYOUTS``) and
    says what it holds. Never writes anything."""
    if dataset not in importers.SPLITS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {importers.LAYOUTS}")
    report = Report(dataset, data_dir)
    root = os.path.realpath(data_dir)
    if not os.path.isdir(root):
        report.problem(f"{data_dir} is not a folder",
                       "pass --data_dir= the dataset's folder as downloaded", fatal=True)
        return report
    if dataset in importers.REED_IMAGE_FOLDERS:
        _reed_layout(report, root)
    else:
        _json_layout(report, root)
    if not report.importable:
        return report
    kept, skips = _read(report)
    if not report.importable:
        return report
    _images(report, root, kept, skips)
    _other_skips(report, skips)
    _captions(report, kept)
    _sizes(report, kept)
    if not kept:
        report.problem("no record can be imported (every one was skipped: see above)",
                       "fix the problems above and check again", fatal=True)
    return report


# ----------------------------------------------------------------------------- layout

def _json_layout(report: Report, root: str) -> None:
    names, _ = importers.JSON_LAYOUTS[report.dataset]
    present = [name for name in names if os.path.isfile(os.path.join(root, name))]
    if not present:
        report.layout.append(f"annotations: none of {', '.join(names)}")
        report.problem(f"no annotation file: {' or '.join(names)} is not in {report.data_dir}",
                       _annotation_fix(report, root, names), fatal=True)
        return
    line = f"annotations: {present[0]}"
    if report.dataset == "cuhk_pedes":
        line += (" (caption_all.json is there too and is not read)" if len(present) == 2
                 else " (no reid_raw.json: the records must carry their split)"
                 if present[0] == "caption_all.json"
                 else " (caption_all.json is not needed)")
    report.layout.append(line)
    images = os.path.join(root, "imgs")
    if os.path.isdir(images):
        folders = sorted(e.name for e in os.scandir(images) if e.is_dir())
        shown = ", ".join(folders[:FOLDERS_LISTED]) + (", ..." if len(folders) > FOLDERS_LISTED
                                                       else "")
        report.layout.append(f"images: imgs/ ({len(folders)} folders{': ' if folders else ''}"
                             f"{shown})")
    else:
        report.layout.append("images: no imgs/ folder")


def _annotation_fix(report: Report, root: str, names: tuple[str, ...]) -> str:
    """Where the annotation file seems to be, and what to pass or do."""
    for depth in ("*", "*/*"):
        for name in names:
            found = sorted(glob.glob(os.path.join(glob.escape(root), depth, name)))
            if found:
                where = os.path.relpath(found[0], root)
                return (f"{where} is deeper in the folder: pass "
                        f"--data_dir={os.path.join(report.data_dir, os.path.dirname(where))}")
    for layout, (others, _) in importers.JSON_LAYOUTS.items():
        for name in others:
            if layout not in (report.dataset, "demo") and name not in names and \
                    os.path.isfile(os.path.join(root, name)):
                return f"{name} is there, the annotation file of --dataset={layout}: pass it"
    jsons = sorted(os.path.basename(p)
                   for p in glob.glob(os.path.join(glob.escape(root), "*.json")))
    if jsons:
        return (f"{report.data_dir} has {', '.join(jsons[:EXAMPLES])}: if one of them is the "
                f"annotation file, rename it {names[0]}")
    archive = _archive(root)
    if archive:
        return f"{archive} may hold it: extract it into {report.data_dir}"
    if report.dataset == "demo":
        return f"hgan-demo-data --output_dir={report.data_dir} writes the demo set"
    return (f"put {names[0]} (from the dataset's authors, see docs/data.md) in "
            f"{report.data_dir}")


def _reed_layout(report: Report, root: str) -> None:
    folder = importers.REED_IMAGE_FOLDERS[report.dataset].split("/")[0]
    text = os.path.join(root, "text_c10")
    if not os.path.isdir(text):
        report.layout.append("captions: no text_c10/ folder")
        report.problem(f"no text_c10/ folder (one caption file per image) in {report.data_dir}",
                       _reed_fix(report, root, "text_c10"), fatal=True)
    else:
        classes = sum(1 for e in os.scandir(text) if e.is_dir())
        report.layout.append(f"captions: text_c10/ ({classes} class folders)")
    lists = {split: os.path.isfile(os.path.join(root, file))
             for split, file in importers.REED_CLASS_LISTS.items()}
    report.layout.append("class lists: " + (", ".join(
        file for split, file in importers.REED_CLASS_LISTS.items() if lists[split]) or "none"))
    if not any(lists.values()):
        report.problem("no class lists: " + ", ".join(importers.REED_CLASS_LISTS.values())
                       + " are all missing", _reed_fix(report, root, "testclasses.txt"),
                       fatal=True)
    elif report.importable:
        if not (lists["train"] or lists["trainval"]):
            report.problem("neither trainclasses.txt nor trainvalclasses.txt: no training "
                           "classes", _reed_fix(report, root, "trainvalclasses.txt"))
        for split in ("val", "test"):
            if not lists[split]:
                report.problem(f"no {split}classes.txt: the {split} split is empty",
                               _reed_fix(report, root, f"{split}classes.txt"))
        _reed_overlaps(report, root)
    if os.path.isdir(os.path.join(root, folder)):
        report.layout.append(f"images: {folder}/")
    else:
        report.layout.append(f"images: no {folder}/ folder")


def _reed_overlaps(report: Report, root: str) -> None:
    try:
        splits = importers.reed_splits(root)
    except ValueError as e:
        report.problem(str(e), "save the class list as UTF-8 text, one class a line",
                       fatal=True)
        return
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = sorted(set(splits[a]) & set(splits[b]))
        if shared:
            report.problem(
                f"{len(shared)} classes are in both the {a} and the {b} class lists (e.g. "
                f"{', '.join(shared[:EXAMPLES])}): the splits must not share classes",
                "use the class lists of Reed et al.'s release unchanged")


def _reed_fix(report: Report, root: str, name: str) -> str:
    found = sorted(glob.glob(os.path.join(glob.escape(root), "*", name)))
    if found:
        deeper = os.path.dirname(os.path.relpath(found[0], root))
        return (f"{deeper}/{name} is one folder down: pass "
                f"--data_dir={os.path.join(report.data_dir, deeper)}")
    archive = _archive(root)
    if archive:
        return f"{archive} may hold it: extract it into {report.data_dir}"
    return (f"{name} comes with Reed et al.'s captions and splits (CVPR 2016), see "
            f"docs/data.md: put it in {report.data_dir}")


def _archive(root: str) -> str:
    for entry in sorted(os.listdir(root)):
        if entry.lower().endswith(ARCHIVES):
            return entry
    return ""


# ---------------------------------------------------------------------------- records

def _read(report: Report) -> tuple[list[importers.Record], list[importers.Skip]]:
    kept, skips = [], []
    try:
        for item in importers.iter_records(report.dataset, report.data_dir, decode=False):
            (skips if isinstance(item, importers.Skip) else kept).append(item)
    except (FileNotFoundError, ValueError) as e:
        report.problem(f"the annotations cannot be read: {e}",
                       "replace the file with the one of the dataset's release", fatal=True)
    report.records = len(kept) + len(skips)
    report.skipped = dict(collections.Counter(s.reason for s in skips).most_common())
    return kept, skips


def _folder(dataset: str, path: str) -> str:
    """The top-level image folder a record's image path is in, as the report names it."""
    path = path.replace(os.sep, "/")
    if dataset in importers.REED_IMAGE_FOLDERS:
        return os.path.dirname(path) or "."
    return "imgs/" + path.split("/")[0] if "/" in path else "imgs"


def _images(report: Report, root: str, kept: list, skips: list) -> None:
    """Per image folder: images named, missing, not JPEG/PNG; where missing ones are."""
    folders = collections.defaultdict(lambda: {"referenced": 0, "missing": 0, "bad": 0})
    for record in kept:
        folders[_folder(report.dataset, record.path)]["referenced"] += 1
    missing, bad = [], []
    for skip in skips:
        if skip.reason in IMAGE_REASONS:
            counts = folders[_folder(report.dataset, skip.path)]
            counts["referenced"] += 1
            counts["missing" if skip.reason == importers.MISSING_IMAGE else "bad"] += 1
            (missing if skip.reason == importers.MISSING_IMAGE else bad).append(skip)
    report.folders = dict(sorted(folders.items()))
    if missing:
        image_root = importers.image_root(report.dataset, report.data_dir)
        target = os.path.relpath(image_root, root) if image_root != root else report.data_dir
        absent = [f for f, c in report.folders.items()
                  if c["missing"] == c["referenced"]
                  and not os.path.isdir(os.path.join(root, f))]
        hint = _where_missing_images_are(report, root, image_root, missing)
        total = sum(c["referenced"] for c in report.folders.values())
        what = f"{len(missing):,} of the {total:,} images the annotations name are missing"
        if not os.path.isdir(image_root):
            what = f"there is no {target}/ folder: {what}"
        elif absent:
            what += (f"; {len(absent)} folder{'s are' if len(absent) > 1 else ' is'} not there "
                     f"at all: {', '.join(f + '/' for f in absent[:EXAMPLES])}"
                     + (", ..." if len(absent) > EXAMPLES else ""))
        what += f" (e.g. {', '.join(s.path for s in missing[:EXAMPLES])})"
        report.problem(what, hint or (
            "copy the missing images (or folders) from the dataset's image archive into "
            f"{target}/; a copy without them is a subset, whose results are not comparable"))
    if bad:
        report.problem(
            f"{len(bad):,} image files are not JPEG or PNG files (e.g. "
            + ", ".join(f"{s.path}: {s.detail}" for s in bad[:EXAMPLES]) + ")",
            "extract these files again from the dataset's image archive (a download that "
            "stopped early leaves files like these)")


def _where_missing_images_are(report: Report, root: str, image_root: str,
                              missing: list) -> str:
    """Looks for a sample of the missing images one folder up or down and in archives;
    the fix if most of them are somewhere else."""
    step = max(1, len(missing) // SAMPLE)
    sample = [skip.path for skip in missing[::step]][:SAMPLE]
    bases = [root] + _subfolders(root)
    if image_root != root and os.path.isdir(image_root):
        bases += _subfolders(image_root)
    best, hits = None, 0
    for base in bases:
        if base == image_root:
            continue
        found = sum(_exists(base, path) for path in sample)
        if found > hits:
            best, hits = base, found
    target = os.path.relpath(image_root, root) if image_root != root else "."
    if best is not None and hits * 2 >= len(sample):
        where = os.path.relpath(best, root)
        example = sample[0]
        if best == root:
            return (f"{hits} of {len(sample)} missing images looked for are directly in "
                    f"{report.data_dir} (e.g. {example}), not under {target}/: move them "
                    f"into {target}/")
        return (f"{hits} of {len(sample)} missing images looked for are under {where}/ "
                f"(e.g. {where}/{example}), one folder too deep or misnamed: move what is "
                f"in {where}/ to {target}/")
    archive = _archive(root) or (_archive(image_root) if os.path.isdir(image_root) else "")
    if archive:
        return f"{archive} is still an archive: extract it into {target}/"
    return ""


def _subfolders(folder: str) -> list[str]:
    return sorted(e.path for e in os.scandir(folder) if e.is_dir())


def _exists(base: str, path: str) -> bool:
    if path.endswith(".*"):  # a Reed image, found by its stem
        return bool(glob.glob(glob.escape(os.path.join(base, path[:-2])) + ".*"))
    return os.path.isfile(os.path.join(base, path))


def _other_skips(report: Report, skips: list) -> None:
    """Records left out for a reason that is not their image."""
    no_split = [s for s in skips if s.reason == importers.MALFORMED
                and s.detail.startswith(importers.MISSING_KEYS) and "'split'" in s.detail]
    if no_split:
        name = no_split[0].record.split("[")[0]
        fix = ("the layout needs a 'split' (train, val or test) in every record: use the "
               "annotation file of the dataset's release")
        if name == "caption_all.json":
            fix = ("CUHK-PEDES's standard split is in reid_raw.json (the same records with "
                   "'split'), from the dataset's authors: put it beside imgs/ "
                   "(hgan-prep reads it before caption_all.json)")
        report.problem(f"{len(no_split):,} of the {report.records:,} records of {name} have "
                       "no 'split'", fix)
    by_reason = collections.defaultdict(list)
    counted = {id(skip) for skip in no_split}
    for skip in skips:
        if skip.reason not in IMAGE_REASONS and id(skip) not in counted:
            by_reason[skip.reason].append(skip)
    for reason, items in by_reason.items():
        examples = "; ".join(f"{s.record}" + (f": {s.detail}" if s.detail else "")
                             for s in items[:EXAMPLES])
        report.warnings.append(f"{len(items):,} records left out: {reason} (e.g. {examples})")


def _captions(report: Report, kept: list) -> None:
    """Blank captions, captions repeated on one image, caption texts on several images."""
    blank = sum(r.blank_captions for r in kept)
    repeated = [r for r in kept if len(set(r.captions)) < len(r.captions)]
    owners = collections.defaultdict(set)
    for r in kept:
        for caption in set(r.captions):
            owners[caption].add((r.split, r.identity, r.path))
    shared = {c: o for c, o in owners.items() if len(o) > 1}
    identities = [c for c, o in shared.items() if len({(s, i) for s, i, _ in o}) > 1]
    splits = [c for c, o in shared.items() if len({s for s, _, _ in o}) > 1]
    report.captions = {
        "captions": sum(len(r.captions) for r in kept), "blank": blank,
        "images_repeating_a_caption": len(repeated), "texts_on_several_images": len(shared),
        "texts_on_several_identities": len(identities), "texts_in_several_splits": len(splits),
        "records_without_captions": report.skipped.get(importers.NO_CAPTIONS, 0)}
    if blank:
        report.warnings.append(f"{blank:,} blank captions (the import leaves them out)")
    if repeated:
        report.warnings.append(
            f"{len(repeated):,} images carry one caption twice or more (kept as they are: "
            f"each is a query), e.g. {', '.join(r.path for r in repeated[:EXAMPLES])}")
    if identities:
        report.warnings.append(
            f"{len(identities):,} caption texts describe images of different identities (such "
            f"a query has right answers that count as wrong), e.g. {identities[0]!r}")
    if splits:
        report.warnings.append(
            f"{len(splits):,} caption texts appear in more than one split (a test query seen "
            f"in training), e.g. {splits[0]!r}")


def _sizes(report: Report, kept: list) -> None:
    """Identities, images and captions per split, against the published sizes."""
    splits = {}
    for split in importers.SPLITS[report.dataset]:
        records = [r for r in kept if r.split == split]
        if records:
            splits[split] = {"identities": len({r.identity for r in records}),
                             "images": len(records),
                             "captions": sum(len(r.captions) for r in records)}
    report.splits = splits
    differences = importers.size_differences(report.dataset, splits)
    if differences:
        images_lost = sum(report.skipped.get(r, 0) for r in IMAGE_REASONS)
        report.problem(
            f"the splits differ from the published {NAMES[report.dataset]} split: "
            + "; ".join(differences),
            ("restore the images above first; " if images_lost else "")
            + "a subset or another split can still be imported (hgan-prep says so), but its "
            "results are not comparable with the papers'")
    elif report.dataset not in importers.EXPECTED_SIZES:
        for split in importers.SPLITS[report.dataset]:
            if split not in splits and kept:
                report.problem(f"no {split} split: no usable record has split {split!r}",
                               "use a copy with every split")


def _records_text(report: Report) -> list[str]:
    left_out = sum(report.skipped.values())
    lines = [f"records: {report.records:,} read, {report.records - left_out:,} usable, "
             f"{left_out:,} left out"]
    if report.folders:
        lines.append("images named by the annotations, per folder:")
        listed = report.folders.items()
        if len(report.folders) > FOLDERS_LISTED:
            listed = [(f, c) for f, c in listed if c["missing"] or c["bad"]][:FOLDERS_LISTED]
        width = max(len(f) for f, _ in report.folders.items())
        for folder, c in listed:
            line = f"  {folder:<{width}}  {c['referenced']:>9,} named  {c['missing']:>9,} missing"
            lines.append(line + (f"  {c['bad']:,} not JPEG/PNG" if c["bad"] else ""))
        others = len(report.folders) - len(listed)
        if others:
            lines.append(f"  ({others:,} other folders: none missing)")
    c = report.captions
    if c:
        lines.append(f"captions: {c['captions']:,} usable, {c['blank']:,} blank, "
                     f"{c['images_repeating_a_caption']:,} images repeat one, "
                     f"{c['texts_on_several_images']:,} texts on several images "
                     f"({c['texts_on_several_identities']:,} of other identities, "
                     f"{c['texts_in_several_splits']:,} in other splits)")
    expected = importers.EXPECTED_SIZES.get(report.dataset, {})
    lines.append("splits: identities / images / captions" +
                 (" (published in brackets)" if expected else ""))
    for split in importers.SPLITS[report.dataset]:
        found = report.splits.get(split, {})
        published = expected.get(split, {})
        cells = []
        for key in ("identities", "images", "captions"):
            cell = f"{found.get(key, 0):,}"
            if key in published:
                cell += f" [{published[key]:,}]"
            cells.append(cell)
        lines.append(f"  {split:<5}  " + " / ".join(cells))
    return lines
