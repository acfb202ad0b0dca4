"""Readers of the five dataset layouts, with the checks every record goes through.

``iter_records(layout, data_dir)`` yields, in file order, one ``Record`` per usable image
(``split, identity, path, captions``) and one ``Skip`` per record that cannot be used, with
the reason. Bad data never raises; only a missing or unreadable annotation file does.

Layouts (``data_dir`` as downloaded):

* ``cuhk_pedes``: ``reid_raw.json`` (or ``caption_all.json``), a JSON list of
  ``{"split", "captions", "file_path", "processed_tokens", "id"}``; images under ``imgs/``.
* ``icfg_pedes``: ``ICFG-PEDES.json`` (or ``ICFG_PEDES.json``), the same; train/test only.
* ``rstpreid``: ``data_captions.json``, the same with ``img_path`` for ``file_path``.
* ``cub``, ``flowers`` (Reed et al., CVPR 2016): ``text_c10/<class>/<image>.txt``, one
  caption a line; images under ``images/<class>/`` (CUB) or ``jpg/`` (Flowers); class lists
  ``trainclasses.txt`` (else ``trainvalclasses.txt`` minus ``valclasses.txt``),
  ``valclasses.txt``, ``testclasses.txt``. The class is the identity.
* ``demo``: the CUHK-PEDES layout as written by ``hgan-demo-data``.

Reading is in two stages: a layout reader turns its files into ``_Candidate`` records
(layout-specific: JSON fields, or CUB/Flowers class folders), then ``_validate`` applies the
checks common to all layouts: known split, non-blank cleaned captions, an image path that
stays inside the image root, no duplicate, and an image that PIL can fully decode as JPEG or
PNG (``decode=False``: a JPEG or PNG file header, which is what ``data_prep.check`` reads).
Nothing outside ``data_dir`` is ever opened: every path is resolved with
``os.path.realpath`` (following symlinks) and checked for containment before it is read.
"""
from __future__ import annotations

import dataclasses
import glob
import io
import json
import os
import unicodedata
from typing import Callable, Iterator, NamedTuple

from PIL import Image

# Layout name -> splits it may contain. "demo" is data_prep.demo's output: the CUHK-PEDES
# layout under its own name so manifests say which data they hold.
SPLITS = {
    "cuhk_pedes": ("train", "val", "test"),
    "icfg_pedes": ("train", "test"),
    "rstpreid": ("train", "val", "test"),
    "cub": ("train", "val", "test"),
    "flowers": ("train", "val", "test"),
    "demo": ("train", "val", "test"),
}
LAYOUTS = tuple(SPLITS)

# Published sizes of the official splits; an import is checked against them (reported,
# not enforced: a subset or a re-split is allowed, and said so). CUHK-PEDES: Li et al.
# 2017 (IATV §4.1); ICFG-PEDES: Ding et al. 2021 (one caption per image); RSTPReid: Zhu et
# al. 2021 (5 images per identity, 2 captions per image); CUB / Flowers: the class-disjoint
# splits of Reed et al. 2016 (IATV §4.1, HGAN §4), classes only.
EXPECTED_SIZES = {
    "cuhk_pedes": {"train": {"identities": 11003, "images": 34054, "captions": 68108},
                   "val": {"identities": 1000, "images": 3078, "captions": 6158},
                   "test": {"identities": 1000, "images": 3074, "captions": 6156}},
    "icfg_pedes": {"train": {"identities": 3102, "images": 34674, "captions": 34674},
                   "test": {"identities": 1000, "images": 19848, "captions": 19848}},
    "rstpreid": {"train": {"identities": 3701, "images": 18505, "captions": 37010},
                 "val": {"identities": 200, "images": 1000, "captions": 2000},
                 "test": {"identities": 200, "images": 1000, "captions": 2000}},
    "cub": {"train": {"identities": 100}, "val": {"identities": 50},
            "test": {"identities": 50}},
    "flowers": {"train": {"identities": 62}, "val": {"identities": 20},
                "test": {"identities": 20}},
}


def size_differences(dataset: str, splits: dict) -> list[str]:
    """How the imported ``splits`` ({split: {"identities", "images", "captions"}}) differ
    from the official split sizes of ``dataset`` (empty: they match, or none are known)."""
    out = []
    for split, expected in EXPECTED_SIZES.get(dataset, {}).items():
        found = splits.get(split)
        if found is None:
            out.append(f"{split}: missing (the official split has "
                       + ", ".join(f"{v:,} {k}" for k, v in expected.items()) + ")")
            continue
        for key, value in expected.items():
            if found.get(key) != value:
                out.append(f"{split}: {found.get(key, 0):,} {key}, the official split has "
                           f"{value:,}")
    return out

IMAGE_FORMATS = ("JPEG", "PNG")

