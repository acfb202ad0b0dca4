"""Search (hgan/searcher.py) against a stand-in SavedModel: chunked ranking, IATV-style
re-ranking of the stage-1 head, the index builder's skipping, and every error message.

The real exported models are searched in test_eval_export.py (HGAN) and test_iatv_train.py
(IATV); here the signatures are plain functions of hand-made features (search_standin.py),
so every ranking is known in advance.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hgan.serving import ann, checksums, gallery, searcher, snapshot
from search_standin import Signature, fake_savedmodel, logits, served
from tests_support import ROOT, run_command


# Stage 1 for "red": cosines of [0.2, 0.3] ... with [1, 0]: a .55 b 1 c .98 d .75 e .14,
# so b, c, d, a, e. Stage-2 logits 4 1 3 2 5.
EMBEDDING = np.array([[0.2, 0.3], [0.9, 0.0], [0.5, 0.1], [0.9, 0.8], [0.1, 0.7]], np.float32)
REGIONS = np.array([4.0, 1.0, 3.0, 2.0, 5.0], np.float32)[:, None, None] * np.ones((1, 2, 3))
PATHS = ["a.png", "b.png", "c.png", "d.png", "e.png"]


@pytest.fixture()
def model(tmp_path):
    return fake_savedmodel(tmp_path / "saved")


@pytest.fixture()
def index(tmp_path, model):
    path = str(tmp_path / "gallery")
    g = gallery.Gallery.create(path, gallery.model_fingerprint(model),
                               {"global": (2,), "regions": (2, 3)}, dtype="float32")
    g.append(PATHS, {"global": EMBEDDING, "regions": REGIONS})
    return path


def _use(monkeypatch, served_model):
    monkeypatch.setattr(searcher, "_load", lambda savedmodel: served_model)
    return served_model


def _cosines(direction):
    e = EMBEDDING / np.linalg.norm(EMBEDDING, axis=1, keepdims=True)
    return e @ np.asarray(direction)


def test_stage1_ranks_the_gallery_by_cosine(monkeypatch, model, index):
    served_model = _use(monkeypatch, served())
    results = searcher.query(model, index, "red", top_k=4, rerank_k=0)
    assert [r["path"] for r in results] == ["b.png", "c.png", "d.png", "a.png"]
    np.testing.assert_allclose([r["score"] for r in results],
                               np.sort(_cosines([1, 0]))[::-1][:4], atol=1e-6)
    assert all("rerank" not in r for r in results)
    blue = searcher.query(model, index, "blue", top_k=5, rerank_k=0)
    assert [r["path"] for r in blue] == [PATHS[i] for i in np.argsort(-_cosines([0, 1]))]
    assert served_model.signatures["rerank"].calls == []


def test_stage2_reorders_the_stage1_head_and_keeps_the_rest(monkeypatch, model, index):
    served_model = _use(monkeypatch, served())
    results = searcher.query(model, index, "red", top_k=5, rerank_k=3)
    # Head b, c, d by stage 1; logits 1, 3, 2 → c, d, b; then a, e in stage-1 order.
    assert [r["path"] for r in results] == ["c.png", "d.png", "b.png", "a.png", "e.png"]
    assert [r.get("rerank") for r in results] == [3.0, 2.0, 1.0, None, None]
    (call,) = served_model.signatures["rerank"].calls
    np.testing.assert_array_equal(call["image_regions"][:, 0, 0], [1.0, 3.0, 2.0])  # rows b c d
    top2 = searcher.query(model, index, "red", top_k=2, rerank_k=3)
    assert [r["path"] for r in top2] == ["c.png", "d.png"]


def test_a_rerank_signature_gets_every_gallery_table_it_names(monkeypatch, model, index):
    # IATV's rerank (stage-2 logit + weighted stage-1 logit) reads the gallery's global
    # embeddings and regions: each image_<name> input is fed the gallery's table <name>.
    served_model = served()
    served_model.signatures["rerank"] = Signature(
        lambda texts, image_global, image_regions: {
            "score": logits(texts, image_regions)["score"] + 10 * image_global[None, :, 0]},
        ["texts", "image_global", "image_regions"])
    _use(monkeypatch, served_model)
    results = searcher.query(model, index, "red", top_k=5, rerank_k=3)
    # Head b, c, d: logits 1, 3, 2 plus 10·x (9, 5, 9) → 10, 8, 11: d, b, c (the logits
    # alone order c, d, b).
    assert [r["path"] for r in results] == ["d.png", "b.png", "c.png", "a.png", "e.png"]
    np.testing.assert_allclose([r["rerank"] for r in results[:3]], [11.0, 10.0, 8.0])
    (call,) = served_model.signatures["rerank"].calls
    np.testing.assert_allclose(call["image_global"][:, 0], [0.9, 0.5, 0.9], rtol=1e-6)  # b c d


def test_rerank_k_zero_is_stage1_only(monkeypatch, model, index):
    served_model = _use(monkeypatch, served())
    results = searcher.query(model, index, "red", top_k=5, rerank_k=0)
    assert [r["path"] for r in results] == ["b.png", "c.png", "d.png", "a.png", "e.png"]
    assert served_model.signatures["rerank"].calls == []


def test_rerank_k_defaults_to_the_exports_eval_rerank_k(monkeypatch, model, index, tiny_config,
                                                        tmp_path):
    _use(monkeypatch, served())
    tiny_config.replace(rerank_k=2).save(str(tmp_path / "saved" / "assets.extra"))
    results = searcher.query(model, index, "red", top_k=5)
    # Head b, c (logits 1, 3) → c, b; then d, a, e.
    assert [r["path"] for r in results] == ["c.png", "b.png", "d.png", "a.png", "e.png"]
    assert sum("rerank" in r for r in results) == 2
    # An export without its config is refused by name.
    os.remove(tmp_path / "saved" / "assets.extra" / "config.json")
    with pytest.raises(FileNotFoundError, match="has no assets.extra/config.json"):
        searcher.default_rerank_k(model)


def test_query_errors_say_what_is_wrong(monkeypatch, model, index, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a SavedModel"):
        searcher.query(str(tmp_path), index, "red")  # the real loader, on an empty folder
    _use(monkeypatch, served())
    for text, top_k, rerank_k, message in ((" \t\n", 5, None, "the query is empty"),
                                           ("red", 0, None, "top_k must be at least 1"),
                                           ("red", 5, -1, "rerank_k must be >= 0")):
        with pytest.raises(ValueError, match=message):
            searcher.query(model, index, text, top_k, rerank_k)
    other = fake_savedmodel(tmp_path / "retrained", version=b"2")
    with pytest.raises(gallery.ModelMismatch, match="indexed by another model"):
        searcher.query(other, index, "red")
    a_file = tmp_path / "index.npz"
    a_file.write_bytes(b"PK")
    with pytest.raises(FileNotFoundError, match="is not a gallery folder"):
        searcher.query(model, str(a_file), "red")
    no_rerank = served()
    del no_rerank.signatures["rerank"]
    _use(monkeypatch, no_rerank)
    with pytest.raises(ValueError, match=r"has no \['rerank'\] signature"):
        searcher.query(model, index, "red")
    _use(monkeypatch, served())
    lacking = str(tmp_path / "lacking")  # a gallery without the re-ranker's features
    gallery.Gallery.create(lacking, gallery.model_fingerprint(model), {"global": (2,)}
                           ).append(PATHS, {"global": EMBEDDING})
    with pytest.raises(ValueError, match=r"the gallery lacks \['image_regions'\]"):
        searcher.query(model, lacking, "red", rerank_k=2)


def _photos(folder, items):
    for name, blob in items:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(blob)


def test_index_skips_bad_files_resumes_and_extends(monkeypatch, model, tmp_path):
    served_model = _use(monkeypatch, served())
    folder = tmp_path / "photos"
    _photos(folder, [("1.png", b"IMG:1"), ("2.jpg", b"IMG:2"), ("3.png", b"broken"),
                     ("4.JPEG", b"IMG:4"), ("sub/5.png", b"IMG:5"), ("notes.txt", b"IMG:9")])
    out = str(tmp_path / "gallery")
    lines = []
    report = searcher.build_index(model, out, images=str(folder), batch_size=2,
                                log=lines.append)
    assert (report["images"], report["added"]) == (4, 4)
    assert report["skipped"] == [{"path": "3.png", "reason": "not a JPEG or PNG image"}]
    assert any("ETA" in ln for ln in lines)
    g = gallery.Gallery.open(out)
    assert g.paths() == ["1.png", "2.jpg", "4.JPEG", os.path.join("sub", "5.png")]
    np.testing.assert_array_equal(g.array("global")[:, 0], [1, 2, 4, 5])
    assert g.dtype == "float16" and g.bytes_per_item() == (2 + 6) * 2
    calls = served_model.signatures["encode_image"].calls
    # Batches of 2: [1, 2], then [3, 4] fails and is retried one by one, then [5].
    assert [len(c["images"]) for c in calls] == [2, 2, 1, 1, 1]
    # Re-running encodes nothing new but the bad file (retried); a new photo is appended.
    _photos(folder, [("6.png", b"IMG:6")])
    calls.clear()
    report = searcher.build_index(model, out, images=str(folder), log=lambda *_: None)
    assert (report["images"], report["added"]) == (5, 1)
    assert [list(c["images"]) for c in calls] == [[b"broken", b"IMG:6"], [b"broken"],
                                                  [b"IMG:6"]]
    assert gallery.Gallery.open(out).paths()[-1] == "6.png"
    # Another model may not extend this gallery.
    with pytest.raises(gallery.ModelMismatch):
        searcher.build_index(fake_savedmodel(tmp_path / "m2", b"2"), out, images=str(folder),
                           log=lambda *_: None)


def test_index_reads_a_file_list_skipping_what_it_cannot_read(monkeypatch, model, tmp_path):
    _use(monkeypatch, served())
    _photos(tmp_path / "cams", [("a/1.png", b"IMG:1"), ("b/2.png", b"IMG:2"),
                                ("bad.png", b"broken")])
    _photos(tmp_path / "elsewhere", [("3.jpg", b"IMG:3")])
    listed = tmp_path / "cams" / "list.txt"
    listed.write_text("# the gallery\na/1.png\n\nb/2.png\na/1.png\nmissing.png\nbad.png\n"
                      f"{tmp_path / 'elsewhere' / '3.jpg'}\n")
    out = str(tmp_path / "gallery")
    report = searcher.build_index(model, out, images=str(listed), log=lambda *_: None)
    g = gallery.Gallery.open(out)
    assert g.paths() == ["a/1.png", "b/2.png", str(tmp_path / "elsewhere" / "3.jpg")]
    np.testing.assert_array_equal(g.array("global")[:, 0], [1, 2, 3])  # each once
    assert [s["path"] for s in report["skipped"]] == ["missing.png", "bad.png"]
    assert "FileNotFoundError" in report["skipped"][0]["reason"]
    assert g.manifest["source"] == {"kind": "list", "root": str(tmp_path / "cams")}
    with pytest.raises(ValueError, match="not a .txt file list"):
        searcher.build_index(model, out, images=str(tmp_path / "cams" / "a" / "1.png"),
                           log=lambda *_: None)


def test_an_ivf_gallery_is_extended_without_retraining_until_it_doubles(monkeypatch, model,
                                                                         tmp_path):
    pytest.importorskip("faiss")
    _use(monkeypatch, served())
    folder, out = tmp_path / "photos", str(tmp_path / "gallery")
    path = os.path.join(out, searcher.ANN_FILE)

    def index(names, lines=None):
        _photos(folder, [(f"{i}.png", f"IMG:{i}".encode()) for i in names])
        searcher.build_index(model, out, images=str(folder), ann_threshold=1,
                           log=(lines if lines is not None else []).append)
        ivf = ann.load(path, mmap=False)
        return ivf, ivf.quantizer.reconstruct_n(0, ivf.nlist)

    first, centroids = index(range(1, 5))  # 4 images: trained on 4
    lines = []
    grown, kept = index([5, 6, 7], lines)  # 7 <= 2 x 4: only added
    assert grown.ntotal == 7 and any("extended by 3" in ln for ln in lines)
    np.testing.assert_array_equal(kept, centroids)  # the quantizer is the one trained at 4
    # The new images are found, with their gallery rows as ids.
    ids = ann.Searcher(gallery.Gallery.open(out).array("global"), grown, nprobe=1).search(
        np.array([[7.0, 1.0]]), 7)[1][0]
    assert sorted(ids.tolist()) == list(range(7))
    lines = []
    regrown, retrained = index([8, 9], lines)  # 9 > 2 x 4: trained again
    assert regrown.ntotal == 9 and any("trained and filled" in ln for ln in lines)
    assert not np.allclose(retrained, centroids)


def test_nprobe_of_a_query_reaches_the_ivf_it_searches(monkeypatch, model, tmp_path):
    """--nprobe (hgan-search query, hgan-serve): the IVF's kind default unless given."""
    pytest.importorskip("faiss")
    _use(monkeypatch, served())
    folder, out = tmp_path / "photos", str(tmp_path / "gallery")
    _photos(folder, [(f"{i}.png", f"IMG:{i}".encode()) for i in range(1, 5)])
    searcher.build_index(model, out, images=str(folder), ann_threshold=1, log=lambda _: None)
    assert searcher.Searcher(model, out).snapshot.stage1.index.nprobe == ann.NPROBE["flat"]
    assert searcher.Searcher(model, out, nprobe=2).snapshot.stage1.index.nprobe == 2
    seen = []

    class Recording:
        def __init__(self, savedmodel, index_path, nprobe=None):
            seen.append(nprobe)

        def query(self, *args):
            return []

    monkeypatch.setattr(searcher, "Searcher", Recording)
    run_command("hgan-search", "query", f"--savedmodel={model}", f"--index={out}",
                "--nprobe=3", "red")
    assert seen == [3]


