"""The on-disk gallery (hgan/serving/gallery.py) and stage-1 search (hgan/serving/ann.py)."""
import contextlib
import os

import numpy as np
import pytest

from hgan.serving import ann, gallery

FEATURES = {"global": (4,), "word": (3, 2)}


def _rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"global": rng.normal(size=(n, 4)), "word": rng.normal(size=(n, 3, 2))}


def test_append_reopen_and_memory_map(tmp_path):
    path = str(tmp_path / "g")
    g = gallery.Gallery.create(path, "m1", FEATURES)
    a, b = _rows(3, 0), _rows(2, 1)
    g.append(["x/0.jpg", "x/1.jpg", "ü 2.jpg"], a)
    g.append(["y/0.jpg", "y/1.jpg"], b)
    again = gallery.Gallery.open(path, model="m1")
    assert len(again) == 5 and again.paths()[2] == "ü 2.jpg" and "y/1.jpg" in again
    word = again.array("word")
    assert isinstance(word, np.memmap) and word.dtype == np.float16 and word.shape == (5, 3, 2)
    np.testing.assert_allclose(word[3:], b["word"].astype(np.float16))
    assert again.bytes_per_item() == (4 + 6) * 2
    with pytest.raises(PermissionError):
        again.append(["z"], _rows(1))


def test_a_crash_between_write_and_commit_loses_nothing_committed(tmp_path):
    path = str(tmp_path / "g")
    g = gallery.Gallery.create(path, "m1", FEATURES, dtype="float32")
    g.append(["a", "b"], _rows(2))
    g.close()
    # Rows written after the last commit (an interrupted append): dropped on reopen.
    with open(os.path.join(path, "feat.global.bin"), "ab") as f:
        f.write(b"\0" * 4 * 4)
    with open(os.path.join(path, gallery.PATHS), "ab") as f:
        f.write(b'"half')
    g = gallery.Gallery.open(path, writable=True)
    assert len(g) == 2 and g.paths() == ["a", "b"]
    g.append(["c"], _rows(1, 5))
    g = gallery.Gallery.open(path)
    assert g.paths() == ["a", "b", "c"] and g.array("global").shape == (3, 4)
    np.testing.assert_allclose(g.array("global")[2], _rows(1, 5)["global"][0], rtol=1e-6)


def test_bad_input_is_refused_with_a_clear_error(tmp_path):
    path = str(tmp_path / "g")
    g = gallery.Gallery.create(path, "m1", FEATURES)
    with pytest.raises(ValueError, match="shape"):
        g.append(["a"], {"global": np.zeros((1, 5)), "word": np.zeros((1, 3, 2))})
    with pytest.raises(ValueError, match="features"):
        g.append(["a"], {"global": np.zeros((1, 4))})
    with pytest.raises(FileExistsError):
        gallery.Gallery.create(path, "m1", FEATURES)
    with pytest.raises(gallery.ModelMismatch, match="another model"):
        gallery.Gallery.open(path, model="m2")
    with pytest.raises(FileNotFoundError, match="not a gallery"):
        gallery.Gallery.open(str(tmp_path / "nothing"))
    assert len(gallery.Gallery.open(path)) == 0  # nothing half-written


def test_shards_merge_into_one_gallery_in_shard_order(tmp_path):
    parts = []
    for j in range(3):
        p = str(tmp_path / f"s{j}")
        gallery.Gallery.create(p, "m1", FEATURES).append([f"{j}/{i}" for i in range(j + 1)],
                                                         _rows(j + 1, j))
        parts.append(p)
    merged = gallery.merge(str(tmp_path / "all"), parts)
    assert merged.paths() == ["0/0", "1/0", "1/1", "2/0", "2/1", "2/2"]
    np.testing.assert_allclose(merged.array("global")[3:],
                               _rows(3, 2)["global"].astype(np.float16))
    other = str(tmp_path / "other")
    gallery.Gallery.create(other, "m2", FEATURES)
    with pytest.raises(gallery.ModelMismatch):
        gallery.merge(str(tmp_path / "bad"), [parts[0], other])
    with pytest.raises(ValueError, match="disjoint"):
        gallery.merge(str(tmp_path / "dup"), [parts[1], parts[1]])


