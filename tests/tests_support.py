"""Helpers shared by the tests: the command-line runners, raw-layout writers and the
headless browser."""
import contextlib
import io
import json
import os
import subprocess
import sys
from importlib import metadata

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def console_script(name: str) -> str:
    """The path of the installed package's console script ``name`` (beside this Python)."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(path):
        raise AssertionError(f"no console script {path}: install the package (pip install -e .)")
    return path


def run_cli(*args, timeout=600, cwd=ROOT) -> str:
    """Runs a console script (``hgan-train ARGS``) or ``python ARGS`` (a module or a top-level
    script) from ``cwd``; returns stdout, fails with stderr's tail."""
    command = ([console_script(args[0]), *args[1:]] if args[0].startswith("hgan-")
               else [sys.executable, *args])
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stderr[-4000:]}")
    return proc.stdout


def run_command(name: str, *args, cwd=ROOT) -> str:
    """Runs the installed console script ``name`` (``hgan-eval``...) with ``args`` in this
    process: its entry point from the package's metadata, ``sys.argv`` and the working
    directory as a shell would set them, absl's parsing and exit; returns stdout and fails
    with the exit status. A test that needs the command as a process of its own (killed,
    or its import side effects) uses ``run_cli``; this one saves the seconds a new
    process spends importing TensorFlow.

    The command's flags are removed again afterwards, so the next command of the process
    can define its own (``hgan.cli`` defines flags only when a command runs)."""
    from absl import flags
    (entry,) = [e for e in metadata.entry_points(group="console_scripts") if e.name == name]
    before = set(flags.FLAGS)
    argv, where, main_doc = sys.argv, os.getcwd(), sys.modules["__main__"].__doc__
    stdout = io.StringIO()
    sys.argv = [name, *map(str, args)]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout):
            entry.load()()
    except SystemExit as e:
        if e.code not in (None, 0):
            raise AssertionError(f"{name} {' '.join(map(str, args))} exited {e.code}:\n"
                                 f"{stdout.getvalue()[-3000:]}") from None
    finally:
        sys.argv, sys.modules["__main__"].__doc__ = argv, main_doc
        os.chdir(where)
        for flag in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, flag)
    return stdout.getvalue()


def post_json(url: str, body: dict, timeout: float = 120) -> dict:
    """POSTs ``body`` as JSON to ``url`` and returns the decoded JSON answer."""
    import urllib.request
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.loads(r.read())


def image_bytes(fmt="JPEG", colour=(200, 30, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 32), colour).save(buffer, fmt)
    return buffer.getvalue()


def write(path, data):
    """Writes ``data`` (bytes, or str as UTF-8) to the pathlib ``path``, making folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def make_reed(root, classes, flowers=False, split_files=None, colours=None):
    """Reed et al.'s layout; ``classes``: {class: number of images}; ``colours``: {class:
    RGB} of its images (default: all the same)."""
    for class_name, count in classes.items():
        for index in range(count):
            stem = f"{class_name}_{index:04d}"
            image = (root / "jpg" / f"{stem}.jpg" if flowers
                     else root / "images" / class_name / f"{stem}.jpg")
            write(image, image_bytes(colour=(colours or {}).get(class_name, (200, 30, 30))))
            write(root / "text_c10" / class_name / f"{stem}.txt",
                  f"this {class_name} has {index} spots.\n\nit is small.\n")
    for name, listed in (split_files or {}).items():
        write(root / name, "".join(f"{c}\n" for c in listed))


def pedes_entry(path, split="train", pid=1, captions=("A man in a red shirt.",),
                path_key="file_path"):
    """One record of the person-search JSON layouts (CUHK-PEDES's reid_raw.json)."""
    return {"split": split, "id": pid, "captions": list(captions), path_key: path,
            "processed_tokens": []}


# The JSON layouts: annotation file, key of the image path, and the image folder of each
# split in the files make_pedes writes (CUHK-PEDES keeps its test images in test_query/).
PEDES_LAYOUTS = {
    "cuhk_pedes": ("reid_raw.json", "file_path",
                   {"train": "CUHK01", "val": "cam_a", "test": "test_query"}),
    "demo": ("reid_raw.json", "file_path", {"train": "demo", "val": "demo", "test": "demo"}),
    "icfg_pedes": ("ICFG-PEDES.json", "file_path", {"train": "train", "test": "test"}),
    "rstpreid": ("data_captions.json", "img_path", {"train": "", "val": "", "test": ""}),
}


def make_pedes(root, layout="cuhk_pedes", identities=None, shots=2, captions=None,
               annotation=None):
    """A person-search JSON layout under ``root``: ``identities`` {split: count} (default 3
    / 1 / 1, or 3 / 1 for ICFG-PEDES), ``shots`` images each, two captions per image that
    no other image has (or ``captions(split, pid, shot)`` -> list). ``annotation``: the
    file name, default the layout's. Returns the records written."""
    name, path_key, folders = PEDES_LAYOUTS[layout]
    identities = identities or {split: (3 if split == "train" else 1) for split in folders}
    entries, pid = [], 0
    for split, count in identities.items():
        for _ in range(count):
            pid += 1
            for shot in range(shots):
                path = f"{folders[split]}/{pid:04d}_{shot}.jpg".lstrip("/")
                write(root / "imgs" / path, image_bytes(colour=(40 * pid % 256, 30, 20 * shot)))
                texts = (captions(split, pid, shot) if captions else
                         [f"a person {pid} in a red coat, shot {shot}.",
                          f"person {pid} walks, shot {shot}."])
                entries.append(pedes_entry(path, split, pid, texts, path_key))
    write(root / (annotation or name), json.dumps(entries))
    return entries


# A WordPiece vocabulary in which "wearing" is two pieces ("wear" "##ing").
WORDPIECES = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "woman", "in", "red",
              "coat", "black", "shoes", "and", "with", "bag", ".", "wear", "##ing"]