def test_shards_on_n_machines_merge_into_the_whole_gallery(monkeypatch, model, tmp_path):
    _use(monkeypatch, served())
    folder = tmp_path / "photos"
    _photos(folder, [(f"{i}.png", f"IMG:{i}".encode()) for i in range(7)])
    shards = []
    for i in range(3):
        shards.append(str(tmp_path / f"shard{i}"))
        searcher.build_index(model, shards[-1], images=str(folder), shard=f"{i}/3",
                           log=lambda *_: None)
    merged = str(tmp_path / "all")
    searcher.merge_index(merged, shards, ann_threshold=1, log=lambda *_: None)
    g = gallery.Gallery.open(merged)
    assert sorted(g.paths()) == sorted(f"{i}.png" for i in range(7))
    assert os.path.exists(os.path.join(merged, searcher.ANN_FILE))  # above the threshold: IVF
    whole = str(tmp_path / "whole")
    searcher.build_index(model, whole, images=str(folder), log=lambda *_: None)
    a = searcher.query(model, merged, "red", top_k=7, rerank_k=0)
    b = searcher.query(model, whole, "red", top_k=7, rerank_k=0)
    assert [r["path"] for r in a] == [r["path"] for r in b]
    with pytest.raises(ValueError, match="not i/N"):
        searcher.build_index(model, whole, images=str(folder), shard="1-3", log=lambda *_: None)


