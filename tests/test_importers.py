"""Dataset readers (data_prep/importers.py): the five layouts and every kind of bad record."""
import builtins
import json
import os

import pytest

from data_prep import importers as imp
from tests_support import image_bytes, make_reed, write
from tests_support import pedes_entry as entry


def read(layout, data_dir):
    items = list(imp.iter_records(layout, str(data_dir)))
    return ([i for i in items if isinstance(i, imp.Record)],
            [i for i in items if isinstance(i, imp.Skip)])


# ------------------------------------------------------------------------- JSON layouts

JSON_LAYOUTS = [  # layout, annotation file, key of the image path, splits
    ("cuhk_pedes", "reid_raw.json", "file_path", ("train", "val", "test")),
    ("cuhk_pedes", "caption_all.json", "file_path", ("train", "val", "test")),
    ("icfg_pedes", "ICFG-PEDES.json", "file_path", ("train", "test")),
    ("icfg_pedes", "ICFG_PEDES.json", "file_path", ("train", "test")),
    ("rstpreid", "data_captions.json", "img_path", ("train", "val", "test")),
]


@pytest.mark.parametrize("layout,file_name,path_key,splits", JSON_LAYOUTS)
def test_json_layouts_read_every_split(tmp_path, layout, file_name, path_key, splits):
    entries = []
    for number, split in enumerate(splits):
        path = f"{split}/p{number}.{'png' if number % 2 else 'jpg'}"
        write(tmp_path / "imgs" / path, image_bytes("PNG" if number % 2 else "JPEG"))
        entries.append(entry(path, split, pid=100 + number, path_key=path_key,
                             captions=[f"Caption {number}.", "Another one."]))
    write(tmp_path / file_name, json.dumps(entries))
    records, skipped = read(layout, tmp_path)
    assert skipped == []
    assert records == [imp.Record(e["split"], str(e["id"]), e[path_key],
                                  (e["captions"][0], "Another one.")) for e in entries]
    assert imp.image_root(layout, str(tmp_path)) == os.path.realpath(tmp_path / "imgs")


def test_every_bad_record_is_skipped_with_its_reason(tmp_path, monkeypatch):
    data_dir, outside = tmp_path / "data", tmp_path / "outside"
    imgs = data_dir / "imgs"
    write(imgs / "good.jpg", image_bytes())
    write(imgs / "good.png", image_bytes("PNG"))
    write(imgs / "truncated.jpg", image_bytes()[:300])
    write(imgs / "truncated.png", image_bytes("PNG")[:60])
    write(imgs / "corrupt.jpg", b"\xff\xd8\xff\xe0 this is not really a JPEG" * 10)
    write(imgs / "anim.gif", image_bytes("GIF"))
    write(imgs / "folder.jpg" / "inner.jpg", image_bytes())  # a directory named like an image
    write(data_dir / "inside_data_dir.jpg", image_bytes())  # in DATA_DIR but not in imgs/
    secret = write(outside / "secret.jpg", image_bytes())
    os.symlink(secret, imgs / "link_out.jpg")
    os.symlink(outside, imgs / "dir_link")
    os.symlink(imgs / "good.jpg", imgs / "alias.jpg")  # a link that stays inside is fine
    entries = {  # expected reason (None = kept) -> record
        None: entry("good.jpg"),
        imp.DUPLICATE: entry("good.jpg"),
        imp.CONFLICT: entry("./good.jpg", pid=2),  # same file, other identity
        "conflict, other split": entry("good.jpg", split="test"),
        "kept png": entry("good.png", pid=2),
        "duplicate through a symlink": entry("alias.jpg", pid=2),
        imp.MISSING_IMAGE: entry("nowhere.jpg"),
        "directory": entry("folder.jpg"),
        imp.BAD_IMAGE: entry("truncated.jpg"),
        "truncated png": entry("truncated.png"),
        "corrupt": entry("corrupt.jpg"),
        imp.BAD_FORMAT: entry("anim.gif"),
        imp.ESCAPING_PATH: entry("../../../../../../etc/passwd"),
        "escape into data_dir": entry("../inside_data_dir.jpg"),
        "absolute": entry(str(secret)),
        "symlink out": entry("link_out.jpg"),
        "dir symlink out": entry("dir_link/secret.jpg"),
        imp.NO_CAPTIONS: entry("good.jpg", captions=[]),
        "blank captions": entry("good.jpg", captions=["", "  \n\t", "\u200b\ufeff"]),
        imp.UNKNOWN_SPLIT: entry("good.jpg", split="training"),
        imp.MALFORMED: {"split": "train", "captions": ["x"], "file_path": "good.jpg"},
        "id is a list": entry("good.jpg", pid=[1]),
        "id is a bool": entry("good.jpg", pid=True),
        "captions is a string": {**entry("good.jpg"), "captions": "A man."},
        "caption not a string": entry("good.jpg", captions=["A man.", 3]),
        "path not a string": entry(7),
        "not an object": ["good.jpg", 1],
    }
    write(data_dir / "reid_raw.json", json.dumps(list(entries.values())))
    opened = _record_opened_files(monkeypatch)
    items = list(imp.iter_records("cuhk_pedes", str(data_dir)))

    assert len(items) == len(entries)
    reasons = {label: item.reason if isinstance(item, imp.Skip) else None
               for label, item in zip(entries, items)}
    expected = {label: (label if label in _REASONS else _ALIASES.get(label)) for label in entries}
    assert reasons == expected
    assert all(os.path.realpath(p).startswith(os.path.realpath(data_dir) + os.sep)
               for p in opened), opened
    kept = [i for i in items if isinstance(i, imp.Record)]
    assert [r.path for r in kept] == ["good.jpg", "good.png"]
    skip = items[list(entries).index(imp.CONFLICT)]
    assert skip.record == "reid_raw.json[2]" and "reid_raw.json[0]" in skip.detail


