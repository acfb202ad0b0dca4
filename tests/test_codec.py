"""The gallery's stored forms (hgan/serving/codec.py): int8 with a scale per row and the
product-quantised tables, against NumPy references; their bytes on disk; a gallery
indexed with them against float32; and the refusals of a damaged or unknown store."""
import json
import os

import numpy as np
import pytest

from hgan.serving import ann, codec, gallery

PAPER = {"global": (512,), "word": (15, 512), "phrase": (15, 512)}


def _rows(shape, n=7, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, *shape)) * rng.uniform(0.01, 5, size=(n, *shape[:-1], 1))
            ).astype(np.float32)


def test_int8_round_trip_is_the_numpy_reference_within_half_a_step_per_row():
    x = _rows((15, 64))
    x[0, 3] = 0.0  # a zero row keeps scale 0 and decodes to zeros
    c = codec.Int8Rows((15, 64))
    records = c.encode(x)
    scale = np.abs(x).max(-1) / 127.0
    q = np.clip(np.rint(x / np.where(scale > 0, scale, 1)[..., None]), -127, 127)
    np.testing.assert_array_equal(records["q"], q.astype(np.int8))
    np.testing.assert_array_equal(records["s"], scale.astype(np.float32))
    decoded = c.decode(records)
    np.testing.assert_allclose(decoded, q * scale[..., None], rtol=1e-6)
    assert np.all(np.abs(decoded - x) <= scale[..., None] / 2 * (1 + 1e-5))
    assert not decoded[0, 3].any()
    assert records.dtype.itemsize == 15 * (64 + 4)


def test_pq_codes_each_sub_vector_by_its_nearest_centroid_as_numpy_does():
    x = _rows((5, 32), n=60)
    book = codec.train_codebook(x, 32, seed=1, subdim=8)
    assert book.shape == (4, 256, 8)  # 300 rows: 256 centroids per sub-space
    c = codec.PQRows((5, 32), book)
    records = c.encode(x)
    sub = x.reshape(-1, 4, 8)
    dist = ((sub[:, :, None, :] - book[None]) ** 2).sum(-1)  # [rows, M, K]
    np.testing.assert_array_equal(records["c"].reshape(-1, 4), dist.argmin(-1))
    decoded = c.decode(records)
    want = book[np.arange(4), dist.argmin(-1)].reshape(x.shape)
    np.testing.assert_array_equal(decoded, want)
    # The error of each sub-vector is its distance to the nearest centroid.
    np.testing.assert_allclose(((decoded - x).reshape(-1, 4, 8) ** 2).sum(-1),
                               dist.min(-1), rtol=1e-4, atol=1e-5)
    assert records.dtype.itemsize == 5 * 4
    # A width 8 does not divide costs ceil(18 / 8) = 3 codes a row, of 6 values each.
    odd = codec.train_codebook(_rows((2, 18), n=40), 18, subdim=8)
    assert odd.shape == (3, 256, 6)  # 18 = 3 · 6
    assert codec.PQRows((2, 18), odd).record.itemsize == 2 * 3