def test_shards_on_one_quantizer_merge_their_ivfs_with_faiss_merge_from(monkeypatch, model,
                                                                        tmp_path):
    pytest.importorskip("faiss")
    _use(monkeypatch, served())
    folder = tmp_path / "photos"
    _photos(folder, [(f"{i}.png", f"IMG:{i}".encode()) for i in range(9)])
    shards = [str(tmp_path / f"shard{i}") for i in range(3)]
    # Shard 0 trains an IVF; the others add to its quantizer (index --quantizer).
    searcher.build_index(model, shards[0], images=str(folder), shard="0/3", ann_threshold=1,
                       log=lambda *_: None)
    trained = os.path.join(shards[0], searcher.ANN_FILE)
    for i in (1, 2):
        searcher.build_index(model, shards[i], images=str(folder), shard=f"{i}/3",
                           quantizer=trained, log=lambda *_: None)
    merged, ivf = _merged_by_merge_from(shards, str(tmp_path / "all"))
    assert ivf.ntotal == 9
    # The merged IVF keeps the size its quantizer was trained at (shard 0's 3 images), so a
    # later extension re-trains on the right growth.
    with open(os.path.join(merged, searcher.ANN_FILE + ".json")) as f:
        assert json.load(f)["trained_on"] == 3
    shard0 = ann.load(trained, mmap=False)  # held: its quantizer is owned by it
    np.testing.assert_array_equal(ivf.quantizer.reconstruct_n(0, ivf.nlist),
                                  shard0.quantizer.reconstruct_n(0, shard0.nlist))
    # Every merged id is its image's gallery row.
    store = gallery.Gallery.open(merged)
    vectors = store.array("global")
    ids = ann.Searcher(vectors, ivf, nprobe=ivf.nlist).search(np.asarray(vectors[:9]), 1)[1]
    np.testing.assert_array_equal(ids[:, 0], np.arange(9))
    # Shards on their own quantizers: merge trains one IVF instead.
    for i in (1, 2):
        searcher.build_index(model, str(tmp_path / f"own{i}"), images=str(folder),
                           shard=f"{i}/3", ann_threshold=1, log=lambda *_: None)
    lines = []
    searcher.merge_index(str(tmp_path / "all2"), [shards[0], str(tmp_path / "own1"),
                                               str(tmp_path / "own2")],
                       ann_threshold=1, log=lines.append)
    assert any("trained and filled" in ln for ln in lines) and \
        not any("merge_from" in ln for ln in lines)
    with pytest.raises(FileNotFoundError, match="quantizer"):
        searcher.build_index(model, str(tmp_path / "x"), images=str(folder),
                           quantizer=str(tmp_path / "nope.faiss"), log=lambda *_: None)


