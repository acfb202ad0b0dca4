"""The local heads' C kernel (``hgan.evaluation.local_head_kernel``) against the XLA path
it replaces: the selections of Eqs. 5 and 7 and the whole head after γ. The NumPy
reference loops of HGAN's equations check it through the scorer in
``test_heads_reference.py``."""
import os
import subprocess
import sys

import numpy as np
import pytest

from hgan.evaluation import local_head_kernel
from hgan.layers.matching import LocalMatching
from hgan.tf_compat import tf


@pytest.fixture(scope="module")
def lib():
    lib = local_head_kernel.load()
    if lib is None:
        pytest.skip(f"no C compiler builds the kernel: {local_head_kernel.load_error()}")
    return lib


def _gamma(rng, shape, ties=False):
    """Random γ; ``ties``: small integers, so rows hold equal values (and ±0)."""
    if ties:
        gamma = rng.integers(-2, 3, size=shape).astype(np.float32)
        return np.where(rng.random(shape) < 0.2, np.float32(-0.0), gamma)
    return rng.normal(size=shape).astype(np.float32)


def _mask(rng, texts, words):
    """Word masks of several lengths, one text without words."""
    lengths = rng.integers(1, words + 1, size=texts)
    lengths[0] = 0
    return (np.arange(words)[None] < lengths[:, None]).astype(np.float32)


@pytest.mark.parametrize("k1,k2,ties,r,n", [(4, 2, False, 9, 7), (4, 2, True, 9, 7),
                                            (8, 8, True, 9, 7), (1, 1, False, 9, 7),
                                            (3, 5, True, 9, 7), (4, 2, True, 40, 15),
                                            (4, 2, False, 9, 20)])
