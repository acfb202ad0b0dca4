"""The dataset check (data_prep/check.py, ``hgan-prep check``): each kind of damage a copy
can have, built in a temporary folder, is named with what to do; a whole copy passes."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from data_prep import check, importers
from tests_support import ROOT, image_bytes, make_pedes, make_reed, write


def sizes_of(entries):
    """The published-sizes table that ``entries`` (make_pedes's records) match."""
    out = {}
    for e in entries:
        split = out.setdefault(e["split"], {"identities": set(), "images": 0, "captions": 0})
        split["identities"].add(e["id"])
        split["images"] += 1
        split["captions"] += len(e["captions"])
    return {s: {**v, "identities": len(v["identities"])} for s, v in out.items()}


@pytest.fixture()
def cuhk(tmp_path, monkeypatch):
    """A CUHK-PEDES copy (imgs/CUHK01, imgs/cam_a, imgs/test_query; reid_raw.json) whose
    sizes are, for the test, the published ones."""
    root = tmp_path / "CUHK-PEDES"
    entries = make_pedes(root)
    monkeypatch.setitem(importers.EXPECTED_SIZES, "cuhk_pedes", sizes_of(entries))
    return root


def problems(report):
    return "\n".join(f"{p.what} | {p.fix}" for p in report.problems)


def test_a_whole_copy_can_produce_the_standard_protocol(cuhk):
    report = check.check("cuhk_pedes", str(cuhk))
    assert report.standard and report.importable, report.text()
    assert report.splits == {"train": {"identities": 3, "images": 6, "captions": 12},
                             "val": {"identities": 1, "images": 2, "captions": 4},
                             "test": {"identities": 1, "images": 2, "captions": 4}}
    assert report.folders == {f"imgs/{f}": {"referenced": n, "missing": 0, "bad": 0}
                              for f, n in (("CUHK01", 6), ("cam_a", 2), ("test_query", 2))}
    text = report.text()
    assert "annotations: reid_raw.json (caption_all.json is not needed)" in text
    assert "verdict: this copy can produce the standard CUHK-PEDES protocol" in text
    assert "  test   1 [1] / 2 [2] / 4 [4]" in text


def test_a_missing_query_folder_is_named_with_its_missing_images(cuhk):
    shutil.rmtree(cuhk / "imgs" / "test_query")
    report = check.check("cuhk_pedes", str(cuhk))
    assert not report.standard and report.importable
    assert report.folders["imgs/test_query"] == {"referenced": 2, "missing": 2, "bad": 0}
    assert report.folders["imgs/CUHK01"]["missing"] == 0
    assert "test" not in report.splits
    text = problems(report)
    assert "2 of the 10 images the annotations name are missing; 1 folder is not there at " \
        "all: imgs/test_query/" in text
    assert "test: missing (the official split has 1 identities, 2 images, 4 captions)" in text
    assert "restore the images above first" in text


def test_images_directly_in_data_dir_instead_of_imgs(cuhk):
    for folder in ("CUHK01", "cam_a", "test_query"):
        shutil.move(str(cuhk / "imgs" / folder), str(cuhk / folder))
    os.rmdir(cuhk / "imgs")
    report = check.check("cuhk_pedes", str(cuhk))
    assert not report.importable  # every image is missing: nothing to import
    assert "images: no imgs/ folder" in report.layout
    text = problems(report)
    assert "there is no imgs/ folder: 10 of the 10 images the annotations name are missing" in text
    assert f"10 of 10 missing images looked for are directly in {cuhk} " \
        "(e.g. CUHK01/0001_0.jpg), not under imgs/: move them into imgs/" in text


def test_images_one_folder_too_deep(cuhk):
    deeper = cuhk / "imgs" / "CUHK-PEDES"
    for folder in ("CUHK01", "cam_a", "test_query"):
        shutil.move(str(cuhk / "imgs" / folder), str(deeper / folder))
    report = check.check("cuhk_pedes", str(cuhk))
    assert not report.importable
    assert "under imgs/CUHK-PEDES/ (e.g. imgs/CUHK-PEDES/CUHK01/0001_0.jpg), one folder too " \
        "deep or misnamed: move what is in imgs/CUHK-PEDES/ to imgs/" in problems(report)


def test_an_image_archive_not_extracted(cuhk):
    shutil.rmtree(cuhk / "imgs")
    write(cuhk / "imgs.zip", b"PK\x03\x04")
    report = check.check("cuhk_pedes", str(cuhk))
    assert "imgs.zip is still an archive: extract it into imgs/" in problems(report)


def test_caption_all_json_without_reid_raw_json_lacks_the_split(tmp_path):
    entries = make_pedes(tmp_path, annotation="caption_all.json")
    for e in entries:
        del e["split"]  # the original release's caption_all.json has no split
    write(tmp_path / "caption_all.json", json.dumps(entries))
    report = check.check("cuhk_pedes", str(tmp_path))
    assert not report.importable
    assert ("annotations: caption_all.json (no reid_raw.json: the records must carry their "
            "split)") in report.layout
    text = problems(report)
    assert "10 of the 10 records of caption_all.json have no 'split'" in text
    assert "CUHK-PEDES's standard split is in reid_raw.json" in text


def test_caption_all_json_with_splits_and_reid_raw_json_beside_it(cuhk):
    shutil.copy(cuhk / "reid_raw.json", cuhk / "caption_all.json")
    report = check.check("cuhk_pedes", str(cuhk))
    assert report.standard
    assert ("annotations: reid_raw.json (caption_all.json is there too and is not read)"
            in report.layout)
    os.remove(cuhk / "reid_raw.json")
    report = check.check("cuhk_pedes", str(cuhk))
    assert report.standard  # its records carry their split: it is read in its place


@pytest.mark.parametrize("setup,fix", [
    ("deeper", "CUHK-PEDES/reid_raw.json is deeper in the folder: pass --data_dir={root}/"
               "CUHK-PEDES"),
    ("other layout", "ICFG-PEDES.json is there, the annotation file of "
                     "--dataset=icfg_pedes: pass it"),
    ("renamed", "{root} has reid_raw (1).json: if one of them is the annotation file, "
                "rename it reid_raw.json"),
    ("nothing", "put reid_raw.json (from the dataset's authors, see docs/data.md) in {root}"),
])
def test_a_missing_annotation_file_says_where_it_seems_to_be(tmp_path, setup, fix):
    root = tmp_path / "data"
    if setup == "deeper":
        make_pedes(root / "CUHK-PEDES")
    elif setup == "other layout":
        make_pedes(root, layout="icfg_pedes")
    elif setup == "renamed":
        make_pedes(root, annotation="reid_raw (1).json")
    else:
        root.mkdir()
    report = check.check("cuhk_pedes", str(root))
    assert not report.importable and not report.standard
    assert [(p.what, p.fix) for p in report.problems] == [
        (f"no annotation file: reid_raw.json or caption_all.json is not in {root}",
         fix.format(root=root))]
    assert report.verdict() == "hgan-prep cannot import this copy of CUHK-PEDES"


def test_blank_and_duplicated_captions_are_counted(tmp_path):
    def captions(split, pid, shot):
        if pid == 1 and shot == 0:
            return ["a man in a red coat.", "a man in a red coat.", " ", ""]  # twice, 2 blank
        if pid == 2 and shot == 0:
            return ["a man in a red coat.", "other words."]  # same text, other identity
        if split == "test" and shot == 0:
            return ["a man in a red coat."]  # and in another split
        if pid == 3 and shot == 1:
            return ["\u200b", "  "]  # blank only: the record is left out
        return [f"caption {pid} {shot}."]

    make_pedes(tmp_path, layout="demo", captions=captions)
    report = check.check("demo", str(tmp_path))
    assert report.captions == {
        "captions": 11, "blank": 2, "images_repeating_a_caption": 1,
        "texts_on_several_images": 1, "texts_on_several_identities": 1,
        "texts_in_several_splits": 1, "records_without_captions": 1}
    warnings = "\n".join(report.warnings)
    assert "2 blank captions (the import leaves them out)" in warnings
    assert "1 images carry one caption twice or more" in warnings
    assert "1 caption texts describe images of different identities" in warnings
    assert "1 caption texts appear in more than one split" in warnings
    assert "1 records left out: no captions" in warnings
    assert report.standard  # worth knowing, not in the way of the protocol


def test_images_that_are_not_jpeg_or_png_files(cuhk):
    write(cuhk / "imgs" / "CUHK01" / "0001_0.jpg", b"<html>404 Not Found</html>")
    write(cuhk / "imgs" / "CUHK01" / "0001_1.jpg", b"")
    write(cuhk / "imgs" / "cam_a" / "0004_0.jpg", image_bytes("GIF"))
    report = check.check("cuhk_pedes", str(cuhk))
    assert report.folders["imgs/CUHK01"] == {"referenced": 6, "missing": 0, "bad": 2}
    assert report.skipped == {importers.BAD_IMAGE: 2, importers.BAD_FORMAT: 1}
    text = problems(report)
    assert ("3 image files are not JPEG or PNG files (e.g. CUHK01/0001_0.jpg: not an image "
            "file header, CUHK01/0001_1.jpg: empty file, cam_a/0004_0.jpg: GIF)") in text


def test_the_check_reads_headers_only_the_import_decodes(cuhk):
    """A JPEG cut short passes the header check; the import, which decodes, skips it."""
    write(cuhk / "imgs" / "CUHK01" / "0001_0.jpg", image_bytes()[:300])
    assert check.check("cuhk_pedes", str(cuhk)).standard
    items = list(importers.iter_records("cuhk_pedes", str(cuhk)))
    assert [s.reason for s in items if isinstance(s, importers.Skip)] == [importers.BAD_IMAGE]


@pytest.mark.parametrize("layout", ["icfg_pedes", "rstpreid"])
def test_the_other_json_layouts_against_their_published_sizes(tmp_path, layout):
    make_pedes(tmp_path, layout=layout)
    report = check.check(layout, str(tmp_path))
    assert report.importable and not report.standard
    expected = importers.EXPECTED_SIZES[layout]["train"]["identities"]
    assert (f"train: 3 identities, the official split has {expected:,}"
            in problems(report))


# ----------------------------------------------------------------------- CUB / Flowers

def cub_copy(root):
    """A CUB copy with the published class counts (100 / 50 / 50), one image per class."""
    classes = {f"{i:03d}.Bird_{i}": 1 for i in range(1, 201)}
    names = list(classes)
    make_reed(root, classes, split_files={
        "trainvalclasses.txt": names[:150], "valclasses.txt": names[100:150],
        "testclasses.txt": names[150:]})
    return names


def test_a_whole_cub_copy_can_produce_the_standard_protocol(tmp_path):
    cub_copy(tmp_path)
    report = check.check("cub", str(tmp_path))
    assert report.standard, report.text()
    assert {s: v["identities"] for s, v in report.splits.items()} == {
        "train": 100, "val": 50, "test": 50}
    # make_reed's caption files have a blank line: left out, and said so.
    assert report.captions["blank"] == 200


def test_cub_without_class_lists_or_captions(tmp_path):
    cub_copy(tmp_path)
    for name in ("trainvalclasses.txt", "valclasses.txt", "testclasses.txt"):
        os.remove(tmp_path / name)
    report = check.check("cub", str(tmp_path))
    assert not report.importable
    assert report.problems[0].what == ("no class lists: trainclasses.txt, "
                                       "trainvalclasses.txt, valclasses.txt, testclasses.txt "
                                       "are all missing")
    cub_copy(tmp_path)
    shutil.rmtree(tmp_path / "text_c10")
    report = check.check("cub", str(tmp_path))
    assert not report.importable and "no text_c10/ folder" in problems(report)


def test_cub_missing_val_list_overlapping_classes_and_a_missing_image_folder(tmp_path):
    names = cub_copy(tmp_path)
    os.remove(tmp_path / "valclasses.txt")
    write(tmp_path / "testclasses.txt", "".join(f"{c}\n" for c in names[149:]))
    shutil.rmtree(tmp_path / "images" / names[0])
    report = check.check("cub", str(tmp_path))
    assert report.importable and not report.standard
    text = problems(report)
    assert "no valclasses.txt: the val split is empty" in text
    assert (f"1 classes are in both the train and the test class lists (e.g. {names[149]})"
            in text)
    assert report.folders[f"images/{names[0]}"] == {"referenced": 1, "missing": 1, "bad": 0}
    assert f"1 folder is not there at all: images/{names[0]}/" in text


def test_flowers_images_one_folder_too_deep(tmp_path):
    classes = {f"class_{i:05d}": 1 for i in range(1, 6)}
    names = list(classes)
    make_reed(tmp_path, classes, flowers=True, split_files={
        "trainclasses.txt": names[:3], "valclasses.txt": [names[3]],
        "testclasses.txt": [names[4]]})
    shutil.move(str(tmp_path / "jpg"), str(tmp_path / "102flowers" / "jpg"))
    report = check.check("flowers", str(tmp_path))
    assert report.folders == {"jpg": {"referenced": 5, "missing": 5, "bad": 0}}
    assert "images: no jpg/ folder" in report.layout
    assert ("under 102flowers/ (e.g. 102flowers/jpg/class_00001_0000.*), one folder too deep "
            "or misnamed: move what is in 102flowers/ to ./") in problems(report)


# ----------------------------------------------------------------------------- the command

def prep(*args):
    return subprocess.run([sys.executable, "-m", "data_prep", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_command_exits_0_on_a_whole_copy_1_on_a_broken_one_and_writes_nothing(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    make_pedes(raw, layout="demo")
    result = prep("check", "--dataset=demo", f"--data_dir={raw}")
    assert result.returncode == 0, result.stderr
    assert "verdict: this copy of demo can be imported whole" in result.stdout
    os.remove(raw / "reid_raw.json")
    result = prep("check", "--dataset=demo", f"--data_dir={raw}")
    assert result.returncode == 1
    assert "what to do: hgan-demo-data --output_dir=" in result.stdout
    # The import runs the same check first and stops before writing anything.
    result = prep("--dataset=demo", f"--data_dir={raw}", f"--output_dir={out}", "--bert=none")
    assert result.returncode == 1
    assert "cannot be imported as --dataset=demo: no annotation file" in result.stderr
    assert not out.exists()


# The console script's work in a process of its own: its verdict, its exit status and
# whether anything imported TensorFlow (the check reads JSON and image headers only).
_CHECK_WITHOUT_TF = """
import sys
sys.argv = ["hgan-prep", "check", "--dataset=demo", "--data_dir=" + sys.argv[1]]
from data_prep.__main__ import run
try:
    run()
except SystemExit as e:
    status = e.code
print("exit", status, "tensorflow" in sys.modules, "tensorflow_text" in sys.modules)
"""


@pytest.mark.slow
def test_the_check_imports_no_tensorflow(tmp_path):
    make_pedes(tmp_path, layout="demo")
    result = subprocess.run([sys.executable, "-c", _CHECK_WITHOUT_TF, str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "can be imported whole" in result.stdout, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "exit 0 False False", result.stdout