def test_a_quantizer_trained_on_a_sample_lets_every_shard_start_at_once(monkeypatch, model,
                                                                         tmp_path):
    pytest.importorskip("faiss")
    served_model = _use(monkeypatch, served())
    folder = tmp_path / "photos"
    _photos(folder, [(f"{i}.png", f"IMG:{i}".encode()) for i in range(1, 10)])
    quantizer = str(tmp_path / "quantizer.faiss")
    lines = []
    report = searcher.train_quantizer(model, quantizer, images=str(folder), sample=6, nlist=2,
                                      batch_size=4, log=lines.append)
    assert report == {"images": 9, "sample": 6, "encoded": 6, "nlist": 2, "skipped": []}
    calls = served_model.signatures["encode_image"].calls
    assert [len(c["images"]) for c in calls] == [4, 2]  # the sample only, nothing else
    with open(quantizer + ".json") as f:
        meta = json.load(f)
    # Sized for the whole folder, and empty; the CRC-32 is the file's (hgan-search verify).
    assert meta == {"trained_on": 9, "nlist": 2, "vectors": 0, "kind": "flat",
                    "crc32": meta["crc32"]}
    assert meta["crc32"] == checksums.file_crc(quantizer)
    trained = ann.load(quantizer, mmap=False)
    assert trained.is_trained and trained.ntotal == 0
    # Every shard starts at once on it (here the last first), and merge joins their IVFs.
    shards = [str(tmp_path / f"shard{i}") for i in range(3)]
    for i in (2, 1, 0):
        searcher.build_index(model, shards[i], images=str(folder), shard=f"{i}/3",
                             quantizer=quantizer, log=lambda *_: None)
    merged, ivf = _merged_by_merge_from(shards, str(tmp_path / "all"))
    assert ivf.ntotal == 9
    np.testing.assert_array_equal(ivf.quantizer.reconstruct_n(0, 2),
                                  trained.quantizer.reconstruct_n(0, 2))
    with pytest.raises(ValueError, match="larger --sample"):
        searcher.train_quantizer(model, quantizer, images=str(folder), sample=3, nlist=4,
                                 log=lambda *_: None)