def test_selections_are_top_k_selected(lib, k1, k2, ties, r, n):
    """Each row's top k (ties: the lower index) and Eq. 7's weights, as the scorer's
    ``top_k_selected`` gives them; padded words never picked, a text without words weighs
    nothing; rows of more keys than a vector's 16 lanes (40 words, 20 regions) too."""
    rng = np.random.default_rng(k1 * 10 + k2 + ties + r + n)
    x, y = 3, 4
    gamma = _gamma(rng, (x, y, r, n), ties)
    mask = np.broadcast_to(_mask(rng, x, r)[:, None], (x, y, r))
    head = LocalMatching(hidden=4, k1=k1, k2=k2)
    (w_t2i, p_t2i), (w_i2t, p_i2t) = head.top_k_selected(tf.constant(gamma),
                                                         tf.constant(mask))
    (cw_t2i, cp_t2i), (cw_i2t, cp_i2t) = local_head_kernel.select(lib, gamma, mask, k1, k2,
                                                                  threads=2)
    np.testing.assert_allclose(cw_t2i, w_t2i.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cw_i2t, w_i2t.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(cp_t2i, np.stack([p.numpy() for p in p_t2i], -1))
    # A pick of a text's words is defined where it weighs something (a row with fewer
    # real words than k1 fills its last picks with padding at weight 0).
    picks = np.stack([p.numpy() for p in p_i2t], -1)
    weighed = w_i2t.numpy() > 0
    np.testing.assert_array_equal(cp_i2t[weighed], picks[weighed])
    assert not cw_i2t[0].any()  # the text without words


def _head(rng, hidden, k1, k2, r, n):
    head = LocalMatching(hidden=hidden, k1=k1, k2=k2)
    head((tf.zeros([1, r, 3]), tf.ones([1, r]), tf.zeros([1, n, 3])))
    for w in head.weights:
        w.assign(rng.normal(size=w.shape).astype(np.float32) * 0.5)
    return head


def _tables(rng, items, slots, hidden, ties):
    """(φ, W·x) rows [items, slots, H]; ``ties``: φ of small integers, so γ has equal
    values (and ±0) within a pair's rows."""
    if ties:
        phi = rng.integers(-1, 2, size=(items, slots, hidden)).astype(np.float32)
    else:
        phi = rng.normal(size=(items, slots, hidden)).astype(np.float32)
    return phi, rng.normal(size=(items, slots, hidden)).astype(np.float32)


@pytest.mark.parametrize("layout", ["grid", "image_paired", "text_paired"])
@pytest.mark.parametrize("k1,k2,hidden,ties,r,n", [(4, 2, 19, False, 7, 8),
                                                   (4, 2, 32, True, 7, 8),
                                                   (8, 3, 5, True, 7, 8),
                                                   (2, 8, 16, False, 7, 8),
                                                   (4, 2, 24, True, 40, 15),
                                                   (4, 2, 8, False, 6, 20),
                                                   (4, 2, 48, False, 33, 17),
                                                   (1, 1, 40, False, 5, 15)])
def test_scores_from_the_tables_are_score_selected(lib, layout, k1, k2, hidden, ties, r, n):
    """The whole head, γ included, from the prepared tables equals ``pair_gamma`` then
    ``score_selected`` under XLA within 1e-5 relative: in every layout (pairs sharing
    their text, as a text query's candidates, or their image), texts repeated and images
    in another order, H of any width, k above the real words, a text without words, rows
    of more word slots or regions than a vector's lanes (one to three vectors of words),
    and the slots past the pair's ``r`` ignored."""
    from hgan.evaluation.hgan_scoring import _pair_index
    rng = np.random.default_rng(hidden + k1 + r)
    texts, images, x, y, slots = 5, 6, 4, 3, r + 2
    head = _head(rng, hidden, k1, k2, r, n)
    t_phi, t_lin = _tables(rng, texts, slots, hidden, ties)
    v_phi, v_lin = _tables(rng, images, n, hidden, ties)
    mask = _mask(rng, texts, slots)
    text_rows = rng.integers(0, texts, size=(x, y) if layout == "text_paired" else (x,))
    image_rows = (rng.permuted(np.tile(np.arange(images), (x, 1)), axis=1)[:, :y]
                  if layout == "image_paired" else
                  rng.integers(0, images, size=x if layout == "text_paired" else y))
    t_index, i_index = _pair_index(text_rows, image_rows, layout)
    t_index, i_index = (np.broadcast_to(a, (x, y)) for a in (t_index, i_index))
    gamma = head.pair_gamma(tf.gather(t_phi[:, :r], text_rows), tf.gather(v_phi, image_rows),
                            layout)
    pair_mask = np.broadcast_to(mask[t_index, :r], (x, y, r))
    want = tf.function(head.score_selected, jit_compile=True)(
        gamma, tf.constant(t_lin), tf.constant(pair_mask), tf.constant(t_index),
        tf.constant(v_lin), tf.constant(i_index)).numpy()
    got = local_head_kernel.score_rows(
        lib, (t_phi.reshape(-1, hidden), t_lin.reshape(-1, hidden)), mask.reshape(-1),
        (v_phi.reshape(-1, hidden), v_lin.reshape(-1, hidden)), t_index * slots,
        i_index * n, r, n, head, repeated="image" if layout == "text_paired" else "text",
        threads=2)
    np.testing.assert_allclose(got.reshape(x, y), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("layout", ["grid", "paired"])
@pytest.mark.parametrize("r,x,y", [(5, 4, 3), (5, 3, 3), (20, 4, 3), (20, 2, 2)])
def test_the_scorer_gives_pairs_image_by_image_or_text_by_text(lib, layout, r, x, y):
    """``_native_pairs`` on a grid, or on the grid's pairs one by one in any order
    (``paired``): the kernel turns the images where the words are fewer than the regions
    (the phrase level), the texts otherwise; the same scores as ``pair_gamma`` then
    ``score_selected``, square grids too."""
    from hgan.evaluation.hgan_scoring import _native_pairs
    rng = np.random.default_rng(r + x)
    texts, images, n, hidden, slots = 5, 6, 15, 24, r + 3
    head = _head(rng, hidden, 4, 2, r, n)
    t_phi, t_lin = _tables(rng, texts, slots, hidden, False)
    v_phi, v_lin = _tables(rng, images, n, hidden, False)
    mask = _mask(rng, texts, slots)
    text_rows, image_rows = rng.permutation(texts)[:x], rng.permutation(images)[:y]
    prep = {"text_np": (t_phi, t_lin), "image_np": (v_phi, v_lin), "mask_np": mask}
    if layout == "grid":
        got = _native_pairs(head, prep, text_rows, image_rows, "grid", r)
    else:
        order = rng.permutation(x * y)
        t, i = np.repeat(text_rows, y)[order], np.tile(image_rows, x)[order]
        got = np.empty(x * y, np.float32)
        got[order] = _native_pairs(head, prep, t, i, "paired", r)
        got = got.reshape(x, y)
    gamma = head.pair_gamma(t_phi[text_rows, :r], v_phi[image_rows])
    want = tf.function(head.score_selected, jit_compile=True)(
        gamma, tf.constant(t_lin), tf.constant(np.broadcast_to(mask[text_rows, None, :r],
                                                               (x, y, r))),
        tf.constant(text_rows[:, None]), tf.constant(v_lin),
        tf.constant(image_rows[None])).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_no_pairs_score_nothing(lib):
    head = LocalMatching(hidden=4, k1=2, k2=1)
    head((tf.zeros([1, 3, 3]), tf.ones([1, 3]), tf.zeros([1, 2, 3])))
    rows = np.zeros((6, 4), np.float32)
    got = local_head_kernel.score_rows(lib, (rows, rows), np.ones(6, np.float32),
                                       (rows, rows), [], [], 3, 2, head)
    assert got.shape == (0,)


def test_bad_tables_are_refused(lib):
    head = LocalMatching(hidden=4, k1=2, k2=1)
    head((tf.zeros([1, 3, 3]), tf.ones([1, 3]), tf.zeros([1, 2, 3])))
    rows, mask = np.zeros((6, 4), np.float32), np.ones(6, np.float32)

    def score(text_base, image_base, image_rows=rows, mask=mask, **kwargs):
        return local_head_kernel.score_rows(lib, (rows, rows), mask, (image_rows, image_rows),
                                            text_base, image_base, 3, 2, head, **kwargs)
    with pytest.raises(IndexError, match="text rows"):
        score([4], [0])
    with pytest.raises(IndexError, match="image rows"):
        score([0], [5])
    with pytest.raises(IndexError, match="image rows"):
        score([0], [-1])
    with pytest.raises(ValueError, match="do not match"):
        score([0], [0], image_rows=rows[:, :3])
    with pytest.raises(ValueError, match="do not match"):
        score([0], [0], mask=mask[:5])
    with pytest.raises(ValueError, match="repeated"):
        score([0], [0], repeated="both")
    wide = np.zeros((6, 5), np.float32)
    with pytest.raises(ValueError, match="hidden=4"):
        local_head_kernel.score_rows(lib, (wide, wide), mask, (wide, wide), [0], [0], 3, 2,
                                     head)


def test_a_compiler_without_march_native_still_builds_it(tmp_path, monkeypatch):
    """``$CC`` may carry arguments; a compiler that refuses ``-march=native`` builds the
    kernel without it."""
    import shutil
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    wrapper = tmp_path / "no_march"
    wrapper.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -march=native ] && exit 1; done\n'
                       'exec "$0.real" "$@"\n')
    wrapper.chmod(0o755)
    (tmp_path / "no_march.real").symlink_to(cc)
    monkeypatch.setenv("CC", f"{wrapper} -O2")
    monkeypatch.setenv(local_head_kernel.CACHE_ENV, str(tmp_path / "cache"))
    lib = local_head_kernel.build()
    assert not (tmp_path / "cache").exists()  # a fallback build is not kept
    gamma = np.array([[[0.5, 2.0], [1.0, -1.0]]], np.float32)  # one pair, 2 words, 2 regions
    (w, picks), _ = local_head_kernel.select(lib, gamma, np.ones((1, 2), np.float32), 1, 1)
    np.testing.assert_array_equal(picks[..., 0], [[1, 0]])
    np.testing.assert_allclose(w, 1.0)


