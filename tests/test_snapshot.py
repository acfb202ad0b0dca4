"""The served state of a gallery (hgan/serving/snapshot.py): a damaged or foreign FAISS file
is refused by name, an IVF that lags the rows is used with the rest searched exactly, and
an IVF saved between the reads of a growing gallery is read again, not refused."""
import os

import numpy as np
import pytest

from hgan.serving import ann, gallery, snapshot
from hgan.serving.gallery import ANN_FILE

pytest.importorskip("faiss")


def _gallery(path, n, seed=0, dim=8):
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float16)
    g = gallery.Gallery.create(str(path), "m1", {"global": (dim,)})
    g.append([f"{seed}/{i}.png" for i in range(n)], {"global": rows})
    g.close()
    return str(path), rows


def _ivf(path, vectors, nlist=4):
    ann.save(ann.build(vectors, threshold=0, nlist=nlist, train_size=len(vectors)),
             os.path.join(path, ANN_FILE))


def test_a_gallery_with_its_own_ivf_opens_and_searches_through_it(tmp_path):
    path, rows = _gallery(tmp_path / "g", 400)
    _ivf(path, rows)
    state = snapshot.Snapshot.open(path, model="m1")
    assert len(state) == 400 and not state.stage1.exact and state.stage1.tail == 0
    assert state.store.paths()[7] == "0/7.png"
    assert state.key == snapshot.state_key(path)


@pytest.mark.parametrize("damage,message", [
    (lambda data: b"not a faiss index" * 4, r"cannot be read as an IVF index \(Index type"),
    (lambda data: data[:len(data) // 2], "cannot be read as an IVF index"),
    (lambda data: b"", "cannot be read as an IVF index"),
])
def test_a_faiss_file_that_cannot_be_read_is_refused_by_name(tmp_path, damage, message):
    path, rows = _gallery(tmp_path / "g", 400)
    _ivf(path, rows)
    file = os.path.join(path, ANN_FILE)
    with open(file, "rb") as f:
        data = f.read()
    with open(file, "wb") as f:
        f.write(damage(data))
    with pytest.raises(snapshot.IVFError, match=rf"ann\.faiss {message}.*; re-run hgan-search "
                                                r"index --index=.*g with its --savedmodel"):
        snapshot.Snapshot.open(path)


def test_a_foreign_ivf_is_refused_dimension_count_or_rows(tmp_path):
    path, rows = _gallery(tmp_path / "g", 400)
    rng = np.random.default_rng(9)
    _ivf(path, rng.normal(size=(400, 16)))  # another model's width
    with pytest.raises(snapshot.IVFError, match="indexes 16-d vectors and the gallery's "
                                                "global embeddings are 8-d"):
        snapshot.Snapshot.open(path)
    _ivf(path, np.concatenate([rows, rows[:100]]))  # more vectors than rows
    with pytest.raises(snapshot.IVFError, match="holds 500 vectors and the gallery 400 "
                                                "committed rows: it is not this gallery's"):
        snapshot.Snapshot.open(path, attempts=2)
    _ivf(path, rng.normal(size=(400, 8)))  # another gallery's, same size and width
    with pytest.raises(snapshot.IVFError, match="does not hold the gallery's row 0 under its "
                                                "id: it is another gallery's IVF"):
        snapshot.Snapshot.open(path)
    ann.save(ann.train(rows, 1), os.path.join(path, ANN_FILE))  # trained, never filled
    assert snapshot.Snapshot.open(path).stage1.tail == 400  # an empty IVF: all exact


def test_an_ivf_that_lags_the_rows_is_served_with_the_rest_exact(tmp_path):
    # What a killed index run leaves (rows committed, the IVF not yet extended), and what a
    # reader sees while a run is going.
    path, rows = _gallery(tmp_path / "g", 400)
    _ivf(path, rows[:300])
    state = snapshot.Snapshot.open(path)
    assert state.stage1.tail == 100
    state.stage1.index.nprobe = 4  # every list: the ranking is the exact one
    np.testing.assert_array_equal(state.stage1.search(rows[[5, 350]], 3)[1][:, 0], [5, 350])


def test_an_ivf_saved_between_two_reads_of_a_growing_gallery_is_read_again(tmp_path,
                                                                           monkeypatch):
    path, rows = _gallery(tmp_path / "g", 300)
    extra = np.random.default_rng(1).normal(size=(100, 8)).astype(np.float16)
    # The reader read 300 rows; the writer then saved an IVF of 400 before committing
    # them (not what index does, the worst case of the race): the retry sees the commit.
    _ivf(path, np.concatenate([rows, extra]))
    waits = []

    def commit_meanwhile(seconds):
        waits.append(seconds)
        if len(waits) == 1:
            g = gallery.Gallery.open(path, writable=True)
            g.append([f"new/{i}" for i in range(100)], {"global": extra})
            g.close()

    monkeypatch.setattr(snapshot.time, "sleep", commit_meanwhile)
    state = snapshot.Snapshot.open(path)
    assert len(state) == 400 and state.stage1.tail == 0 and len(waits) == 1


def test_the_state_key_changes_with_each_commit_and_each_ivf(tmp_path):
    path, rows = _gallery(tmp_path / "g", 300)
    before = snapshot.state_key(path)
    assert before[1] is None  # no IVF
    g = gallery.Gallery.open(path, writable=True)
    g.append(["x"], {"global": rows[:1]})
    g.close()
    committed = snapshot.state_key(path)
    assert committed[0] != before[0]
    _ivf(path, np.concatenate([rows, rows[:1]]))
    assert snapshot.state_key(path)[1] is not None and snapshot.state_key(path)[0] == \
        committed[0]


def test_a_damaged_gallery_is_refused_before_its_ivf_is_read(tmp_path):
    path, rows = _gallery(tmp_path / "g", 400)
    _ivf(path, rows)
    os.truncate(os.path.join(path, "feat.global.bin"), 100 * 8 * 2)
    with pytest.raises(gallery.GalleryDamaged, match=r"feat\.global\.bin holds 100 whole rows "
                                                     "of the 400"):
        snapshot.Snapshot.open(path)