def test_index_errors_say_what_is_wrong(monkeypatch, model, tmp_path):
    _use(monkeypatch, served())
    with pytest.raises(FileNotFoundError, match="image folder .*nowhere not found"):
        searcher.build_index(model, str(tmp_path / "g"), images=str(tmp_path / "nowhere"),
                           log=lambda *_: None)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match=r"no image could be indexed; skipped: \[\{'path': "
                                         "'x.png'"):
        searcher.build_index(model, str(tmp_path / "g"), images=str(tmp_path / "bad"),
                             log=lambda *_: None)
    assert not (tmp_path / "g").exists()


def _every_image_once(out, numbers):
    """The gallery ``out`` holds image ``<i>.png`` of each of ``numbers`` once, with its
    own features (the stand-in's global embedding [i, 1]); returns the gallery."""
    g = gallery.Gallery.open(out)
    paths = g.paths()
    assert sorted(paths) == sorted(f"{i}.png" for i in numbers) and len(set(paths)) == len(g)
    np.testing.assert_array_equal(g.array("global")[:, 0], [float(p[:-4]) for p in paths])
    return g


def _indexed_four(monkeypatch, model, tmp_path):
    """A gallery of four photos (1-4.png) with its IVF, served by the stand-in model →
    (the photos' folder, the gallery's path)."""
    pytest.importorskip("faiss")
    _use(monkeypatch, served())
    folder, out = tmp_path / "photos", str(tmp_path / "gallery")
    _photos(folder, [(f"{i}.png", f"IMG:{i}".encode()) for i in range(1, 5)])
    searcher.build_index(model, out, images=str(folder), ann_threshold=1, log=lambda *_: None)
    return folder, out


def _found(engine):
    """Every gallery path stage 1 finds for a query."""
    return {r["path"] for r in engine.query("red", top_k=100, rerank_k=0)}