def test_exact_search_is_the_brute_force_ranking():
    rng = np.random.default_rng(0)
    vectors, queries = rng.normal(size=(1000, 16)), rng.normal(size=(5, 16))
    scores, ids = ann.Searcher(vectors, chunk=128).search(queries, 7)
    cos = ann.normalise(queries) @ ann.normalise(vectors).T
    np.testing.assert_array_equal(ids, np.argsort(-cos, axis=1)[:, :7])
    np.testing.assert_allclose(scores, np.sort(cos, axis=1)[:, ::-1][:, :7], rtol=1e-5)
    assert ann.Searcher(vectors[:3]).search(queries, 10)[1].shape == (5, 3)  # k capped


def test_ivf_recall_and_the_shard_merge_is_faiss_own():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(50, 32))
    vectors = centres[rng.integers(0, 50, 6000)] + 0.3 * rng.normal(size=(6000, 32))
    queries = vectors[rng.choice(6000, 40)] + 0.1 * rng.normal(size=(40, 32))
    exact = ann.Searcher(vectors).search(queries, 20)[1]
    index = ann.build(vectors, threshold=1000, nlist=32, train_size=4000)
    approx = ann.Searcher(vectors, index, nprobe=8).search(queries, 20)[1]
    recall = np.mean([len(set(a) & set(e)) / 20 for a, e in zip(approx, exact)])
    assert recall > 0.9, recall
    assert ann.build(vectors[:500], threshold=1000) is None  # small: exact
    # Three shards add to copies of one trained quantizer, then FAISS merges them.
    trained = ann.empty_copy(index)
    bounds = [0, 2000, 3500, 6000]
    shards = [ann.add(ann.empty_copy(trained), vectors[a:b]) for a, b in zip(bounds, bounds[1:])]
    merged = ann.merge(shards, bounds[:-1])
    assert merged.ntotal == 6000
    got = ann.Searcher(vectors, merged, nprobe=8).search(queries, 20)[1]
    np.testing.assert_array_equal(got, approx)  # the same index as one built at once


def test_ivf_pq_rescores_its_short_list_exactly_and_recalls_exact_search_at_100():
    rng = np.random.default_rng(0)
    n, dim = 20_000, 32
    centres = ann.normalise(rng.normal(size=(200, dim)))
    vectors = ann.normalise(centres[rng.integers(0, 200, n)] + 0.6 / np.sqrt(dim)
                            * rng.normal(size=(n, dim))).astype(np.float16)
    queries = ann.normalise(vectors[rng.choice(n, 50)].astype(np.float32)
                            + 0.5 / np.sqrt(dim) * rng.normal(size=(50, dim)))
    index = ann.build(vectors, threshold=0, kind="pq", nlist=128, train_size=10_000)
    assert ann.kind_of(index) == "pq" and index.code_size == dim // 8
    searcher = ann.Searcher(vectors, index, nprobe=16)
    assert searcher.refine == ann.REFINE
    recall = ann.recall_at(searcher, vectors, queries, k=100)
    assert recall >= 0.95, recall
    # Returned scores are the stored vectors' exact cosines, best first.
    scores, ids = searcher.search(queries[:3], 10)
    exact = np.einsum("qkd,qd->qk", ann.normalise(vectors[ids].astype(np.float32)),
                      queries[:3])
    np.testing.assert_allclose(scores, exact, rtol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)
    # Its own gallery's rows are where they belong; another gallery's IVF is not.
    assert ann.misplaced(index, vectors) is None
    foreign = ann.build(vectors[::-1].copy(), threshold=0, kind="pq", nlist=16,
                        train_size=4096)
    assert ann.misplaced(foreign, vectors) is not None
    # The size rule: IVF-Flat while its float32 vectors fit FLAT_MAX_BYTES (1 GiB).
    assert ann.kind_for(524_288, 512) == "flat" and ann.kind_for(524_289, 512) == "pq"