_REASONS = {imp.DUPLICATE, imp.CONFLICT, imp.MISSING_IMAGE, imp.BAD_IMAGE, imp.BAD_FORMAT,
            imp.ESCAPING_PATH, imp.NO_CAPTIONS, imp.UNKNOWN_SPLIT, imp.MALFORMED}
_ALIASES = {
    "conflict, other split": imp.CONFLICT, "duplicate through a symlink": imp.CONFLICT,
    "directory": imp.MISSING_IMAGE, "truncated png": imp.BAD_IMAGE, "corrupt": imp.BAD_IMAGE,
    "escape into data_dir": imp.ESCAPING_PATH, "absolute": imp.ESCAPING_PATH,
    "symlink out": imp.ESCAPING_PATH, "dir symlink out": imp.ESCAPING_PATH,
    "blank captions": imp.NO_CAPTIONS, "id is a list": imp.MALFORMED,
    "id is a bool": imp.MALFORMED, "captions is a string": imp.MALFORMED,
    "caption not a string": imp.MALFORMED, "path not a string": imp.MALFORMED,
    "not an object": imp.MALFORMED,
}


def _record_opened_files(monkeypatch):
    opened = []
    real_open = builtins.open

    def recording_open(file, *args, **kwargs):
        opened.append(os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    return opened


def test_captions_are_cleaned_and_blank_ones_dropped(tmp_path):
    write(tmp_path / "imgs" / "a.jpg", image_bytes())
    captions = ["  A cafe\u0301 \u200bcoloured\u00a0coat\u0007and\tshoes.\n", "", "\u200d ",
                "Lone \ud800surrogate, soft\u00adhyphen."]
    write(tmp_path / "reid_raw.json", json.dumps([entry("a.jpg", captions=captions)]))
    (record,), _ = read("cuhk_pedes", tmp_path)
    assert record.captions == ("A café coloured coat and shoes.", "Lone surrogate, softhyphen.")


@pytest.mark.parametrize("text,expected", [
    ("e\u0301", "é"),  # NFC
    ("e\u200b\u0301", "é"),  # normalised after the zero-width space is removed
    ("\ufeffBOM", "BOM"),
    ("a\u2028b\r\nc", "a b c"),
    ("\u200b\u200c", ""),
])
def test_clean_caption(text, expected):
    assert imp.clean_caption(text) == expected


@pytest.mark.parametrize("content,message", [
    (b"[{\"split\": ", "not valid JSON"),
    (b"\xff\xfe[]", "not valid JSON"),
    (b"{\"annotations\": []}", "must hold a JSON list"),
])
def test_bad_annotation_file_is_a_clear_error(tmp_path, content, message):
    write(tmp_path / "reid_raw.json", content)
    with pytest.raises(ValueError, match=message) as error:
        list(imp.iter_records("cuhk_pedes", str(tmp_path)))
    assert "reid_raw.json" in str(error.value)


def test_missing_annotation_file_and_unknown_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="ICFG-PEDES.json"):
        list(imp.iter_records("icfg_pedes", str(tmp_path)))
    with pytest.raises(ValueError, match="unknown layout"):
        list(imp.iter_records("coco", str(tmp_path)))


