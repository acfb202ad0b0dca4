"""Synthetic demo set (data_prep/demo.py) and the two commands that make demo TFRecords."""
import json
import os
import random
import subprocess
import sys

import pytest
from PIL import Image

from data_prep import demo, importers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_writes_the_cuhk_pedes_layout(tmp_path):
    demo.generate(str(tmp_path), identities=10, shots=3, seed=4)
    entries = json.loads((tmp_path / "reid_raw.json").read_text())
    assert len(entries) == 30
    assert all(set(e) == {"split", "captions", "file_path", "processed_tokens", "id"}
               for e in entries)
    splits = {s: {e["id"] for e in entries if e["split"] == s} for s in ("train", "val", "test")}
    assert [len(ids) for ids in splits.values()] == [6, 2, 2]
    assert not (splits["train"] & splits["val"] or splits["train"] & splits["test"])
    for e in entries:
        assert len(e["captions"]) == 2 and e["captions"][0] != e["captions"][1]
        assert e["processed_tokens"][0][:2] == e["captions"][0].lower().split()[:2]
        with Image.open(tmp_path / "imgs" / e["file_path"]) as image:
            assert (image.format, image.size, image.mode) == ("JPEG", (64, 128), "RGB")
    items = list(importers.iter_records("cuhk_pedes", str(tmp_path)))
    assert all(isinstance(i, importers.Record) for i in items) and len(items) == 30


def test_same_seed_same_files_other_seed_other_people(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        demo.generate(str(tmp_path / name), identities=4, shots=2, seed=seed)

    def files(name):
        root = tmp_path / name
        return {p: (root / p).read_bytes() for p in
                ["reid_raw.json"] + [f"imgs/demo/{i:04d}_{s}.jpg" for i in (1, 4) for s in (0, 1)]}

    assert files("a") == files("b")
    assert demo.sample_people(4, 0) != demo.sample_people(4, 1)
    assert files("a")["imgs/demo/0001_0.jpg"] != files("c")["imgs/demo/0001_0.jpg"]


def test_identities_differ_but_share_attributes():
    people = demo.sample_people(100, seed=0)
    assert len({p.described() for p in people}) == 100
    upper_colours = [p.upper[0] for p in people]
    # Overlap: a colour alone never tells identities apart.
    assert max(upper_colours.count(c) for c in set(upper_colours)) > 5
    assert {p.lower[1] for p in people} == set(demo.LOWER_TYPES)
    assert {p.bag is None for p in people} == {True, False}
    assert all(p.lower[1] != "skirt" for p in people if p.gender == "man")


def test_captions_describe_the_person():
    person = demo.Person(gender="woman", upper=("red", "jacket"), lower=("black", "pants"),
                         shoes="white", hat=None, bag=("blue", "shoulder bag"), hair="brown",
                         long_hair=True, skin=0)
    rng = random.Random(0)
    for _ in range(20):
        text = demo.caption(person, rng)
        assert "red" in text and "jacket" in text and "black" in text
        assert "white" in text and "blue" in text
        assert text[0].isupper() and text.endswith(".")
        assert " he " not in text.lower()


def test_shots_of_one_identity_differ():
    person = demo.sample_people(1, seed=0)[0]
    first, second = (demo.draw_person(person, random.Random(shot)) for shot in range(2))
    assert first.size == second.size == (demo.WIDTH, demo.HEIGHT)
    assert first.tobytes() != second.tobytes()


@pytest.mark.slow
def test_documented_commands(tmp_path):
    """``python -m data_prep.demo`` then ``python -m data_prep --dataset=demo`` (the modules
    behind hgan-demo-data and hgan-prep)."""
    raw, out = tmp_path / "raw", tmp_path / "out"
    subprocess.run([sys.executable, "-m", "data_prep.demo", f"--output_dir={raw}",
                    "--identities=5", "--shots=2", "--seed=3"], cwd=REPO, check=True, timeout=120)
    result = subprocess.run(
        [sys.executable, "-m", "data_prep", "--dataset=demo", f"--data_dir={raw}",
         f"--output_dir={out}", "--strict", "--bert=none"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == "demo" and manifest["skipped"] == []
    assert {s: i["images"] for s, i in manifest["splits"].items()} == {
        "train": 6, "val": 2, "test": 2}