def test_a_built_kernel_is_kept_and_loaded_again(tmp_path, monkeypatch):
    """The first build keeps the library in the cache folder; the next loads it without
    compiling; a damaged copy is built again; another compiler command is another key;
    ``off`` or a folder that cannot be written keeps nothing and still builds."""
    import shutil
    if shutil.which(os.environ.get("CC") or "cc") is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv(local_head_kernel.CACHE_ENV, str(tmp_path / "cache"))
    local_head_kernel.build()
    (kept,) = (tmp_path / "cache").iterdir()
    compiled = []
    real = local_head_kernel._compile
    monkeypatch.setattr(local_head_kernel, "_compile",
                        lambda *args: compiled.append(args) or real(*args))
    lib = local_head_kernel.build()
    assert compiled == [] and lib.local_head_rows is not None
    # A damaged copy, or a library that is not the kernel (new files: the loaded library's
    # pages stay as they are), read by another process (this one would find the path
    # already loaded): built again.
    other = tmp_path / "other.c"
    other.write_text("int not_the_kernel;\n")
    subprocess.run([os.environ.get("CC") or "cc", "-shared", "-fPIC", "-o",
                    str(tmp_path / "other.so"), str(other)], check=True)
    for damaged in (tmp_path / "damaged", tmp_path / "other.so"):
        if damaged.name == "damaged":
            damaged.write_bytes(b"not a library")
        os.replace(damaged, kept)
        subprocess.run([sys.executable, "-c", "from hgan.evaluation import local_head_kernel"
                        " as k; k.build().local_head_rows"], check=True, env=os.environ.copy())
        assert b"local_head_rows" in kept.read_bytes()
    local_head_kernel.build(f"{os.environ.get('CC') or 'cc'} -O2")
    assert len(compiled) == 1 and len(list((tmp_path / "cache").iterdir())) == 2
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix == ".part"]
    for folder in ("off", str(tmp_path / "file" / "below")):
        (tmp_path / "file").write_text("a file, not a folder")
        monkeypatch.setenv(local_head_kernel.CACHE_ENV, folder)
        assert local_head_kernel.build().local_head_rows is not None
    assert local_head_kernel.cache_dir() is not None
    monkeypatch.setenv(local_head_kernel.CACHE_ENV, "off")
    assert local_head_kernel.cache_dir() is None
    monkeypatch.delenv(local_head_kernel.CACHE_ENV)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)  # no home at all
    assert local_head_kernel.cache_dir() is None