def test_a_searcher_serves_its_state_until_reload_and_keeps_it_against_a_bad_one(
        monkeypatch, model, tmp_path):
    folder, out = _indexed_four(monkeypatch, model, tmp_path)
    engine = searcher.Searcher(model, out)
    assert len(engine) == 4 and not engine.changed()
    # index grows the gallery while it is served: the loaded state is what is answered.
    _photos(folder, [("5.png", b"IMG:5"), ("6.png", b"IMG:6")])
    searcher.build_index(model, out, images=str(folder), ann_threshold=1, log=lambda *_: None)
    assert engine.changed() and len(engine) == 4
    assert _found(engine) == {f"{i}.png" for i in range(1, 5)}
    assert engine.reload() == {"images": 6, "previous": 4}
    assert not engine.changed() and engine.stage1.tail == 0  # its IVF covers all six
    assert _found(engine) == {f"{i}.png" for i in range(1, 7)}
    # A state on disk that does not check out is not served; the loaded one stays.
    ivf = os.path.join(out, searcher.ANN_FILE)
    foreign = ann.build(np.random.default_rng(0).normal(size=(6, 2)), threshold=0, nlist=1)
    ann.save(foreign, ivf + ".other")
    os.replace(ivf + ".other", ivf)  # replaced whole, as index does
    assert engine.changed()
    with pytest.raises(snapshot.IVFError, match="does not hold the gallery's row 0"):
        engine.reload()
    assert len(engine) == 6 and _found(engine) == {f"{i}.png" for i in range(1, 7)}
    with pytest.raises(snapshot.IVFError, match="another gallery's IVF"):
        searcher.Searcher(model, out)  # and a server would not start on it


def test_index_repairs_a_gallery_cut_short_and_rebuilds_a_foreign_ivf(monkeypatch, model,
                                                                       tmp_path):
    pytest.importorskip("faiss")
    served_model = _use(monkeypatch, served())
    folder, out = tmp_path / "photos", str(tmp_path / "gallery")
    _photos(folder, [(f"{i}.png", f"IMG:{i}".encode()) for i in range(1, 9)])
    searcher.build_index(model, out, images=str(folder), ann_threshold=1, log=lambda *_: None)
    # A copy cut short: the regions file holds 5 whole rows of 8 (and part of the sixth).
    os.truncate(os.path.join(out, "feat.regions.bin"), 5 * 6 * 2 + 3)
    with pytest.raises(gallery.GalleryDamaged, match=r"feat\.regions\.bin holds 5 whole rows "
                                                     "of the 8"):
        searcher.Searcher(model, out)
    calls = served_model.signatures["encode_image"].calls
    calls.clear()
    lines = []
    report = searcher.build_index(model, out, images=str(folder), ann_threshold=1,
                                  log=lines.append)
    assert any("kept its first 5 rows, the other 3 are indexed again; its IVF is built "
               "again" in ln for ln in lines), lines
    assert report["added"] == 3 and [len(c["images"]) for c in calls] == [3]
    g = _every_image_once(out, range(1, 9))
    np.testing.assert_array_equal(g.array("regions")[:, 0, 0], g.array("global")[:, 0])
    assert any("trained and filled" in ln for ln in lines)
    assert searcher.Searcher(model, out).stage1.tail == 0
    # A corrupt ann.faiss: index (with nothing to encode) builds it again.
    with open(os.path.join(out, searcher.ANN_FILE), "r+b") as f:
        f.write(b"garbage!")
    with pytest.raises(snapshot.IVFError, match="cannot be read as an IVF index"):
        searcher.Searcher(model, out)
    lines = []
    searcher.build_index(model, out, images=str(folder), ann_threshold=1, log=lines.append)
    assert any("cannot be read" in ln and "training another" in ln for ln in lines)
    assert _found(searcher.Searcher(model, out)) == {f"{i}.png" for i in range(1, 9)}


class Stopped(BaseException):
    """What a test hook raises to stop an index run where a kill would."""


def _stop_at(monkeypatch, where):
    """Stops the next index run: ``commit``, its second batch's rows written but not
    committed; ``ivf``, every row committed but no IVF saved; ``sidecar``, the IVF put in
    place but not its sidecar."""
    if where == "commit":
        commit, count = gallery.Gallery._commit, []

        def stop(self):
            count.append(1)
            if len(count) == 2:
                raise Stopped()
            commit(self)
        monkeypatch.setattr(gallery.Gallery, "_commit", stop)
    elif where == "ivf":
        monkeypatch.setattr(ann, "save", lambda *_: (_ for _ in ()).throw(Stopped()))
    else:
        replace = os.replace

        def stop(src, dst):
            if dst.endswith(searcher.ANN_FILE + ".json"):
                raise Stopped()
            replace(src, dst)
        monkeypatch.setattr(searcher.os, "replace", stop)