def write_wordpiece_vocab(path) -> str:
    """``WORDPIECES`` as a vocab.txt at the pathlib ``path``."""
    write(path, "\n".join(WORDPIECES) + "\n")
    return str(path)


def headless_browser():
    """Headless Debian chromium through its chromedriver (scripts/test.sh installs both)."""
    import shutil
    webdriver = pytest.importorskip("selenium.webdriver")
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        pytest.skip("chromium / chromedriver not installed (scripts/test.sh installs them "
                    "with apt when it can)")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


# Captions naming which side of the image each colour is on (the image's left and right),
# for the flip: a flipped image's caption must say the other.
SIDED_CAPTIONS = ("a {c} bag on the left and a white cap on the right.",
                  "the right shows a white cap, the left a {c} bag.")
SIDED_PHRASES = (("a {c} bag", "the left", "a white cap", "the right"),
                 ("the right", "a white cap", "the left", "a {c} bag"))
# The same captions and phrases of a flipped image.
SIDED_FLIPPED = ("a {c} bag on the right and a white cap on the left.",
                 "the left shows a white cap, the right a {c} bag.")
SIDED_FLIPPED_PHRASES = (("a {c} bag", "the right", "a white cap", "the left"),
                         ("the left", "a white cap", "the right", "a {c} bag"))
SIDED_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "the", "on", "and", "shows", "left",
               "right", "bag", "white", "cap", "red", "green", "blue", ",", "."]


def byte_spans(caption: str, phrases) -> list:
    """``(text, start, end)`` of each phrase, found in order in ``caption`` (UTF-8 bytes)."""
    data, out, start = caption.encode(), [], 0
    for phrase in phrases:
        start = data.index(phrase.encode(), start)
        out.append((phrase, start, start + len(phrase.encode())))
        start += 1
    return out


def write_sided_dataset(root, identities: int = 4, shots: int = 2) -> str:
    """One ``train`` split (plus one-identity val / test) of images coloured on their left
    half only (red, green or blue by identity; the right half white), each with the two
    ``SIDED_CAPTIONS``, written through the schema with ``vocab.txt`` (``SIDED_VOCAB``)."""
    import numpy as np

    from hgan.data import records
    from hgan.tf_compat import tf
    os.makedirs(root, exist_ok=True)
    colours = ("red", "green", "blue")
    manifest = {"schema_version": records.SCHEMA_VERSION, "dataset": "sided", "splits": {},
                "skipped": []}
    for split, count in (("train", identities), ("val", 1), ("test", 1)):
        name = records.shard_name(split, 0, 1)
        with tf.io.TFRecordWriter(os.path.join(root, name)) as writer:
            for label in range(count):
                c = colours[label % 3]
                pixels = np.full((24, 12, 3), 255, np.uint8)
                pixels[:, :6] = 0
                pixels[:, :6, label % 3] = 200 + 10 * (label // 3)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="PNG")
                captions = [t.format(c=c) for t in SIDED_CAPTIONS]
                phrases = [byte_spans(caption, [p.format(c=c) for p in ps])
                           for caption, ps in zip(captions, SIDED_PHRASES)]
                for shot in range(shots):
                    writer.write(records.make_example(
                        buffer.getvalue(), f"{split}/{label}_{shot}.png", label, str(label),
                        captions, phrases).SerializeToString())
        manifest["splits"][split] = {"images": count * shots, "captions": 2 * count * shots,
                                     "identities": count, "shards": [name]}
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    with open(os.path.join(root, "vocab.txt"), "w") as f:
        f.write("\n".join(SIDED_VOCAB) + "\n")
    return str(root)