# Skip reasons, fixed so a run's skips can be counted by reason; details go to Skip.detail.
MALFORMED = "malformed record"
UNKNOWN_SPLIT = "unknown split"
NO_CAPTIONS = "no captions"
NOT_UTF8 = "caption file not UTF-8"
ESCAPING_PATH = "path escapes its folder"
MISSING_IMAGE = "missing image"
BAD_IMAGE = "corrupt or truncated image"
BAD_FORMAT = "unsupported image format"
DUPLICATE = "duplicate record"
CONFLICT = "image already used with another identity or split"
MISSING_CLASS = "missing class folder"
MISSING_KEYS = "missing keys"  # how a MALFORMED detail names the keys a JSON record lacks


class Record(NamedTuple):
    """One usable image: its captions are cleaned and its file was fully decoded."""
    split: str
    identity: str
    path: str  # of the real file, relative to image_root(layout, data_dir)
    captions: tuple[str, ...]
    blank_captions: int = 0  # captions of the record left out as blank once cleaned


class Skip(NamedTuple):
    """A record that was left out; ``record`` locates it in the annotation files."""
    record: str
    path: str
    reason: str
    detail: str = ""


class SkipError(Exception):
    """Raised by a check; carries the Skip reason and a detail."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class _Candidate:
    """A record as a layout reader found it, before the common checks."""
    locator: str
    split: str
    identity: str
    path: str
    captions: tuple[str, ...]


# ---------------------------------------------------------------------------- public API

def image_root(layout: str, data_dir: str) -> str:
    """The folder that ``Record.path`` is relative to (real path)."""
    if layout in ("cub", "flowers"):
        # Images live under images/<class>/ (CUB) or jpg/ (Flowers): paths keep that prefix.
        return os.path.realpath(data_dir)
    return os.path.realpath(os.path.join(data_dir, "imgs"))


def iter_records(layout: str, data_dir: str, decode: bool = True
                 ) -> Iterator[Record | Skip]:
    """Yields a Record or a Skip for every record of ``data_dir``, in file order.

    ``decode=False`` checks each image by its file header (JPEG or PNG) instead of decoding
    it: what the import keeps, except for images whose data is damaged past the header.

    Raises:
      ValueError: unknown layout, or an annotation file that is not what the layout needs.
      FileNotFoundError: no annotation file.
    """
    if layout not in SPLITS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    root = image_root(layout, data_dir)
    accepted: dict[str, _Candidate] = {}  # real image path -> first record that used it
    for item in _READERS[layout](data_dir):
        if isinstance(item, Skip):
            yield item
            continue
        try:
            yield _validate(item, SPLITS[layout], root, accepted, decode)
        except SkipError as e:
            yield Skip(item.locator, item.path, e.reason, e.detail)


def load_image(root: str, path: str) -> bytes:
    """The bytes of image ``path`` under ``root``, once checked to be a whole JPEG or PNG.

    Raises:
      SkipError: the path escapes ``root``, the file is missing, or it does not decode.
    """
    real = _resolve_inside(root, path)
    with open(real, "rb") as f:
        data = f.read()
    _check_image(data)
    return data


def clean_caption(text: str) -> str:
    """NFC-normalised caption without control, zero-width or surrogate characters.

    Whitespace runs (including newlines and non-breaking spaces) become one space; the
    result is "" for a blank caption.
    """
    # Control characters act as word separators (a stray tab or newline between words).
    kept = "".join(" " if unicodedata.category(c) == "Cc" else c for c in text)
    # Cf holds zero-width spaces/joiners, BOMs and soft hyphens; Cs lone surrogates from JSON.
    kept = "".join(c for c in kept if unicodedata.category(c) not in ("Cf", "Cs"))
    # Normalise after removing: a removed character may have separated a base from its mark.
    return unicodedata.normalize("NFC", " ".join(kept.split()))


# ----------------------------------------------------------------------- common checks

def _validate(item: _Candidate, splits: tuple[str, ...], root: str,
              accepted: dict[str, _Candidate], decode: bool = True) -> Record:
    """Applies the layout-independent checks, cheapest first (the image last)."""
    if item.split not in splits:
        raise SkipError(UNKNOWN_SPLIT, f"{item.split!r} not in {splits}")
    captions = tuple(c for c in map(clean_caption, item.captions) if c)
    if not captions:
        raise SkipError(NO_CAPTIONS, f"{len(item.captions)} blank" if item.captions else "")
    real = _resolve_inside(root, item.path)
    first = accepted.get(real)
    if first is not None:
        if (first.split, first.identity) == (item.split, item.identity):
            raise SkipError(DUPLICATE, f"same image as {first.locator}")
        raise SkipError(CONFLICT, f"{first.locator} has split {first.split!r}, "
                                  f"identity {first.identity!r}")
    if decode:
        load_image(root, item.path)
    else:
        _sniff_image(real)
    accepted[real] = item
    # The path of the file that was checked: symlinks and "x/../" resolved.
    return Record(item.split, item.identity, os.path.relpath(real, root), captions,
                  len(item.captions) - len(captions))


def _resolve_inside(root: str, path: str) -> str:
    """Real path of ``root/path``, checked to be a regular file inside ``root``.

    Symlinks are followed before the containment check, so a link pointing outside is
    refused like ``../`` or an absolute path.

    Raises:
      SkipError: ESCAPING_PATH or MISSING_IMAGE.
    """
    if not path or os.path.isabs(path) or "\0" in path:
        raise SkipError(ESCAPING_PATH, repr(path))
    real = os.path.realpath(os.path.join(root, path))
    if not _is_inside(root, real):
        raise SkipError(ESCAPING_PATH, f"{path!r} resolves to {real}")
    if not os.path.isfile(real):
        raise SkipError(MISSING_IMAGE, path)
    return real


def _is_inside(root: str, real: str) -> bool:
    """Whether the real path ``real`` is ``root`` or below it (both already resolved)."""
    return os.path.commonpath([root, real]) == root


# File signatures: the formats the import takes, and others it refuses by name.
_SIGNATURES = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF8": "GIF",
               b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"RIFF": "WEBP"}


def _sniff_image(real: str) -> None:
    """The header check of ``iter_records(decode=False)``: the file starts like a JPEG or a
    PNG. Raises SkipError with the reasons a decode would give (BAD_FORMAT for another
    image format, BAD_IMAGE for anything else)."""
    with open(real, "rb") as f:
        head = f.read(8)
    image_format = next((name for magic, name in _SIGNATURES.items()
                         if head.startswith(magic)), None)
    if image_format is None:
        raise SkipError(BAD_IMAGE, "empty file" if not head else "not an image file header")
    if image_format not in IMAGE_FORMATS:
        raise SkipError(BAD_FORMAT, image_format)


def _check_image(data: bytes) -> None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            image.load()  # decodes every pixel: this is what catches truncated files
    # PIL reports bad data with many exception types (OSError, SyntaxError, ValueError,
    # struct.error, DecompressionBombError, ...); any of them means "not a usable image".
    except Exception as e:  # noqa: BLE001
        raise SkipError(BAD_IMAGE, f"{type(e).__name__}: {e}") from None
    if image_format not in IMAGE_FORMATS:
        raise SkipError(BAD_FORMAT, str(image_format))


# ------------------------------------------------------------- JSON layouts (person search)

# Layout -> (accepted annotation file names, key of the image path).
JSON_LAYOUTS = {
    "cuhk_pedes": (("reid_raw.json", "caption_all.json"), "file_path"),
    "demo": (("reid_raw.json",), "file_path"),
    "icfg_pedes": (("ICFG-PEDES.json", "ICFG_PEDES.json"), "file_path"),
    "rstpreid": (("data_captions.json",), "img_path"),
}


def _json_reader(layout: str) -> Callable[[str], Iterator[_Candidate | Skip]]:
    names, path_key = JSON_LAYOUTS[layout]

    def read(data_dir: str) -> Iterator[_Candidate | Skip]:
        file_name, entries = _load_json_list(data_dir, names)
        for index, entry in enumerate(entries):
            locator = f"{file_name}[{index}]"
            try:
                yield _json_candidate(locator, entry, path_key)
            except SkipError as e:
                path = entry.get(path_key) if isinstance(entry, dict) else None
                yield Skip(locator, path if isinstance(path, str) else "", e.reason, e.detail)

    return read


def _load_json_list(data_dir: str, names: tuple[str, ...]) -> tuple[str, list]:
    """The first existing annotation file among ``names``, parsed; it must be a JSON list."""
    root = os.path.realpath(data_dir)
    for name in names:
        path = os.path.join(root, name)
        if os.path.exists(path):
            break
    else:
        raise FileNotFoundError(f"none of {names} in {data_dir}")
    if not _is_inside(root, os.path.realpath(path)):
        raise ValueError(f"{path} points outside {data_dir}")
    try:
        with open(path, "rb") as f:
            entries = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path} must hold a JSON list of records, not {type(entries).__name__}")
    return name, entries


def _json_candidate(locator: str, entry: object, path_key: str) -> _Candidate:
    """Checks the types of one JSON record; SkipError(MALFORMED) if they are wrong."""
    if not isinstance(entry, dict):
        raise SkipError(MALFORMED, f"a record must be an object, not {type(entry).__name__}")
    missing = [k for k in ("split", "id", "captions", path_key) if k not in entry]
    if missing:
        raise SkipError(MALFORMED, f"{MISSING_KEYS} {missing}")
    split, identity, captions, path = (entry[k] for k in ("split", "id", "captions", path_key))
    # bool is an int subclass, but True is no identity.
    if isinstance(identity, bool) or not isinstance(identity, (int, str)):
        raise SkipError(MALFORMED, f"'id' must be an int or string, not {identity!r}")
    if not isinstance(split, str) or not isinstance(path, str):
        raise SkipError(MALFORMED, f"'split' and {path_key!r} must be strings")
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise SkipError(MALFORMED, "'captions' must be a list of strings")
    return _Candidate(locator, split, str(identity), path, tuple(captions))


# ------------------------------------------------------- CUB / Flowers (Reed et al. 2016)

# Layout -> where its images are (relative to data_dir; the reader also looks in the other).
REED_IMAGE_FOLDERS = {"cub": "images/{class_name}", "flowers": "jpg"}
# The class lists, by the name of the split they give ("trainval" = train + val).
REED_CLASS_LISTS = {name: f"{name}classes.txt" for name in ("train", "trainval", "val", "test")}


def _reed_reader(layout: str) -> Callable[[str], Iterator[_Candidate | Skip]]:
    folder = REED_IMAGE_FOLDERS[layout]

    def read(data_dir: str) -> Iterator[_Candidate | Skip]:
        """Class folders of ``text_c10/`` listed in the split files; the class is the
        identity."""
        root = os.path.realpath(data_dir)
        text_root = os.path.join(root, "text_c10")
        for split, classes in reed_splits(root).items():
            for class_name in classes:
                locator = f"{split} class {class_name}"
                try:
                    class_dir = _resolve_dir(text_root, class_name)
                except SkipError as e:
                    yield Skip(locator, f"text_c10/{class_name}", e.reason, e.detail)
                    continue
                for file_name in sorted(os.listdir(class_dir)):
                    if file_name.endswith(".txt"):
                        yield _reed_candidate(root, split, class_name, file_name,
                                              folder.format(class_name=class_name))

    return read


def reed_splits(root: str) -> dict[str, list[str]]:
    """Split -> class names, from trainclasses.txt (or trainvalclasses - valclasses), etc.

    Raises:
      FileNotFoundError: none of the class lists is in ``root``.
    """
    read = {name: _read_class_list(root, file) for name, file in REED_CLASS_LISTS.items()}
    if all(classes is None for classes in read.values()):
        raise FileNotFoundError(f"no *classes.txt split files in {root}")
    val, test = read["val"] or [], read["test"] or []
    train = read["train"]
    if train is None:
        val_classes = set(val)
        train = [c for c in read["trainval"] or [] if c not in val_classes]
    return {"train": train, "val": val, "test": test}


def _read_class_list(root: str, name: str) -> list[str] | None:
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        return None
    if not _is_inside(root, os.path.realpath(path)):
        raise ValueError(f"{path} points outside {root}")
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8: {e}") from None


def _resolve_dir(parent: str, name: str) -> str:
    real = os.path.realpath(os.path.join(parent, name))
    if os.path.isabs(name) or not _is_inside(parent, real) or real == parent:
        raise SkipError(ESCAPING_PATH, repr(name))
    if not os.path.isdir(real):
        raise SkipError(MISSING_CLASS, name)
    return real


def _reed_candidate(root: str, split: str, class_name: str, file_name: str,
                    image_folder: str) -> _Candidate | Skip:
    text_path = f"text_c10/{class_name}/{file_name}"
    stem = file_name[:-len(".txt")]
    try:
        real = _resolve_inside(root, text_path)
        with open(real, encoding="utf-8") as f:
            captions = tuple(f.read().splitlines())
    except SkipError as e:
        return Skip(text_path, text_path, e.reason, e.detail)
    except UnicodeDecodeError as e:
        return Skip(text_path, text_path, NOT_UTF8, str(e))
    image = _find_reed_image(root, class_name, stem)
    if image is None:
        return Skip(text_path, f"{image_folder}/{stem}.*", MISSING_IMAGE,
                    "neither images/<class>/<stem>.* nor jpg/<stem>.*")
    return _Candidate(text_path, split, class_name, image, captions)


def _find_reed_image(root: str, class_name: str, stem: str) -> str | None:
    """``images/<class>/<stem>.*`` (CUB), else ``jpg/<stem>.*`` (Flowers), relative to root."""
    for folder in (f.format(class_name=class_name) for f in REED_IMAGE_FOLDERS.values()):
        pattern = os.path.join(glob.escape(os.path.join(root, folder)), glob.escape(stem) + ".*")
        matches = sorted(glob.glob(pattern))
        if matches:
            return f"{folder}/{os.path.basename(matches[0])}"
    return None


_READERS: dict[str, Callable[[str], Iterator[_Candidate | Skip]]] = {
    **{layout: _json_reader(layout) for layout in JSON_LAYOUTS},
    **{layout: _reed_reader(layout) for layout in REED_IMAGE_FOLDERS},
}
