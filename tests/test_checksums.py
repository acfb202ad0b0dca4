"""The gallery's checksums (hgan/serving/checksums.py): bytes changed in place, the file's
size unchanged, are found and named by file and rows; an intact gallery verifies clean
however it was written (appends across chunks, a resumed or repaired writer, a merge)."""
import json
import os

import numpy as np
import pytest

from hgan.serving import checksums, gallery
from tests_support import run_command

FEATURES = {"global": (4,), "word": (3, 2)}
ROWS_PER_CHUNK = 3


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of 3 rows, so that a few rows make several chunks."""
    monkeypatch.setattr(checksums, "CHUNK_ROWS", ROWS_PER_CHUNK)


def _rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"global": rng.normal(size=(n, 4)), "word": rng.normal(size=(n, 3, 2))}


def _gallery(path, sizes=(2, 5, 1, 3), first=0, dtype="float16"):
    """A gallery appended in batches of ``sizes`` rows (they straddle the chunks)."""
    g = gallery.Gallery.create(str(path), "m1", FEATURES, dtype=dtype)
    row = first
    for seed, n in enumerate(sizes):
        g.append([f"img/{row + i}.jpg" for i in range(n)], _rows(n, seed))
        row += n
    g.close()
    return str(path)


def _flip(file, offset):
    """Changes one byte of ``file`` in place; its size stays."""
    size = os.path.getsize(file)
    with open(file, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))
    assert os.path.getsize(file) == size


def _recorded(path):
    with open(os.path.join(path, gallery.MANIFEST)) as f:
        return json.load(f)["checksums"]


def _from_scratch(path):
    """The checksums of the gallery's committed rows computed anew from its files."""
    store = gallery.Gallery.open(path)
    state = checksums.empty()
    for name, codec in store.codecs.items():
        size = codec.record.itemsize  # bytes per image of the file, as stored
        checksums.rebuild(state, path, f"feat.{name}.bin", len(store),
                          lambda r, size=size: (r + 1) * size)
    ends = np.cumsum([len((json.dumps(p) + "\n").encode()) for p in store.paths()])
    checksums.rebuild(state, path, gallery.PATHS, len(store), lambda r: int(ends[r]))
    return state


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_an_intact_gallery_verifies_clean_and_its_checksums_are_its_files(tmp_path, dtype):
    path = _gallery(tmp_path / "g", dtype=dtype)
    verdict = gallery.Gallery.open(path).verify()
    assert verdict.ok and verdict.recorded and verdict.files == 3
    assert verdict.checked_bytes == sum(os.path.getsize(os.path.join(path, f)) for f in
                                        ("feat.global.bin", "feat.word.bin", gallery.PATHS))
    recorded = _recorded(path)
    assert recorded == _from_scratch(path)
    assert len(recorded["files"]["feat.global.bin"]["crc"]) == 4  # 11 rows in chunks of 3


@pytest.mark.parametrize("file,row_bytes", [("feat.word.bin", 12), ("feat.global.bin", 8)])
def test_a_byte_changed_in_place_is_named_by_file_and_rows(tmp_path, file, row_bytes):
    path = _gallery(tmp_path / "g")
    _flip(os.path.join(path, file), 7 * row_bytes + 1)  # row 7: chunk 2, rows 6-8
    store = gallery.Gallery.open(path)  # the sizes are right: the open does not see it
    verdict = store.verify()
    assert not verdict.ok
    (bad,) = verdict.mismatches
    assert (bad.file, bad.rows, bad.bytes) == (file, (6, 8), (6 * row_bytes, 9 * row_bytes))
    assert str(bad).startswith(f"{file}: rows 6-8 (bytes {6 * row_bytes}-"
                               f"{9 * row_bytes - 1}) differ from what was written")


def test_a_changed_path_and_the_last_partial_chunk_are_named(tmp_path):
    path = _gallery(tmp_path / "g")
    paths = os.path.join(path, gallery.PATHS)
    _flip(paths, os.path.getsize(paths) - 4)  # in row 10, the last (partial) chunk: 9-10
    _flip(os.path.join(path, "feat.global.bin"), 0)
    verdict = gallery.Gallery.open(path).verify()
    assert [(m.file, m.rows) for m in verdict.mismatches] == [
        ("feat.global.bin", (0, 2)), (gallery.PATHS, (9, 10))]