def test_nprobe_defaults_by_the_ivf_kind_and_a_lone_query_ranks_as_in_a_batch(monkeypatch):
    faiss = pytest.importorskip("faiss")
    from hgan.serving import openmp
    single = []  # the thread count inside each one-thread block
    entered = openmp.one_thread

    @contextlib.contextmanager
    def recorded():
        with entered():
            single.append(faiss.omp_get_max_threads())
            yield

    monkeypatch.setattr(openmp, "one_thread", recorded)
    rng = np.random.default_rng(2)
    vectors = ann.normalise(rng.normal(size=(4000, 16))).astype(np.float32)
    queries = ann.normalise(rng.normal(size=(6, 16)))
    for kind in ann.KINDS:
        index = ann.build(vectors, threshold=0, kind=kind, nlist=64, train_size=4000)
        assert ann.Searcher(vectors, index).index.nprobe == ann.NPROBE[kind]
        searcher = ann.Searcher(vectors, index, nprobe=5)
        assert index.nprobe == 5
        threads = faiss.omp_get_max_threads()
        single.clear()
        batch = searcher.search(queries, 10)
        assert single == []  # a batch keeps FAISS's threads
        for q in range(len(queries)):  # a lone query runs FAISS on one OpenMP thread
            alone = searcher.search(queries[q], 10)
            np.testing.assert_array_equal(alone[1][0], batch[1][q])
            np.testing.assert_allclose(alone[0][0], batch[0][q], rtol=1e-6)
        assert single == [1] * len(queries)
        assert faiss.omp_get_max_threads() == threads  # restored after each
    with pytest.raises(ValueError, match="nprobe must be >= 1"):
        ann.Searcher(vectors, index, nprobe=0)


def _committed(path, n=6, dtype="float32"):
    """A closed gallery of n rows "0" .. "n-1" (rows of seed 3) → the rows appended."""
    rows = _rows(n, 3)
    g = gallery.Gallery.create(path, "m1", FEATURES, dtype=dtype)
    g.append([str(i) for i in range(n)], rows)
    g.close()
    return rows


def test_a_feature_file_cut_short_is_refused_by_name_and_a_writer_keeps_its_whole_rows(
        tmp_path):
    path = str(tmp_path / "g")
    rows = _committed(path)
    word = os.path.join(path, "feat.word.bin")
    os.truncate(word, 4 * 6 * 4 + 5)  # 4 whole rows of 6 floats, and part of the fifth
    with pytest.raises(gallery.GalleryDamaged,
                       match=r"feat\.word\.bin holds 4 whole rows of the 6 that gallery\.json "
                             r"commits \(cut short\): re-run hgan-search index --index=.*g "
                             "with its --savedmodel and images"):
        gallery.Gallery.open(path)
    g = gallery.Gallery.open(path, writable=True)  # what index does first: the repair
    assert g.repaired and "kept its first 4 rows, the other 2 are indexed again" in g.repaired
    assert len(g) == 4 and g.paths() == ["0", "1", "2", "3"]
    g.append(["4", "5"], {k: v[4:] for k, v in rows.items()})
    g.close()
    again = gallery.Gallery.open(path)
    assert again.paths() == [str(i) for i in range(6)]
    for name in FEATURES:
        np.testing.assert_allclose(again.array(name), rows[name], rtol=1e-6)


def test_a_path_list_cut_short_or_garbled_is_refused_and_repaired(tmp_path):
    path = str(tmp_path / "g")
    _committed(path)
    file = os.path.join(path, gallery.PATHS)
    data = open(file, "rb").read()
    open(file, "wb").write(data[:-3])  # the last line cut
    with pytest.raises(gallery.GalleryDamaged, match=r"paths\.jsonl holds 21 of the 24 bytes"):
        gallery.Gallery.open(path)
    g = gallery.Gallery.open(path, writable=True)
    assert len(g) == 5 and g.paths() == ["0", "1", "2", "3", "4"]
    g.close()
    # A line that is not a JSON string, the size intact: the reader finds it in the list.
    path = str(tmp_path / "g2")
    _committed(path)
    file = os.path.join(path, gallery.PATHS)
    open(file, "wb").write(data[:8] + b"?" + data[9:])  # line 3 ("2") garbled
    with pytest.raises(gallery.GalleryDamaged, match=r"paths\.jsonl lists 2 readable paths "
                                                     "where gallery.json commits 6 rows: re-run"):
        gallery.Gallery.open(path).paths()
    g = gallery.Gallery.open(path, writable=True)
    assert g.paths() == ["0", "1"] and len(g) == 2
    assert os.path.getsize(os.path.join(path, "feat.global.bin")) == 2 * 4 * 4


