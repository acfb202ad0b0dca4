import io
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from hgan import families
from hgan.data import pipeline
from hgan.data.phrases import extract_noun_phrases
from hgan.evaluation import buffers, hgan_scoring, metrics
from hgan.modeling.hgan.model import build_model, load_model
from hgan.serving import searcher as search
from hgan.tf_compat import tf
from hgan.training import run_dir

from tests_support import headless_browser, post_json

# Each test trains or loads a tiny model (the fast tier, -m "not slow", skips them).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(hgan_run):
    """conftest's ``hgan_run``: a tiny HGAN trained 60 steps (read only)."""
    return hgan_run


@pytest.fixture(scope="module")
def loaded(trained):
    """(model, config, checkpoint) of ``trained``, built once for the module's readers."""
    return load_model(trained)


def test_eval_writes_json_markdown_and_figures(trained, loaded, tiny_data, tmp_path):
    out = str(tmp_path / "metrics.json")
    lines = []
    report = families.evaluate(trained, tiny_data, "test", out, log=lines.append)
    saved = json.load(open(out))
    # What the caps cut, first: the test captions have 10 and 8 WordPieces, 2 phrases each;
    # then the progress of the encodings, the exact levels and both modes.
    assert lines[:2] == [
        "test captions cut by data.max_len=16 (14 WordPieces after [CLS] and [SEP]): 0 of 12 "
        "(0.000 %); the longest has 10",
        "test captions with more noun phrases than data.max_phrases=3 (the last ones are "
        "dropped): 0 of 12 (0.000 %); the most is 2"]
    assert [re.sub(r"[\d.]+ s$", "T", line) for line in lines[2:]] == [
        "encoding the test split's images: 6 in T",
        "encoding the test split's captions: 12 in T",
        "scoring every pair at the word level: 72 pairs in T",
        "scoring every pair at the phrase level: 72 pairs in T",
        "scored exact: T", "scored two_stage: T"]
    assert (saved["captions_cut"]["tokens"]["cut"], saved["captions_cut"]["captions"]) == (0, 12)
    for key in ("t2i", "i2t", "config", "timing", "exact", "two_stage"):
        assert key in saved
    assert set(saved["t2i"]) >= {"R1", "R5", "R10", "mAP", "mINP"}
    assert saved["queries"] == 12 and saved["gallery"] == 6
    table = open(str(tmp_path / "metrics.md")).read()
    assert "| exact | t2i |" in table and "| level alone (exact) |" in table
    # Each level ranked alone, and Fig. 4 as numbers over the split.
    assert set(saved["levels_exact"]) == {"sentence", "word", "phrase"}
    model, config, _ = loaded
    texts, images = hgan_scoring.encode_split(model, tiny_data, config, "test")
    exact = hgan_scoring.Scorer(model).exact(texts, images)
    for name, level in saved["levels_exact"].items():  # each level's own ranking
        want = metrics.retrieval_metrics(exact[name], texts["label"], images["label"])
        assert level["t2i"]["R1"] == pytest.approx(want["R1"])
        assert level["t2i"]["mAP"] == pytest.approx(want["mAP"])
    selection = saved["selection"]
    assert selection["selections"] > 0 and selection["punctuation_share"] == 0.0
    assert "Fig. 4 over the split" in table
    for png in report["figures"].values():
        assert Image.open(png).size[0] > 50


def test_a_model_loaded_after_a_mixed_precision_run_is_float32_as_in_a_process_of_its_own(
        trained):
    """hgan-train --test_json / --export_dir load the best checkpoint in the process that
    trained it: a mixed-precision run leaves mixed_float16 global, and the model evaluated
    and exported must still be the float32 one hgan-eval and hgan-export build."""
    from hgan.tf_compat import keras
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model, _, _ = families.load(trained)
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    policies = {layer.dtype_policy.name for layer in model.submodules
                if isinstance(layer, keras.layers.Layer)}
    assert "float32" in policies and not any("float16" in p for p in policies), policies


def test_two_stage_with_k_covering_the_gallery_equals_exact(loaded, tiny_data):
    model, config, _ = loaded
    texts, images = hgan_scoring.encode_split(model, tiny_data, config, "test")
    scorer = hgan_scoring.Scorer(model)
    exact = scorer.exact(texts, images)["total"]
    two = scorer.two_stage(texts, images, k=len(images["label"]), direction="t2i")
    np.testing.assert_allclose(two + 0, exact, atol=1e-5)
    # With a small k, items outside the top-k keep their stage-1 order, behind the top-k.
    k = 2
    two = scorer.two_stage(texts, images, k=k, direction="t2i")
    stage1 = scorer.sentence(texts, images)
    for q in range(len(texts["label"])):
        order = np.argsort(-two[q], kind="stable")
        first = np.argsort(-stage1[q], kind="stable")
        assert set(order[:k]) == set(first[:k])
        np.testing.assert_array_equal(order[k:], first[k:])