def test_the_command_exits_1_naming_the_file_and_rows_and_0_when_intact(tmp_path):
    path = _gallery(tmp_path / "g")
    out = run_command("hgan-search", "verify", f"--index={path}")
    assert "verified: 11 rows" in out and "no byte differs" in out
    _flip(os.path.join(path, "feat.word.bin"), 12 * 4)  # row 4
    with pytest.raises(AssertionError, match="exited 1") as failed:
        run_command("hgan-search", "verify", f"--index={path}")
    assert "feat.word.bin: rows 3-5" in str(failed.value)


def test_a_resumed_writer_keeps_the_checksums_right(tmp_path):
    path = _gallery(tmp_path / "g", sizes=(4,))
    # An append killed before its commit: rows past the committed ones, dropped on reopen.
    with open(os.path.join(path, "feat.global.bin"), "ab") as f:
        f.write(b"\1" * 8)
    with open(os.path.join(path, gallery.PATHS), "ab") as f:
        f.write(b'"img/4.jpg"\n')
    g = gallery.Gallery.open(path, writable=True)
    g.append(["img/4.jpg", "img/5.jpg", "img/6.jpg"], _rows(3, 9))
    g.close()
    assert gallery.Gallery.open(path).verify().ok
    assert _recorded(path) == _from_scratch(path)


def test_a_writer_that_cuts_a_gallery_back_checksums_the_rows_it_keeps(tmp_path):
    path = _gallery(tmp_path / "g")
    os.truncate(os.path.join(path, "feat.word.bin"), 12 * 7 + 5)  # 7 whole rows
    g = gallery.Gallery.open(path, writable=True)
    assert len(g) == 7 and g.repaired
    assert g.verify().ok and _recorded(path) == _from_scratch(path)
    g.append(["again/7.jpg"], _rows(1, 4))
    g.close()
    assert gallery.Gallery.open(path).verify().ok
    assert _recorded(path) == _from_scratch(path)


def test_a_gallery_written_without_checksums_gets_them_from_a_writer(tmp_path):
    path = _gallery(tmp_path / "g")
    manifest = json.load(open(os.path.join(path, gallery.MANIFEST)))
    del manifest["checksums"]
    json.dump(manifest, open(os.path.join(path, gallery.MANIFEST), "w"))
    verdict = gallery.Gallery.open(path).verify()
    assert verdict.ok and not verdict.recorded
    gallery.Gallery.open(path, writable=True).close()
    assert _recorded(path) == _from_scratch(path)


def test_a_merge_checksums_its_rows_and_refuses_a_damaged_shard(tmp_path):
    shards = [_gallery(tmp_path / "s0", sizes=(2, 2)),
              _gallery(tmp_path / "s1", sizes=(5,), first=4)]
    merged = gallery.merge(str(tmp_path / "all"), shards)
    merged.close()
    assert len(merged) == 9 and merged.verify().ok
    assert _recorded(merged.path) == _from_scratch(merged.path)
    _flip(os.path.join(shards[1], "feat.global.bin"), 3 * 8)  # its row 3
    with pytest.raises(gallery.GalleryDamaged, match="feat.global.bin: rows 3-4"):
        gallery.merge(str(tmp_path / "again"), shards)


def test_the_command_checks_the_ivf_against_the_crc_its_writer_recorded(tmp_path):
    from hgan.serving import ann, searcher
    path = _gallery(tmp_path / "g", sizes=(60,))
    vectors = gallery.Gallery.open(path).array("global")
    searcher.write_ann(os.path.join(path, gallery.ANN_FILE),
                       ann.build(vectors, threshold=10, nlist=2), {"trained_on": 60})
    out = run_command("hgan-search", "verify", f"--index={path}")
    assert "no byte differs" in out and "ann.faiss verified" in out
    ivf = os.path.join(path, gallery.ANN_FILE)
    _flip(ivf, os.path.getsize(ivf) // 2)
    with pytest.raises(AssertionError, match="exited 1") as failed:
        run_command("hgan-search", "verify", f"--index={path}")
    assert "ann.faiss differs from what was written" in str(failed.value)