def test_annotation_file_linked_from_outside_is_refused(tmp_path):
    real = write(tmp_path / "elsewhere" / "reid_raw.json", "[]")
    os.makedirs(tmp_path / "data")
    os.symlink(real, tmp_path / "data" / "reid_raw.json")
    with pytest.raises(ValueError, match="outside"):
        list(imp.iter_records("cuhk_pedes", str(tmp_path / "data")))


# ------------------------------------------------------------------------ CUB / Flowers

def test_cub_splits_from_trainval_minus_val(tmp_path):
    classes = {f"{i:03d}.Bird_{i}": 2 for i in range(1, 6)}
    names = list(classes)
    make_reed(tmp_path, classes, split_files={
        "trainvalclasses.txt": names[:3], "valclasses.txt": [names[2]],
        "testclasses.txt": names[3:]})
    records, skipped = read("cub", tmp_path)
    assert skipped == []
    by_split = {s: sorted({r.identity for r in records if r.split == s})
                for s in ("train", "val", "test")}
    assert by_split == {"train": names[:2], "val": [names[2]], "test": names[3:]}
    first = records[0]
    assert first.path == f"images/{names[0]}/{names[0]}_0000.jpg"
    assert first.captions == (f"this {names[0]} has 0 spots.", "it is small.")
    assert len(records) == 10


def test_flowers_images_in_jpg_folder_and_trainclasses_file(tmp_path):
    classes = {f"class_{i:05d}": 1 for i in range(1, 5)}
    names = list(classes)
    make_reed(tmp_path, classes, flowers=True, split_files={
        "trainclasses.txt": names[:2], "trainvalclasses.txt": names[:3],
        "valclasses.txt": [names[2]], "testclasses.txt": [names[3]]})
    records, skipped = read("flowers", tmp_path)
    assert skipped == []
    assert [(r.split, r.path) for r in records] == [
        ("train", f"jpg/{names[0]}_0000.jpg"), ("train", f"jpg/{names[1]}_0000.jpg"),
        ("val", f"jpg/{names[2]}_0000.jpg"), ("test", f"jpg/{names[3]}_0000.jpg")]


def test_reed_bad_files_are_skipped(tmp_path):
    make_reed(tmp_path / "elsewhere", {"far": 1})
    root = tmp_path / "cub"
    make_reed(root, {"birds": 6}, split_files={
        "trainclasses.txt": ["birds", "no_such_class", "../../elsewhere/text_c10/far", "/etc"],
        "valclasses.txt": [], "testclasses.txt": []})
    text = root / "text_c10" / "birds"
    write(text / "birds_0000.txt", b"caf\xe9 latin-1 text\n")
    os.remove(root / "images" / "birds" / "birds_0001.jpg")
    write(root / "images" / "birds" / "birds_0002.jpg", b"garbage")
    write(text / "birds_0003.txt", "\u200b\n \n")
    os.remove(text / "birds_0004.txt")
    os.symlink(tmp_path / "elsewhere" / "text_c10" / "far" / "far_0000.txt",
               text / "birds_0004.txt")
    write(text / "birds_0005.txt", "A bird with a cre\u0300me belly\x00.\n")
    records, skipped = read("cub", root)
    assert [(s.record, s.reason) for s in skipped] == [
        ("text_c10/birds/birds_0000.txt", imp.NOT_UTF8),
        ("text_c10/birds/birds_0001.txt", imp.MISSING_IMAGE),
        ("text_c10/birds/birds_0002.txt", imp.BAD_IMAGE),
        ("text_c10/birds/birds_0003.txt", imp.NO_CAPTIONS),
        ("text_c10/birds/birds_0004.txt", imp.ESCAPING_PATH),
        ("train class no_such_class", imp.MISSING_CLASS),
        ("train class ../../elsewhere/text_c10/far", imp.ESCAPING_PATH),
        ("train class /etc", imp.ESCAPING_PATH),
    ]
    assert [r.captions for r in records] == [("A bird with a crème belly .",)]


def test_reed_without_split_files_is_an_error(tmp_path):
    make_reed(tmp_path, {"birds": 1})
    with pytest.raises(FileNotFoundError, match="classes.txt"):
        list(imp.iter_records("flowers", str(tmp_path)))