def test_a_width_the_sub_vector_does_not_divide_is_coded_with_zeros_appended():
    x = _rows((3, 32), n=100)
    book = codec.train_codebook(x, 32, seed=2, subdim=6)
    assert book.shape == (6, 256, 6)  # ceil(32 / 6) = 6 codes of 6 values: 4 zeros appended
    c = codec.PQRows((3, 32), book)
    records = c.encode(x)
    assert records.dtype.itemsize == 3 * 6
    padded = np.concatenate([x, np.zeros((100, 3, 4), np.float32)], -1).reshape(-1, 6, 6)
    dist = ((padded[:, :, None, :] - book[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(records["c"].reshape(-1, 6), dist.argmin(-1))
    want = book[np.arange(6), dist.argmin(-1)].reshape(100, 3, 36)[..., :32]
    np.testing.assert_array_equal(c.decode(records), want)
    # The appended values are zeros in every row, so the last sub-space's centroids are too.
    np.testing.assert_allclose(book[-1, :, 2:], 0, atol=1e-6)
    with pytest.raises(ValueError, match="does not code rows of 32"):
        codec.PQRows((3, 32), np.zeros((5, 256, 6), np.float32))  # 30 < 32


def _correlated(n, dim, seed=0, rank=4):
    """Rows of rank ``rank`` (plus a little noise) spread over every channel, so the
    sub-spaces of a plain PQ share their variance."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(99).normal(size=(rank, dim))
    return (rng.normal(size=(n, rank)) @ mixing + 0.05 * rng.normal(size=(n, dim))
            ).astype(np.float32)


def test_a_rotated_pq_codes_x_times_r_transposed_and_decodes_back_through_r():
    x = _correlated(300, 20).reshape(60, 5, 20)
    rotation = codec.train_rotation(x, 20, subdim=4, iterations=5)
    assert rotation.shape == (20, 20)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(20), atol=1e-4)  # orthogonal
    book = codec.train_codebook(x, 20, subdim=4, rotation=rotation)
    c = codec.PQRows((5, 20), book, rotation)
    records = c.encode(x)
    y = x.reshape(-1, 20) @ rotation.T  # NumPy's reference: code y, decode ŷ·R
    dist = ((y.reshape(-1, 5, 1, 4) - book[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(records["c"].reshape(-1, 5), dist.argmin(-1))
    want = book[np.arange(5), dist.argmin(-1)].reshape(-1, 20) @ rotation
    np.testing.assert_allclose(c.decode(records), want.reshape(x.shape), rtol=1e-5,
                               atol=1e-6)
    assert records.dtype.itemsize == 5 * 5  # the rotation costs no bytes per image
    assert c.decode(records[:0]).shape == (0, 5, 20)
    with pytest.raises(ValueError, match="does not turn rows of 20"):
        codec.PQRows((5, 20), book, np.eye(16, dtype=np.float32))
    # Fewer rows than directions: no rotation is learnt, none is stored (plain PQ).
    assert codec.train_rotation(x[:3], 20, subdim=4) is None
    books = gallery.train_codebooks("pq", {"word": x[:3]}, subdim=4)
    assert set(books) == {"word"}


def test_the_rotation_lowers_the_error_of_pq_on_rows_whose_channels_are_correlated():
    train, held = _correlated(4000, 24, seed=1), _correlated(1000, 24, seed=2)
    errors = {}
    for rotate in (False, True):
        rotation = codec.train_rotation(train, 24, subdim=6) if rotate else None
        book = codec.train_codebook(train, 24, subdim=6, rotation=rotation)
        c = codec.PQRows((1, 24), book, rotation)
        decoded = c.decode(c.encode(held[:, None]))[:, 0]
        errors[rotate] = ((decoded - held) ** 2).sum() / (held ** 2).sum()
    assert errors[True] < 0.5 * errors[False], errors  # measured: 0.009 against 0.068


# The global embedding (stage 1's) stays float16; the re-rank tables are coded.
@pytest.mark.parametrize("dtype, per_image", [
    ("float16", (512 + 2 * 15 * 512) * 2),  # 31,744
    ("int8", 512 * 2 + 2 * 15 * (512 + 4)),  # 16,504
    ("pq", 512 * 2 + 2 * 15 * 86),  # 3,604 (86 = ceil(512 / 6) codes a row): at most 4 KiB
])
def test_bytes_per_image_on_disk_at_the_papers_widths(tmp_path, dtype, per_image):
    n = 3
    sample = {k: _rows(s, n=n) for k, s in PAPER.items()}
    g = gallery.Gallery.create(str(tmp_path / "g"), "m", PAPER, dtype=dtype,
                               codebooks=gallery.train_codebooks(dtype, sample))
    g.append([f"{i}.jpg" for i in range(n)], sample)
    on_disk = sum(os.path.getsize(os.path.join(g.path, f"feat.{k}.bin")) for k in PAPER)
    assert g.bytes_per_item() == per_image and on_disk == n * per_image
    assert dtype != "pq" or per_image <= 4096
    again = gallery.Gallery.open(g.path)
    word = again.array("word")
    assert word.shape == (n, 15, 512) and word[1:].shape == (2, 15, 512)
    assert word[np.array([2, 0])].dtype == (np.float16 if dtype == "float16" else np.float32)
    assert word[-1].shape == (15, 512)
    np.testing.assert_array_equal(np.asarray(word)[2], word[2])


def test_merge_copies_codes_and_refuses_shards_of_two_codebooks(tmp_path):
    shapes = {"global": (8,), "word": (3, 16)}
    a, b = _rows((3, 16), n=40, seed=1), _rows((3, 16), n=40, seed=2)
    books = gallery.train_codebooks("pq", {"word": a})
    shards = []
    for name, rows, seed in (("s0", a, 3), ("s1", b, 4)):
        g = gallery.Gallery.create(str(tmp_path / name), "m", shapes, "pq", codebooks=books)
        g.append([f"{name}/{i}" for i in range(40)],
                 {"global": _rows((8,), 40, seed), "word": rows})
        g.close()
        shards.append(g.path)
    merged = gallery.merge(str(tmp_path / "all"), shards)
    for k in shapes:
        np.testing.assert_array_equal(
            merged.records(k), np.concatenate([gallery.Gallery.open(s).records(k)
                                               for s in shards]))
    other = gallery.Gallery.create(str(tmp_path / "s2"), "m", shapes, "pq",
                                   codebooks=gallery.train_codebooks("pq", {"word": b}))
    other.append(["x"], {"global": _rows((8,), 1), "word": b[:1]})
    with pytest.raises(ValueError, match="different pq codebooks.*--codebook"):
        gallery.merge(str(tmp_path / "bad"), [shards[0], other.path])


def test_an_unknown_dtype_a_cut_file_and_a_changed_codebook_are_refused(tmp_path):
    shapes = {"global": (8,), "word": (3, 16)}
    sample = {"global": _rows((8,), 20), "word": _rows((3, 16), 20)}
    g = gallery.Gallery.create(str(tmp_path / "g"), "m", shapes, "pq",
                               codebooks=gallery.train_codebooks("pq", sample))
    g.append([str(i) for i in range(20)], sample)
    g.close()
    manifest = os.path.join(g.path, gallery.MANIFEST)
    # A truncated coded file: refused by name on reading, cut to its whole rows by a writer.
    word = os.path.join(g.path, "feat.word.bin")
    os.truncate(word, os.path.getsize(word) - 5)
    with pytest.raises(gallery.GalleryDamaged, match=r"feat\.word\.bin holds 19 whole rows"):
        gallery.Gallery.open(g.path)
    fixed = gallery.Gallery.open(g.path, writable=True)
    assert len(fixed) == 19 and "kept its first 19" in fixed.repaired
    fixed.close()
    # A codebook or a rotation that is not the manifest's cannot decode the codes.
    turn = os.path.join(g.path, "rotation.word.npy")
    saved = np.load(turn)
    np.save(turn, saved[::-1])
    with pytest.raises(gallery.GalleryDamaged, match=r"rotation\.word\.npy is not the codebook"):
        gallery.Gallery.open(g.path)
    np.save(turn, saved)
    book = os.path.join(g.path, "codebook.word.npy")
    np.save(book, np.load(book) + 1)
    with pytest.raises(gallery.GalleryDamaged, match=r"codebook\.word\.npy is not the codebook"):
        gallery.Gallery.open(g.path)
    os.remove(book)
    with pytest.raises(gallery.GalleryDamaged, match=r"codebook\.word\.npy.*cannot be read"):
        gallery.Gallery.open(g.path)
    # A dtype this version does not store.
    data = json.load(open(manifest))
    json.dump({**data, "dtype": "int4"}, open(manifest, "w"))
    with pytest.raises(gallery.GalleryDamaged, match="names dtype 'int4'.*float16, float32, "
                                                     "int8, pq"):
        gallery.Gallery.open(g.path)
    with pytest.raises(ValueError, match="needs a codebook"):
        gallery.Gallery.create(str(tmp_path / "h"), "m", shapes, "pq")


@pytest.mark.slow
def test_a_gallery_indexed_int8_or_pq_ranks_the_test_captions_as_float32(hgan_export,
                                                                        tiny_data, tmp_path):
    # The tiny export over the tiny test split: every test caption's top 10 (the whole
    # re-ranked gallery) through Searcher, as hgan-search query and the service rank it.
    from hgan.data import pipeline, records
    from hgan.serving import searcher
    from hgan.tf_compat import tf
    quiet = {"log": lambda *_: None}
    paths = {}
    for dtype in ("float32", "int8", "pq"):
        paths[dtype] = str(tmp_path / dtype)
        # ann_threshold=0: the IVF too (IVF-PQ for a pq gallery), so both stages run.
        searcher.build_index(hgan_export, paths[dtype], data_dir=tiny_data, split="test",
                             dtype=dtype, ann_threshold=0,
                             ann_kind="pq" if dtype == "pq" else "flat", **quiet)
    captions = [c.decode() for e in tf.data.TFRecordDataset(
        pipeline.split_files(tiny_data, "test")).map(records.parse_example)
        for c in e["captions"].numpy()]
    tops = {}
    for dtype, path in paths.items():
        s = searcher.Searcher(hgan_export, path)
        assert s.store.dtype == dtype and s.stage1.index is not None
        tops[dtype] = [[r["row"] for r in s.query(c, top_k=10, rerank_k=10)]
                       for c in captions]
    # A codebook and a rotation per table.
    books = gallery.Gallery.open(paths["pq"]).codebooks
    assert books.keys() == {"word", "phrase", "word.rotation", "phrase.rotation"}
    s = searcher.Searcher(hgan_export, paths["pq"])
    assert s.stage1.refine == ann.REFINE
    # Its queries re-rank the rows before their rotation with the rotation folded into the
    # model (``rerank_rotated``): the scores of ``rerank`` on the decoded tables.
    state, rows = s.snapshot, np.arange(len(s))
    folded = s._folds_for(state)
    assert folded is not None and set(folded[0]) == {"word", "phrase"}
    s.reload()  # the same rotations in the new state: folded once, kept by their sha256
    assert s.snapshot is not state and s._folds_for(s.snapshot) is folded
    for caption in captions[:3]:
        texts = tf.constant([caption])
        encoded = s.served.signatures["encode_text"](sentences=texts)
        plain = s.second(**searcher._text_inputs(s.second, texts, encoded),
                         **searcher._image_inputs(s.second, state.store, rows))
        np.testing.assert_allclose(s._rerank(state, texts, encoded, rows),
                                   plain["score"].numpy()[0], rtol=1e-5, atol=1e-6)
    # Every caption's best image is float32's; the whole order is for 10 of the 12
    # captions (the other two swap two images whose fused scores lie 0.005 apart, where
    # int8's per-row step moves a Gumbel top-k selection). The pq codebooks of a 6-image
    # gallery hold a centroid for nearly every row (min(256, rows)), so pq orders as float32.
    for dtype, same_order in (("int8", 10), ("pq", 12)):
        assert [t[0] for t in tops[dtype]] == [t[0] for t in tops["float32"]]
        assert sum(a == b for a, b in zip(tops[dtype], tops["float32"])) == same_order
    assert len(captions) == 12