@pytest.mark.parametrize("where,committed,tail,then", [
    ("commit", 6, 2, "extended by 4"),
    ("ivf", 8, 4, "extended by 4"),
    ("sidecar", 8, 0, "trained and filled")])
def test_an_index_run_stopped_anywhere_resumes_with_every_image_once(monkeypatch, model,
                                                                     tmp_path, where,
                                                                     committed, tail, then):
    folder, out = _indexed_four(monkeypatch, model, tmp_path)
    _photos(folder, [(f"{i}.png", f"IMG:{i}".encode()) for i in range(5, 9)])
    with monkeypatch.context() as hooks:
        _stop_at(hooks, where)
        with pytest.raises(Stopped):
            searcher.build_index(model, out, images=str(folder), batch_size=2,
                                 ann_threshold=1, log=lambda *_: None)
    # What is committed is served (the rows past the IVF exactly), and nothing else.
    engine = searcher.Searcher(model, out)
    assert len(engine) == committed and engine.stage1.tail == tail
    assert _found(engine) == {f"{i}.png" for i in range(1, committed + 1)}
    lines = []
    searcher.build_index(model, out, images=str(folder), ann_threshold=1, log=lines.append)
    assert any(f"{committed} already indexed" in ln for ln in lines)
    assert any(then in ln for ln in lines), lines
    _every_image_once(out, range(1, 9))
    engine = searcher.Searcher(model, out)
    assert engine.stage1.tail == 0 and _found(engine) == {f"{i}.png" for i in range(1, 9)}


def test_a_second_index_run_on_a_gallery_being_written_is_refused(monkeypatch, model,
                                                                  tmp_path):
    _use(monkeypatch, served())
    folder, out = tmp_path / "photos", str(tmp_path / "gallery")
    _photos(folder, [("1.png", b"IMG:1")])
    searcher.build_index(model, out, images=str(folder), log=lambda *_: None)
    _photos(folder, [("2.png", b"IMG:2")])
    first = gallery.Gallery.open(out, writable=True)  # a run that is going
    with pytest.raises(gallery.GalleryBusy, match="being written by another writer"):
        searcher.build_index(model, out, images=str(folder), log=lambda *_: None)
    first.close()
    searcher.build_index(model, out, images=str(folder), log=lambda *_: None)
    _every_image_once(out, [1, 2])


_KILLED = textwrap.dedent("""
    # hgan-search index with the stand-in model, each batch slowed down so that the test
    # can kill it between two batches.
    import sys, time
    from search_standin import served
    from hgan.cli import search
    from hgan.serving import searcher
    model = served()
    encode = model.signatures["encode_image"]
    fast = encode.fn
    encode.fn = lambda images: (time.sleep(0.4), fast(images))[1]
    searcher._load = lambda path: model
    sys.argv = ["hgan-search", "index"] + sys.argv[1:]
    search.run()
""")