def test_without_a_compiler_the_scorer_keeps_xla(monkeypatch):
    """A kernel that does not build is said once and leaves XLA (``auto``); asking for it
    by name is an error that says why; ``HGAN_HEAD_KERNEL=xla`` never builds it."""
    import types

    from hgan.config import preset
    from hgan.evaluation import hgan_scoring

    monkeypatch.setattr(local_head_kernel, "_STATE", {})
    monkeypatch.setenv("CC", "/bin/false")
    assert local_head_kernel.load() is None
    assert "false" in local_head_kernel.load_error()
    model = types.SimpleNamespace(config=preset("tiny"), word_head=None, phrase_head=None)
    assert hgan_scoring.Scorer(model).head_kernel_used() == "xla"
    with pytest.raises(RuntimeError, match="not available: .*false"):
        hgan_scoring.Scorer(model, head_kernel="native").head_kernel_used()
    with pytest.raises(ValueError, match="head_kernel"):
        hgan_scoring.Scorer(model, head_kernel="c")

    monkeypatch.setattr(local_head_kernel, "_STATE", {})
    monkeypatch.delenv("CC")
    if local_head_kernel.load() is not None:
        # A head of k above the kernel's: XLA under auto, an error when asked by name.
        big = LocalMatching(hidden=4, k1=local_head_kernel.MAX_K + 1, k2=2)
        model_k = types.SimpleNamespace(config=preset("tiny"), word_head=big,
                                        phrase_head=None)
        assert hgan_scoring.Scorer(model_k).grid_block("word", 300, 300, 12, 4) == \
            hgan_scoring.Scorer(model_k, head_kernel="xla").grid_block("word", 300, 300, 12, 4)
        assert not hgan_scoring.Scorer(model_k)._native("word")
        with pytest.raises(ValueError, match="k1, k2 ≤ 8"):
            hgan_scoring.Scorer(model_k, head_kernel="native")._native("word")
        small = LocalMatching(hidden=4, k1=2, k2=2)
        model_s = types.SimpleNamespace(config=preset("tiny"), word_head=small,
                                        phrase_head=None)
        assert hgan_scoring.Scorer(model_s)._native("word")

    monkeypatch.setattr(local_head_kernel, "_STATE", {})
    monkeypatch.setenv(local_head_kernel.ENV, "xla")
    assert local_head_kernel.load() is None and local_head_kernel.load_error() is None
    assert hgan_scoring.Scorer(model).head_kernel_used() == "xla"