def test_evaluation_says_how_far_it_is(loaded, tiny_data, monkeypatch):
    """With a ``log``, evaluation reports its progress: each encoding and each exact-mode
    level with its count, rate and ETA while it runs (every line here: no wait between
    lines), a line when each ends and the time of each mode; without one, nothing."""
    from hgan.evaluation import encode
    model, config, _ = loaded
    monkeypatch.setattr(encode, "PROGRESS_EVERY", 0.0)
    lines = []
    report = hgan_scoring.evaluate(model, tiny_data, config, "test",
                                   modes=("exact", "two_stage"), log=lines.append)
    text = "\n".join(lines)
    images, captions = report["gallery"], report["queries"]
    assert re.search(rf"encoding the test split's images: {images} in [\d.]+ s", text)
    assert re.search(rf"encoding the test split's captions: {captions} in [\d.]+ s", text)
    assert re.search(r"encoding the test split's captions: \d+/\d+, [\d.,]+/s, ETA \d+ s",
                     text)
    for level in ("word", "phrase"):
        assert re.search(rf"scoring every pair at the {level} level: {images * captions:,} "
                         r"pairs in [\d.]+ s", text)
    assert re.search(r"scored exact: [\d.]+ s", text) and re.search(
        r"scored two_stage: [\d.]+ s", text)
    printed = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: printed.append(a))
    hgan_scoring.evaluate(model, tiny_data, config, "test", modes=("exact",))
    assert printed == []


@pytest.mark.parametrize("head_kernel", ["native", "xla"])
def test_a_second_evaluation_of_a_model_traces_nothing_again(loaded, tiny_data, monkeypatch,
                                                             head_kernel):
    # Validation runs every few hundred steps on the same model: its encoders and head
    # scorers are compiled once per model (fresh functions re-traced each pass: 14 s of a
    # demo val pass, now about 4); with the heads' C kernel, the encoders only (the kernel
    # scores the pairs, γ included, outside TensorFlow).
    from hgan.evaluation import encode, local_head_kernel
    model, config, _ = loaded
    if head_kernel == "xla":
        monkeypatch.setenv(local_head_kernel.ENV, "xla")
    elif local_head_kernel.load() is None:
        pytest.skip(f"no C compiler builds the kernel: {local_head_kernel.load_error()}")
    hgan_scoring.evaluate(model, tiny_data, config, "test", modes=("exact", "two_stage"))
    names = ("encode_image", "encode_text") + tuple(
        f"{side}/{level}" for side in ("prepare_text", "prepare_image")
        for level in ("word", "phrase")) + (
        ("pairs/word", "pairs/phrase") if head_kernel == "xla" else ())
    fns = [encode.compiled(model, name, None) for name in names]
    traced = [f.experimental_get_tracing_count() for f in fns]
    assert min(traced) >= 1
    hgan_scoring.evaluate(model, tiny_data, config, "test", modes=("exact", "two_stage"))
    assert [encode.compiled(model, name, None) for name in names] == fns
    assert [f.experimental_get_tracing_count() for f in fns] == traced


def test_evaluate_prepares_the_heads_tables_once_for_both_modes(loaded, tiny_data,
                                                                monkeypatch):
    """The heads' per-item tables (``Scorer._prepared``) are made once and read by exact
    and two-stage mode alike: the same figures as each mode with its own; an unknown mode
    is refused before any work."""
    model, config, _ = loaded
    made = []
    prepared = hgan_scoring.Scorer._prepared
    monkeypatch.setattr(hgan_scoring.Scorer, "_prepared",
                        lambda self, *args: made.append(1) or prepared(self, *args))
    both = hgan_scoring.evaluate(model, tiny_data, config, "test",
                                 modes=("exact", "two_stage"))
    assert len(made) == 1
    for mode in ("exact", "two_stage"):
        alone = hgan_scoring.evaluate(model, tiny_data, config, "test", modes=(mode,))
        assert alone[mode] == both[mode], mode
    assert len(made) == 3
    with pytest.raises(ValueError, match="unknown mode 'exactly'"):
        hgan_scoring.evaluate(model, tiny_data, config, "test", modes=("exact", "exactly"))
    assert len(made) == 3