@pytest.mark.parametrize("text,lacks", [("", "a JSON object \\(not JSON"),
                                        ('{"version": 1, "model": "m1", "dty', "a JSON object"),
                                        ("[1, 2]", r"a JSON object \(\[1, 2\]\)"),
                                        ('{"version": 1, "model": "m1"}', "dtype, count")])
def test_a_damaged_manifest_is_refused_by_name(tmp_path, text, lacks):
    path = str(tmp_path / "g")
    _committed(path)
    with open(os.path.join(path, gallery.MANIFEST), "w") as f:
        f.write(text)
    for writable in (False, True):
        with pytest.raises(gallery.GalleryDamaged, match=rf"gallery\.json is damaged \(it lacks "
                                                         rf"{lacks}.*copy it again"):
            gallery.Gallery.open(path, writable=writable)


def test_one_writer_at_a_time_and_a_killed_writer_frees_the_gallery(tmp_path):
    import signal
    import subprocess
    import sys
    path = str(tmp_path / "g")
    _committed(path)
    writer = gallery.Gallery.open(path, writable=True)
    with pytest.raises(gallery.GalleryBusy, match=rf"another writer \(process {os.getpid()} "
                                                  r"holds .*index\.lock\)"):
        gallery.Gallery.open(path, writable=True)
    assert len(gallery.Gallery.open(path)) == 6  # readers are never held up
    writer.close()
    gallery.Gallery.open(path, writable=True).close()
    # A writer killed while it holds the lock (SIGKILL: no clean-up of its own).
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hgan.serving import gallery; "
         "g = gallery.Gallery.open(sys.argv[1], writable=True); print('locked', flush=True); "
         "time.sleep(60)", path], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(gallery.GalleryBusy, match=f"process {child.pid} holds"):
            gallery.Gallery.open(path, writable=True)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    gallery.Gallery.open(path, writable=True).append(["6"], _rows(1))
    assert gallery.Gallery.open(path).paths()[-1] == "6"


def test_an_ivf_of_a_prefix_is_searched_with_the_rest_exactly():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    vectors, queries = rng.normal(size=(3000, 16)), rng.normal(size=(20, 16))
    index = ann.build(vectors[:2000], threshold=0, nlist=8, train_size=2000)
    mixed = ann.Searcher(vectors, index, nprobe=8)  # every list: the IVF part is exact too
    assert mixed.tail == 1000 and not mixed.exact
    scores, ids = mixed.search(queries, 10)
    want_s, want_i = ann.Searcher(vectors).search(queries, 10)
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_allclose(scores, want_s, rtol=1e-5)
    assert (ids >= 2000).any() and (ids < 2000).any()  # both parts reach the top 10


def test_misplaced_tells_a_galleries_ivf_from_another_one():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(1000, 8)).astype(np.float16)
    vectors[500] = vectors[100]  # duplicate rows: either id is the row's
    own = ann.build(vectors, threshold=0, nlist=4, train_size=1000)
    assert ann.misplaced(own, vectors) is None
    assert ann.misplaced(ann.build(vectors[:600], threshold=0, nlist=4), vectors) is None
    other = rng.normal(size=(1000, 8)).astype(np.float16)
    assert ann.misplaced(ann.build(other, threshold=0, nlist=4), vectors) == 0
    shuffled = vectors[rng.permutation(1000)]  # the same images in another order
    assert ann.misplaced(ann.build(shuffled, threshold=0, nlist=4), vectors) is not None