@pytest.mark.slow
def test_an_index_run_killed_half_way_resumes_with_every_image_once(monkeypatch, model,
                                                                     tmp_path):
    import signal
    import time
    folder, out = tmp_path / "photos", str(tmp_path / "gallery")
    _photos(folder, [(f"{i}.png", f"IMG:{i}".encode()) for i in range(1, 13)])
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    run = subprocess.Popen([sys.executable, "-c", _KILLED, f"--savedmodel={model}",
                            f"--images={folder}", f"--index={out}", "--batch_size=2"],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    manifest = os.path.join(out, gallery.MANIFEST)
    deadline = time.time() + 120
    try:
        while not (os.path.exists(manifest) and len(gallery.Gallery.open(out)) >= 2):
            assert run.poll() is None, run.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "no batch committed in 120 s"
            time.sleep(0.02)
    finally:
        run.send_signal(signal.SIGKILL)
        run.communicate(timeout=60)
    assert run.returncode == -signal.SIGKILL
    kept = gallery.Gallery.open(out).paths()
    assert 2 <= len(kept) < 12  # killed half-way, its first batches committed
    _use(monkeypatch, served())
    assert _found(searcher.Searcher(model, out)) == set(kept)
    lines = []
    report = searcher.build_index(model, out, images=str(folder), log=lines.append)
    assert report["added"] == 12 - len(kept)
    assert any(f"{len(kept)} already indexed, {12 - len(kept)} to encode" in ln for ln in lines)
    _every_image_once(out, range(1, 13))


_CLI = textwrap.dedent("""
    import json, sys
    from absl import app, flags
    from hgan.cli import search
    search.define_flags()
    out = []
    for argv in json.loads(sys.argv[1]):
        flags.FLAGS.unparse_flags()
        try:
            search.main(flags.FLAGS(["search"] + argv))
            out.append("ok")
        except app.UsageError as e:
            out.append(str(e))
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_cli_usage_errors():
    cases = [["--savedmodel=m", "--index=i"],
             ["find", "--savedmodel=m", "--index=i"],
             ["index", "--savedmodel=m", "--index=i"],
             ["index", "--savedmodel=m", "--index=i", "--images=f", "--data_dir=d"],
             ["query", "--savedmodel=m", "--index=i"],
             ["query", "--savedmodel=m", "--index=i", "a", "red coat"],
             ["query", "--index=i", "red coat"],
             ["merge", "--index=i"],
             ["query", "--savedmodel=m", "red coat"],
             ["verify"],
             ["quantizer", "--savedmodel=m", "--images=f"],
             ["quantizer", "--savedmodel=m", "--quantizer=q.faiss"]]
    proc = subprocess.run([sys.executable, "-c", _CLI, json.dumps(cases)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, proc.stderr[-3000:]
    messages = json.loads(line[0][len("RESULT"):])
    assert messages == [
        "usage: hgan-search index|merge|query|quantizer|verify ... (see --help)",
        "usage: hgan-search index|merge|query|quantizer|verify ... (see --help)",
        "index needs exactly one of --images or --data_dir",
        "index needs exactly one of --images or --data_dir",
        'query takes one quoted sentence: query "a man in a red coat"',
        'query takes one quoted sentence: query "a man in a red coat"',
        "query needs --savedmodel",
        "merge takes the shard gallery dirs: merge --index=OUT S1 S2",
        "query needs --index",
        "verify needs --index",
        "quantizer needs --savedmodel and --quantizer (the file to write)",
        "quantizer needs exactly one of --images or --data_dir",
    ]


def _merged_by_merge_from(shards, merged):
    """``merge_index`` of ``shards`` into ``merged``, which must join the shards' IVFs by
    FAISS's merge_from → (merged, its IVF)."""
    lines = []
    searcher.merge_index(merged, shards, ann_threshold=1, log=lines.append)
    assert any("merge_from" in ln for ln in lines), lines
    return merged, ann.load(os.path.join(merged, searcher.ANN_FILE), mmap=False)


def test_pq_shards_on_one_codebook_merge_and_shards_on_two_are_refused(monkeypatch, model,
                                                                       tmp_path):
    _use(monkeypatch, served())
    folder = tmp_path / "photos"
    _photos(folder, [(f"{i}.png", f"IMG:{i}".encode()) for i in range(9)])
    quiet = {"log": lambda *_: None}
    shards = [str(tmp_path / f"shard{i}") for i in range(3)]
    # Shard 0 trains the codebooks (and an IVF-PQ); the others code with them.
    searcher.build_index(model, shards[0], images=str(folder), shard="0/3", dtype="pq",
                         ann_threshold=1, ann_kind="pq", **quiet)
    trained = os.path.join(shards[0], searcher.ANN_FILE)
    for i in (1, 2):
        searcher.build_index(model, shards[i], images=str(folder), shard=f"{i}/3", dtype="pq",
                             codebook=shards[0], quantizer=trained, **quiet)
    merged, ivf = _merged_by_merge_from(shards, str(tmp_path / "all"))
    store = gallery.Gallery.open(merged)
    assert store.dtype == "pq" and len(store) == 9 and ann.kind_of(ivf) == "pq"
    np.testing.assert_array_equal(store.codebooks["regions"],
                                  gallery.Gallery.open(shards[0]).codebooks["regions"])
    # A resumed or grown shard keeps its codes; another codebook cannot extend it.
    searcher.build_index(model, shards[1], images=str(folder), shard="1/3", dtype="pq", **quiet)
    searcher.build_index(model, str(tmp_path / "own"), images=str(folder), shard="1/3",
                         dtype="pq", **quiet)
    with pytest.raises(ValueError, match="other codebooks than --codebook"):
        searcher.build_index(model, str(tmp_path / "own"), images=str(folder), shard="1/3",
                             dtype="pq", codebook=shards[0], **quiet)
    with pytest.raises(ValueError, match="different pq codebooks"):
        searcher.merge_index(str(tmp_path / "bad"), [shards[0], str(tmp_path / "own")], **quiet)