def test_the_c_kernel_and_xla_score_a_trained_model_alike(loaded, tiny_data, monkeypatch):
    """Both levels of the trained tiny model, exact and two-stage, with the heads after γ
    in the C kernel and under XLA: the same scores within 1e-5 and the same rankings; the
    prepared tables in pre-faulted maps (``POPULATE_FROM`` 0) outlive the arrays that
    made them."""
    import gc

    from hgan.evaluation import local_head_kernel
    if local_head_kernel.load() is None:
        pytest.skip(f"the C kernel is not available: {local_head_kernel.load_error()}")
    model, config, _ = loaded
    texts, images = hgan_scoring.encode_split(model, tiny_data, config, "test")
    xla = hgan_scoring.Scorer(model, head_kernel="xla")
    want = xla.exact(texts, images)
    monkeypatch.setattr(buffers, "POPULATE_FROM", 0)
    native = hgan_scoring.Scorer(model, head_kernel="native")
    prep = native._prepared(texts, images)
    for level in ("word", "phrase"):
        prep[level].pop("text_np"), prep[level].pop("image_np")
    gc.collect()
    for level in ("word", "phrase"):  # the tensors still read the maps' values
        np.testing.assert_allclose(prep[level]["image"][1].numpy(),
                                   xla._prepared(texts, images)[level]["image"][1].numpy())
    got = native.exact(texts, images)
    for level in ("word", "phrase", "total"):
        np.testing.assert_allclose(got[level], want[level], rtol=1e-5, atol=1e-6)
    k = 3
    for a, b in zip(native.two_stage_both(texts, images, k), xla.two_stage_both(texts, images, k)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        # The same ranking up to near-ties: at each of the first k ranks, the item each
        # puts there has the same score. (The test split has repeated captions: the
        # kernel scores them alike to the bit, XLA in the last place, so the two may
        # order a tie differently.)
        top_a, top_b = (np.argsort(-m, axis=1, kind="stable")[:, :k] for m in (a, b))
        np.testing.assert_allclose(np.take_along_axis(b, top_a, 1),
                                   np.take_along_axis(b, top_b, 1), rtol=1e-5, atol=1e-6)


def test_chunked_scoring_matches_one_big_chunk(loaded, tiny_data):
    model, config, _ = loaded
    texts, images = hgan_scoring.encode_split(model, tiny_data, config, "test")
    big = hgan_scoring.Scorer(model).exact(texts, images)["total"]
    small = hgan_scoring.Scorer(model, memory_budget_bytes=1)  # forces 1×1 chunks
    np.testing.assert_allclose(small.exact(texts, images)["total"], big, atol=1e-5)
    # The scorer's k-sparse XLA path equals the model's own dense scoring of every pair.
    feats = lambda d: {k: tf.constant(v) for k, v in d.items()  # noqa: E731
                       if k in ("global", "word", "word_mask", "phrase", "phrase_mask")}
    dense = model.score(feats(texts), feats(images), training=False)["total"].numpy()
    np.testing.assert_allclose(big, dense, atol=1e-5)


def _random_scorer(tiny_config, queries=7, gallery=5, regions=6, seed=0):
    """Scorer inputs without training or data: two LocalMatching heads of the tiny config
    with their initial weights, random features; texts 0-4 of at most 8 words, 5-6 of more
    (so a chunk trimmed to the wrong rows' length, 8 slots, would cut real words)."""
    import types
    from hgan.layers.matching import LocalMatching
    # Local scores weighted up, so that they re-order the stage-1 head.
    config = tiny_config.replace(score_weights=(1.0, 6.0, 4.0))
    rng = np.random.default_rng(seed)
    L, M, C, E = config.data.max_len, config.data.max_phrases, config.model.local_dim, config.model.embed_dim
    heads = {}
    for level, slots in (("word", L), ("phrase", M)):
        tf.random.set_seed(seed + slots)
        head = LocalMatching(hidden=config.model.mlp_hidden, k1=config.model.k1, k2=config.model.k2,
                             temperature=config.model.temperature, attention=config.model.attention,
                             name=f"{level}_matching")
        head((tf.zeros([1, slots, C]), tf.ones([1, slots]), tf.zeros([1, regions, C])))
        heads[level] = head
    model = types.SimpleNamespace(config=config, word_head=heads["word"],
                                  phrase_head=heads["phrase"])

    def normal(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def mask(count, slots, low):
        return (np.arange(slots)[None] < rng.integers(low, slots + 1, count)[:, None]
                ).astype(np.float32)

    lengths = np.array([3, 5, 2, 6, 4, 14, 16][:queries])
    word_mask = (np.arange(L)[None] < lengths[:, None]).astype(np.float32)
    texts = {"global": normal(queries, E), "word": normal(queries, L, C),
             "word_mask": word_mask, "phrase": normal(queries, M, C),
             "phrase_mask": mask(queries, M, 1), "label": np.arange(queries)}
    images = {"global": normal(gallery, E), "word": normal(gallery, regions, C),
              "phrase": normal(gallery, regions, C), "label": np.arange(gallery)}
    return model, texts, images


@pytest.mark.parametrize("direction", ["i2t", "t2i"])
def test_two_stage_reranks_the_stage1_head_by_the_combined_score(tiny_config, direction):
    """Against NumPy: stage-1 cosine order, its top k re-ordered by sentence + word + phrase
    (the heads' own dense scores of every pair, weighted), the rest in stage-1 order. A
    budget of 6 word-level pairs per call makes the scorer under XLA chunk and pad the
    queries; the C kernel takes them by text width."""
    model, texts, images = _random_scorer(tiny_config)
    k = 3
    w_sentence, w_word, w_phrase = model.config.eval.score_weights
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    stage1 = unit(texts["global"]).astype(np.float64) @ unit(images["global"]).T
    dense = {level: getattr(model, f"{level}_head")(
        (tf.constant(texts[level]), tf.constant(texts[f"{level}_mask"]),
         tf.constant(images[level])), training=False).numpy() for level in ("word", "phrase")}
    combined = w_sentence * stage1 + w_word * dense["word"] + w_phrase * dense["phrase"]
    if direction == "i2t":
        stage1, combined = stage1.T, combined.T
    want = []
    for s1, total in zip(stage1, combined):
        first = np.argsort(-s1, kind="stable")
        head = first[:k][np.argsort(-total[first[:k]], kind="stable")]
        want.append(np.concatenate([head, first[k:]]))
    want = np.array(want)
    assert (want[:, :k] != np.argsort(-stage1, axis=1, kind="stable")[:, :k]).any(), \
        "the local scores re-order no head: this test could not tell re-ranking from none"

    scorer = hgan_scoring.Scorer(model, memory_budget_bytes=70_000)  # word: 6 pairs a call
    calls = []
    chunk_fn = scorer._chunk_fn

    def spy(level):
        fn = chunk_fn(level)
        return lambda prep, rows, cols, layout, used: (
            calls.append((level, np.shape(rows), np.shape(cols))) or
            fn(prep, rows, cols, layout, used))

    scorer._chunk_fn = spy
    got = scorer.two_stage(texts, images, k, direction)
    words = [shapes for level, *shapes in calls if level == "word"]
    if scorer._native("word"):  # every pair once, in calls by text width (9 or 16 slots)
        assert sum(t[0] for t, i in words) == stage1.size // stage1.shape[1] * k
        assert all(t == i for t, i in words)
    else:  # queries 2 at a time (7 texts: 2 2 2 2, the last one padded; 5 images: 2 2 2)
        assert len(words) == (4 if direction == "t2i" else 3)
        assert all(sorted(shape) == [(2,), (2, k)] for shape in words)
    assert got.shape == stage1.shape
    np.testing.assert_array_equal(np.argsort(-got, axis=1, kind="stable"), want)
    np.testing.assert_allclose(np.take_along_axis(got, want[:, :k], 1),
                               np.take_along_axis(combined, want[:, :k], 1), atol=1e-5)
    # The C kernel scores the union of both directions' pairs once: the same scores to
    # the bit as each direction apart (a pair's score depends on no other pair).
    calls.clear()
    both = scorer.two_stage_both(texts, images, k)
    np.testing.assert_array_equal(both[0 if direction == "t2i" else 1], got)
    if scorer._native("word"):
        s1 = unit(texts["global"]) @ unit(images["global"]).T
        t2i = {(t, i) for t, row in enumerate(np.argsort(-s1, 1)[:, :k]) for i in row}
        i2t = {(t, i) for i, row in enumerate(np.argsort(-s1.T, 1)[:, :k]) for t in row}
        union = t2i | i2t  # 21 + 15 pairs of 35: some are shared
        assert len(union) < len(t2i) + len(i2t)
        for level in ("word", "phrase"):
            assert sum(t[0] for lv, t, i in calls if lv == level) == len(union), level
    for wide in (5, 8):  # k of every image (G = 5), then of every text too (Q = 7)
        both = scorer.two_stage_both(texts, images, wide)
        for d, got_d in zip(("t2i", "i2t"), both):
            np.testing.assert_array_equal(got_d, scorer.two_stage(texts, images, wide, d))


_SERVE = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    import tensorflow_text  # registers the tokenizer ops; no project code is imported
    assert not any(m == "hgan" or m.startswith("hgan.") for m in sys.modules)
    served = tf.saved_model.load({path!r})
    texts = tf.constant(json.loads({texts!r}))
    images = tf.constant([open(p, "rb").read() for p in json.loads({images!r})])
    out = served.signatures["score"](texts=texts, images=images)
    enc = served.signatures["encode_text"](sentences=tf.constant(["", "a man"]))
    print("RESULT" + json.dumps({{"score": out["score"].numpy().tolist(),
                                 "empty": enc["global"].numpy()[0].tolist()}}))
""")


@pytest.fixture(scope="module")
def exported(hgan_export):
    """conftest's ``hgan_export`` of ``hgan_run`` (read only)."""
    return hgan_export


@pytest.fixture(scope="module")
def served(exported):
    """``exported`` loaded by ``tf.saved_model.load``, once for the module's readers."""
    return tf.saved_model.load(exported)


def _png(path, colour):
    Image.new("RGB", (16, 32), colour).save(path)
    return str(path)


def test_export_serves_the_same_scores_without_project_code(loaded, exported, tmp_path):
    out_dir = exported
    texts = ["a man in a red shirt with a bag.", "a man wearing blue coat and pants.",
             "", "a man " * 50]
    images = [_png(tmp_path / "a.png", (200, 30, 30)), _png(tmp_path / "b.png", (20, 40, 220))]
    code = _SERVE.format(path=out_dir, texts=json.dumps(texts), images=json.dumps(images))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_USE_LEGACY_KERAS"] = "1"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, cwd=str(tmp_path), env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, proc.stderr[-3000:]
    served = json.loads(line[0][len("RESULT"):])

    model, config, _ = loaded
    tok = pipeline.make_tokenizer(config)
    spans = tf.ragged.constant(
        [[[s, e] for _, s, e in extract_noun_phrases(t, tagger="fallback")] for t in texts],
        ragged_rank=1, inner_shape=(2,), dtype=tf.int64)
    text_feats = model.encode_text(tok(tf.constant(texts), spans), training=False)
    pixels = tf.stack([pipeline.preprocess_image(pipeline.decode_image(open(p, "rb").read()), config)
                       for p in images])
    image_feats = model.encode_image(pixels, training=False)
    expected = model.score(text_feats, image_feats)["total"].numpy()
    np.testing.assert_allclose(np.array(served["score"]), expected, atol=1e-5)
    assert np.isfinite(served["empty"]).all()


def test_export_rejects_bytes_that_are_not_an_image(served):
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a JPEG or PNG"):
        served.signatures["encode_image"](images=tf.constant([b"hello, not an image"]))
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    ok = served.signatures["encode_image"](images=tf.constant([buf.getvalue()]))
    assert ok["global"].shape[0] == 1


def test_search_indexes_a_folder_skipping_bad_files_and_ranks_by_score(exported, served, tmp_path):
    folder = tmp_path / "gallery"
    (folder / "sub").mkdir(parents=True)
    _png(folder / "red.png", (220, 20, 20))
    _png(folder / "sub" / "blue.png", (20, 20, 220))
    (folder / "broken.jpg").write_bytes(b"not really a jpeg")
    index = str(tmp_path / "gallery")
    report = search.build_index(exported, index, images=str(folder), log=lambda *_: None,
                                dtype="float32")
    assert report["images"] == 2
    assert [s["path"] for s in report["skipped"]] == ["broken.jpg"]
    results = search.query(exported, index, "a man in a red shirt", top_k=5)
    assert {r["path"] for r in results} == {"red.png", os.path.join("sub", "blue.png")}
    # Both re-ranked (the export's rerank_k ≥ 2) and ordered by the fused score, which is
    # the SavedModel's own score signature on the raw bytes; stage 1 is the sentence
    # level's cosine.
    assert results[0]["rerank"] >= results[1]["rerank"]
    raw = served.signatures["score"](
        texts=tf.constant(["a man in a red shirt"]),
        images=tf.constant([(folder / r["path"]).read_bytes() for r in results]))
    np.testing.assert_allclose(raw["score"].numpy()[0], [r["rerank"] for r in results],
                               atol=1e-4)
    text = served.signatures["encode_text"](sentences=tf.constant(["a man in a red shirt"]))
    image = served.signatures["encode_image"](
        images=tf.constant([(folder / r["path"]).read_bytes() for r in results]))
    t = tf.math.l2_normalize(text["global"], -1)
    v = tf.math.l2_normalize(image["global"], -1)
    np.testing.assert_allclose((t @ tf.transpose(v)).numpy()[0],
                               [r["score"] for r in results], atol=1e-4)
    with pytest.raises(ValueError, match="empty"):
        search.query(exported, index, "   ")


def test_export_writes_its_config_into_assets_extra(trained, exported):
    from hgan.modeling.checkpoints import resolve_checkpoint
    from hgan.config import Config
    from hgan.serving.savedmodel import export_config
    assert os.path.isfile(os.path.join(exported, "assets.extra", "config.json"))
    assert export_config(exported) == Config.load(trained)
    assert open(os.path.join(exported, "checkpoint.txt")).read() == \
        resolve_checkpoint(trained, "best") + "\n"
    assert os.listdir(os.path.dirname(exported)) == ["saved"]  # no temporary left beside it
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(exported).st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700


class _Doubler(tf.Module):
    """The smallest servable: save_servable's file handling without a model's export time."""

    def __init__(self, factor):
        super().__init__()
        self.factor = tf.Variable(float(factor))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def times(self, x):
        return {"y": self.factor * x}


def _save(out, tiny_config, factor):
    from hgan.serving.savedmodel import save_servable
    module = _Doubler(factor)
    return save_servable(module, {"times": module.times.get_concrete_function()}, str(out),
                         tiny_config.replace(seed=factor), f"ckpt-{factor}")


def _served_factor(out):
    return float(tf.saved_model.load(str(out)).signatures["times"](
        x=tf.constant([1.0]))["y"].numpy()[0])


def _tree(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


@pytest.mark.parametrize("swap", ["exchange", "two_renames"])
def test_re_export_replaces_the_old_export_whole(tiny_config, tmp_path, monkeypatch, swap):
    from hgan.serving import savedmodel as export_lib
    out = tmp_path / "saved"
    _save(out, tiny_config, 3)
    exchanged = []
    real_exchange = export_lib._exchange
    if swap == "two_renames":
        monkeypatch.setattr(export_lib, "_exchange", lambda a, b: False)
    else:
        monkeypatch.setattr(export_lib, "_exchange",
                            lambda a, b: exchanged.append(real_exchange(a, b)) or exchanged[-1])
    _save(out, tiny_config, 5)
    if swap == "exchange" and exchanged != [True]:
        pytest.skip("renameat2(RENAME_EXCHANGE) is not supported on this file system")
    assert _served_factor(out) == 5.0
    assert export_lib.export_config(str(out)).train.seed == 5
    assert (out / "checkpoint.txt").read_text() == "ckpt-5\n"
    assert os.listdir(tmp_path) == ["saved"]  # the old export and the temporaries are gone


def test_a_failed_export_leaves_the_old_one_untouched(tiny_config, tmp_path, monkeypatch):
    out = tmp_path / "saved"
    _save(out, tiny_config, 3)
    before = _tree(out)
    real_save = tf.saved_model.save

    def half_written(module, folder, signatures=None):
        real_save(module, folder, signatures=signatures)
        raise RuntimeError("disk full")  # after the SavedModel, before config.json

    monkeypatch.setattr(tf.saved_model, "save", half_written)
    with pytest.raises(RuntimeError, match="disk full"):
        _save(out, tiny_config, 5)
    assert _tree(out) == before
    assert os.listdir(tmp_path) == ["saved"]
    assert _served_factor(out) == 3.0


def test_a_failed_swap_puts_the_old_export_back(tiny_config, tmp_path, monkeypatch):
    """Without RENAME_EXCHANGE: if the new export cannot be renamed in, the old one, already
    renamed aside, goes back to its name."""
    from hgan.serving import savedmodel as export_lib
    out = tmp_path / "saved"
    _save(out, tiny_config, 3)
    before = _tree(out)
    monkeypatch.setattr(export_lib, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def rename(src, dst):
        if os.path.basename(str(src)).startswith(".saved.tmp-") and str(dst) == str(out):
            raise OSError("injected failure")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="injected failure"):
        _save(out, tiny_config, 5)
    assert _tree(out) == before
    assert os.listdir(tmp_path) == ["saved"]


def test_export_refuses_to_replace_a_folder_that_is_not_a_savedmodel(tiny_config, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not a SavedModel"):
        _save(out, tiny_config, 3)
    assert os.listdir(out) == ["notes.txt"] and os.listdir(tmp_path) == ["precious"]
    empty = tmp_path / "empty"
    empty.mkdir()
    _save(empty, tiny_config, 3)  # an empty folder is fine to fill
    assert _served_factor(empty) == 3.0


def test_a_checkpoint_missing_weights_of_the_config_is_a_clear_error(trained, tmp_path):
    """A model_dir whose checkpoint lacks weights its config.json needs (here: the phrase
    head) fails to load, instead of leaving those weights random."""
    import shutil
    from hgan.config import Config
    model_dir = str(tmp_path / "run")
    shutil.copytree(trained, model_dir)
    config = Config.load(model_dir)
    _, _, path = load_model(model_dir, "latest")
    smaller = build_model(config.replace(use_phrase=False), pipeline.make_tokenizer(config)
                          .vocab_size + 1, 6)
    path = tf.train.Checkpoint(model=smaller).write(os.path.join(model_dir, "partial"))
    with pytest.raises(ValueError, match="does not match the model") as error:
        load_model(model_dir, path)
    assert "phrase_matching" in str(error.value.__cause__)


def test_a_sync_batchnorm_run_loads_for_inference_with_plain_batchnorm(tiny_data, tiny_vocab,
                                                                       tmp_path):
    """Its checkpoint restores into the fused per-replica layers (same variables), which
    compute what the synchronised ones do at inference."""
    from hgan.modeling.checkpoints import restore_model
    from hgan.config import preset
    from hgan.tf_compat import keras
    config = preset("tiny").replace(
        vocab_file=tiny_vocab, image_height=32, image_width=16, bert="scratch:2x16",
        bert_layers="last", batch_size=4, identities_per_batch=2, max_steps=2,
        checkpoint_every=2, sync_batchnorm=True)
    model_dir = str(tmp_path / "run")
    run_dir.reconcile_config(config, model_dir)
    families.train(config, tiny_data, model_dir, val_split="none", log=lambda _: None)
    model, loaded_config, path = load_model(model_dir, "latest")
    assert loaded_config.model.sync_batchnorm  # the saved config is reported as trained
    norms = [m for m in model.image_encoder.submodules
             if isinstance(m, keras.layers.BatchNormalization)]
    assert norms and not any(m.synchronized for m in norms)
    synced = build_model(config, pipeline.make_tokenizer(config).vocab_size + 1, 6)
    restore_model(synced, path)
    images = tf.random.stateless_uniform([3, 32, 16, 3], seed=[3, 4])
    want, got = synced.encode_image(images), model.encode_image(images)
    for key in want:
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), atol=1e-5)
    trained_means = [m.moving_mean.numpy() for m in norms]
    assert any(np.abs(mean).max() > 0 for mean in trained_means)  # statistics were restored


def test_the_fused_score_is_the_one_output_of_score(loaded, served, tmp_path):
    # TF Serving returns a lone output as `outputs`; a loaded signature's outputs come back
    # in an order that changes between processes. So `score` has the fused score alone and
    # the levels are in `score_levels`, by name; fused = Σ weight · level.
    assert list(served.signatures["score"].structured_outputs) == ["score"]
    assert list(served.signatures["rerank"].structured_outputs) == ["score"]
    _, config, _ = loaded
    texts = tf.constant(["a man in a red shirt.", "a man in blue pants."])
    images = tf.constant([open(_png(tmp_path / "a.png", (200, 30, 30)), "rb").read()])
    fused = served.signatures["score"](texts=texts, images=images)["score"].numpy()
    levels = served.signatures["score_levels"](texts=texts, images=images)
    assert set(levels) == {"sentence", "word", "phrase"}
    weights = dict(zip(("sentence", "word", "phrase"), config.eval.score_weights))
    np.testing.assert_allclose(fused, sum(weights[k] * levels[k].numpy() for k in levels),
                               atol=1e-5)
    # rerank (what search re-ranks with) = the fused score from the two encoders' outputs:
    # the sentence is not encoded a second time.
    text = served.signatures["encode_text"](sentences=texts)
    image = served.signatures["encode_image"](images=images)
    encoded = served.signatures["rerank"](
        **{f"text_{k}": v for k, v in text.items()}, **{f"image_{k}": v for k, v in image.items()})
    np.testing.assert_allclose(encoded["score"].numpy(), fused, atol=1e-5)


def test_rerank_rotated_on_rows_before_their_rotation_is_rerank(served, tmp_path):
    # A pq gallery stores rows y [I, N, P] (P ≥ C', zeros appended) whose decoded tables
    # are (y·R)[..., :C']: fold_rotations once, then rerank_rotated on y scores as rerank
    # on the decoded tables.
    sig = served.signatures
    texts = tf.constant(["a man in a red shirt.", "a woman with a black bag."][:1])
    images = tf.constant([open(_png(tmp_path / f"{i}.png", c), "rb").read()
                          for i, c in enumerate([(200, 30, 30), (30, 30, 200), (90, 90, 90)])])
    text = sig["encode_text"](sentences=texts)
    image = sig["encode_image"](images=images)
    rng = np.random.default_rng(3)
    dim = image["word"].shape[-1]
    width = dim + 3
    rows, turns = {}, {}
    for table in ("word", "phrase"):
        turn, _ = np.linalg.qr(rng.normal(size=(width, width)))
        turns[f"rotation_{table}"] = tf.constant(turn, tf.float32)
        # y with (y·R)[:, :C'] = the table: y = [table, 0]·Rᵀ.
        padded = np.concatenate([image[table].numpy(),
                                 np.zeros((*image[table].shape[:-1], 3), np.float32)], -1)
        rows[f"image_{table}"] = tf.constant(padded @ turn.T, tf.float32)
    folds = sig["fold_rotations"](**turns)
    assert set(folds) == {"fold_word_gamma", "fold_word_fuse", "fold_phrase_gamma",
                          "fold_phrase_fuse"}
    text_inputs = {f"text_{k}": v for k, v in text.items()}
    want = sig["rerank"](**text_inputs, **{f"image_{k}": v for k, v in image.items()})
    got = sig["rerank_rotated"](**text_inputs, image_global=image["global"], **rows, **folds)
    np.testing.assert_allclose(got["score"].numpy(), want["score"].numpy(), rtol=1e-5,
                               atol=1e-6)


def test_the_service_ranks_as_two_stage_evaluation_does(loaded, exported, served, tiny_data,
                                                         tmp_path):
    # Through real HTTP on loopback: the service's ranking of every test caption equals
    # eval.py's two-stage algorithm (hgan_scoring.Scorer.two_stage) on the export's own
    # features (its in-graph phrase chunker, as a served query has).
    from hgan.data import records
    from hgan.serving import service
    gallery_dir = str(tmp_path / "gallery")
    search.build_index(exported, gallery_dir, data_dir=tiny_data, split="test",
                       dtype="float32", log=lambda *_: None)
    searcher = search.Searcher(exported, gallery_dir)
    server = service.Server(service.create_app(searcher)).start()
    try:
        examples = [records.parse_example(e) for e in
                    tf.data.TFRecordDataset(pipeline.split_files(tiny_data, "test"))]
        captions = [c.decode() for e in examples for c in e["captions"].numpy()]
        texts = {k: v.numpy() for k, v in
                 served.signatures["encode_text"](sentences=tf.constant(captions)).items()}
        images = {k: np.asarray(searcher.store.array(k)) for k in ("global", "word", "phrase")}
        model, _, _ = loaded
        k = 3
        want = hgan_scoring.Scorer(model).two_stage(texts, images, k=k, direction="t2i")
        paths = searcher.store.paths()
        for i, caption in enumerate(captions):
            got = post_json(server.url + "/api/search",
                            {"text": caption, "top_k": len(paths), "rerank_k": k})["results"]
            assert [r["row"] for r in got] == np.argsort(-want[i], kind="stable").tolist(), i
            np.testing.assert_allclose([r["rerank"] for r in got[:k]],
                                       np.sort(want[i])[::-1][:k], atol=1e-4)
            assert [r["path"] for r in got] == [paths[r["row"]] for r in got]
        # Fig. 4 for the first caption's best result: k1 words per region, words of the
        # caption, the same selections as the model's own word head in process.
        explained = post_json(server.url + "/api/explain",
                              {"text": captions[0], "row": got[0]["row"]})
        words = pipeline.make_tokenizer(model.config).caption_words(captions[0])
        assert explained["words"] == words
        k1 = min(model.config.model.k1, len(words))
        assert all(len(region) == k1 for region in explained["regions"])
        alpha, _ = model.word_head.selections(
            tf.constant(texts["word"][:1]), tf.constant(texts["word_mask"][:1]),
            tf.constant(images["word"][got[0]["row"]:got[0]["row"] + 1]))
        want_slots = [sorted(np.flatnonzero(a > 0.5).tolist()) for a in alpha.numpy()[0, 0]]
        assert [sorted(w["slot"] for w in region) for region in explained["regions"]] == \
            want_slots
    finally:
        server.stop()


def test_the_page_in_a_real_browser(exported, tiny_data, tmp_path):
    # Load the page, type a test caption, see the grid in the API's ranking (which the test
    # above pins to two-stage evaluation), open the best result's word map; a screenshot
    # stays in the test's tmp dir (printed).
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from hgan.data import records
    from hgan.serving import service
    gallery_dir = str(tmp_path / "gallery")
    search.build_index(exported, gallery_dir, data_dir=tiny_data, split="test",
                       log=lambda *_: None)
    searcher = search.Searcher(exported, gallery_dir)
    example = records.parse_example(next(iter(
        tf.data.TFRecordDataset(pipeline.split_files(tiny_data, "test")))))
    caption = example["captions"].numpy()[0].decode()
    want = searcher.query(caption, top_k=10)
    server = service.Server(service.create_app(searcher)).start()
    browser = headless_browser()
    try:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: "images indexed" in b.find_element(By.ID, "status").text)
        browser.find_element(By.ID, "text").send_keys(caption)
        browser.find_element(By.ID, "go").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#grid .result")) == len(want))
        cards = browser.find_elements(By.CSS_SELECTOR, "#grid .result")
        assert [c.get_attribute("data-path") for c in cards] == [r["path"] for r in want]
        # The caption's own person is the first card (paths are split/<label>_<shot>.png).
        label = int(example["label"].numpy())
        assert cards[0].get_attribute("data-path").split("/")[-1].split("_")[0] == str(label)
        assert "#1" in cards[0].text and f"{want[0]['score']:.3f}" in cards[0].text
        # Every card's image loaded (naturalWidth > 0): served from the gallery's records.
        wait.until(lambda b: all(b.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", img)
            for img in b.find_elements(By.CSS_SELECTOR, "#grid img")))
        cards[0].click()
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#wordmap tr"))
        rows = browser.find_elements(By.CSS_SELECTOR, "#wordmap tr")
        explained = searcher.explain(caption, want[0]["row"])
        assert len(rows) == len(explained["regions"])
        first = rows[0].find_element(By.CSS_SELECTOR, ".words").text
        assert all(w["word"] in first for w in explained["regions"][0])
        shot = str(tmp_path / "search_page.png")
        browser.save_screenshot(shot)
        print(f"screenshot: {shot}")
        assert os.path.getsize(shot) > 10_000
        # A bad request shows its message and the page keeps working.
        box = browser.find_element(By.ID, "text")
        box.clear()
        box.send_keys(" ")
        browser.find_element(By.ID, "go").click()
        wait.until(lambda b: "non-empty" in b.find_element(By.ID, "status").text)
    finally:
        browser.quit()
        server.stop()
