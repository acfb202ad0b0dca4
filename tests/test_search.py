"""Search (hgan/search.py) against a stand-in SavedModel: chunked ranking, IATV-style
re-ranking of the stage-1 head, the index builder's skipping, and every error message.

The real exported models are searched in test_eval_export.py (HGAN) and test_iatv_train.py
(IATV); here the signatures are plain functions of hand-made features, so every ranking is
known in advance.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hgan.serving import search
from hgan.tf_compat import tf
from tests_support import ROOT


class Signature:
    """What search reads of a concrete function: its input names, output names, a call."""

    def __init__(self, fn, inputs, outputs=()):
        self.fn = fn
        self.structured_input_signature = ((), {name: None for name in inputs})
        self.structured_outputs = {name: None for name in outputs}
        self.calls = []

    def __call__(self, **kwargs):
        arrays = {k: v.numpy() for k, v in kwargs.items()}
        self.calls.append(arrays)
        return {k: tf.constant(v) for k, v in self.fn(**arrays).items()}


# A query's direction in a 2-d feature space: scores are the features' dot products with it.
DIRECTIONS = {b"red": [1.0, 0.0], b"blue": [0.0, 1.0]}


def _stage1(texts, image_embedding):
    return {"score": np.array([DIRECTIONS[t] for t in texts]) @ image_embedding.T}


def _logits(texts, image_regions):
    # Stage 2 reads another feature than stage 1: region [0, 0] (+1 for a "blue" query).
    return {"logits": np.array([image_regions[:, 0, 0] + (t == b"blue") for t in texts])}


def served(rerank=True):
    signatures = {"score_features": Signature(_stage1, ["texts", "image_embedding"])}
    if rerank:
        signatures["rerank_features"] = Signature(_logits, ["texts", "image_regions"])
    return type("Served", (), {"signatures": signatures})()


# Stage-1 "red" scores 0.2 0.9 0.5 0.9 0.1: order b, d (tie: lower index first), c, a, e.
EMBEDDING = np.array([[0.2, 0.3], [0.9, 0.0], [0.5, 0.1], [0.9, 0.8], [0.1, 0.7]], np.float32)
# Stage-2 logits 4 1 3 2 5.
REGIONS = np.array([4.0, 1.0, 3.0, 2.0, 5.0], np.float32)[:, None, None] * np.ones((1, 2, 3))
PATHS = ["a.png", "b.png", "c.png", "d.png", "e.png"]


@pytest.fixture()
def index(tmp_path):
    path = str(tmp_path / "index.npz")
    np.savez(path, paths=np.array(PATHS), embedding=EMBEDDING, regions=REGIONS)
    return path


def _use(monkeypatch, model):
    monkeypatch.setattr(search, "_load", lambda savedmodel: model)
    return model


def test_stage1_ranks_the_whole_index_over_chunks(monkeypatch, index, tmp_path):
    model = _use(monkeypatch, served(rerank=False))
    results = search.query(str(tmp_path), index, "red", top_k=4, chunk=2)
    assert [r["path"] for r in results] == ["b.png", "d.png", "c.png", "a.png"]
    np.testing.assert_allclose([r["score"] for r in results], [0.9, 0.9, 0.5, 0.2], atol=1e-6)
    assert all("rerank" not in r for r in results)
    calls = model.signatures["score_features"].calls
    assert [len(c["image_embedding"]) for c in calls] == [2, 2, 1]  # chunks of 2
    assert all(list(c["texts"]) == [b"red"] for c in calls)
    blue = search.query(str(tmp_path), index, "blue", top_k=5)  # 0.3 0 0.1 0.8 0.7
    assert [r["path"] for r in blue] == ["d.png", "e.png", "a.png", "c.png", "b.png"]


def test_stage2_reorders_the_stage1_head_and_keeps_the_rest(monkeypatch, index, tmp_path):
    model = _use(monkeypatch, served())
    results = search.query(str(tmp_path), index, "red", top_k=5, rerank_k=3)
    # Head b, d, c by stage 1; logits 1, 2, 3 → c, d, b; then a, e in stage-1 order.
    assert [r["path"] for r in results] == ["c.png", "d.png", "b.png", "a.png", "e.png"]
    assert [r.get("rerank") for r in results] == [3.0, 2.0, 1.0, None, None]
    np.testing.assert_allclose([r["score"] for r in results], [0.5, 0.9, 0.9, 0.2, 0.1],
                               atol=1e-6)
    (call,) = model.signatures["rerank_features"].calls
    np.testing.assert_array_equal(call["image_regions"][:, 0, 0], [1.0, 2.0, 3.0])  # b d c
    top2 = search.query(str(tmp_path), index, "red", top_k=2, rerank_k=3)
    assert [r["path"] for r in top2] == ["c.png", "d.png"]


def test_rerank_k_zero_is_stage1_only(monkeypatch, index, tmp_path):
    model = _use(monkeypatch, served())
    results = search.query(str(tmp_path), index, "red", top_k=5, rerank_k=0)
    assert [r["path"] for r in results] == ["b.png", "d.png", "c.png", "a.png", "e.png"]
    assert model.signatures["rerank_features"].calls == []


def test_rerank_k_defaults_to_the_exports_eval_rerank_k(monkeypatch, index, tmp_path,
                                                        tiny_config):
    _use(monkeypatch, served())
    savedmodel = tmp_path / "saved"
    (savedmodel / "assets.extra").mkdir(parents=True)
    (savedmodel / "assets.extra" / "config.json").write_text(
        tiny_config.replace(rerank_k=2).to_json())
    results = search.query(str(savedmodel), index, "red", top_k=5)
    # Head b, d (logits 1, 2) → d, b; then c, a, e.
    assert [r["path"] for r in results] == ["d.png", "b.png", "c.png", "a.png", "e.png"]
    assert sum("rerank" in r for r in results) == 2
    # An export without its config: 20 (§4.2), here the whole index of 5, by logit.
    results = search.query(str(tmp_path / "old_export"), index, "red", top_k=5)
    assert [r["path"] for r in results] == ["e.png", "a.png", "c.png", "d.png", "b.png"]
    assert search.default_rerank_k(str(tmp_path / "old_export")) == 20


def test_query_errors_say_what_is_wrong(monkeypatch, index, tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a SavedModel"):
        search.query(str(tmp_path), index, "red")  # the real loader, on an empty folder
    _use(monkeypatch, served())
    with pytest.raises(ValueError, match="the query is empty"):
        search.query(str(tmp_path), index, " \t\n")
    other = str(tmp_path / "hgan_index.npz")  # features of another model
    np.savez(other, paths=np.array(PATHS), **{"global": EMBEDDING})
    with pytest.raises(ValueError, match=r"the index lacks \['image_embedding'\]: was it built "
                                         "with this SavedModel"):
        search.query(str(tmp_path), other, "red")


def _encoder():
    """encode_image: "IMG:<x>" bytes → features [x, 0]; other bytes fail their call, as the
    exported models' in-graph check does."""
    def encode(images):
        if any(not blob.startswith(b"IMG:") for blob in images):
            raise tf.errors.InvalidArgumentError(None, None, "not a JPEG or PNG image\nmore")
        return {"embedding": np.array([[float(b[4:]), 0.0] for b in images], np.float32)}
    return Signature(encode, ["images"], ["embedding"])


def test_index_skips_bad_files_in_a_batch_and_keeps_the_order(monkeypatch, tmp_path):
    model = type("Served", (), {"signatures": {"encode_image": _encoder()}})()
    _use(monkeypatch, model)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for name, blob in [("1.png", b"IMG:1"), ("2.jpg", b"IMG:2"), ("3.png", b"broken"),
                       ("4.JPEG", b"IMG:4"), ("sub/5.png", b"IMG:5"), ("notes.txt", b"IMG:9")]:
        (folder / name).write_bytes(blob)
    out = str(tmp_path / "index.npz")
    report = search.build_index("unused", out, images=str(folder), batch_size=2,
                                log=lambda *_: None)
    assert report["images"] == 4
    assert report["skipped"] == [{"path": "3.png", "reason": "not a JPEG or PNG image"}]
    saved = np.load(out)
    assert list(saved["paths"]) == ["1.png", "2.jpg", "4.JPEG", os.path.join("sub", "5.png")]
    np.testing.assert_array_equal(saved["embedding"][:, 0], [1, 2, 4, 5])
    # Batches of 2: [1, 2], then [3, 4] fails and is retried one by one, then [5].
    assert [len(c["images"]) for c in model.signatures["encode_image"].calls] == [2, 2, 1, 1, 1]


def test_index_errors_say_what_is_wrong(monkeypatch, tmp_path):
    _use(monkeypatch, type("Served", (), {"signatures": {"encode_image": _encoder()}})())
    with pytest.raises(FileNotFoundError, match="image folder .*nowhere not found"):
        search.build_index("unused", str(tmp_path / "i.npz"), images=str(tmp_path / "nowhere"),
                           log=lambda *_: None)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match=r"no image could be indexed; skipped: \[\{'path': "
                                         "'x.png'"):
        search.build_index("unused", str(tmp_path / "i.npz"), images=str(tmp_path / "bad"),
                           log=lambda *_: None)
    assert not (tmp_path / "i.npz").exists()


_CLI = textwrap.dedent("""
    import json, sys
    from absl import app, flags
    from hgan import search
    search._define_flags()
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


def test_cli_usage_errors():
    cases = [["--savedmodel=m", "--index=i"],
             ["find", "--savedmodel=m", "--index=i"],
             ["index", "--savedmodel=m", "--index=i"],
             ["index", "--savedmodel=m", "--index=i", "--images=f", "--data_dir=d"],
             ["query", "--savedmodel=m", "--index=i"],
             ["query", "--savedmodel=m", "--index=i", "a", "red coat"]]
    proc = subprocess.run([sys.executable, "-c", _CLI, json.dumps(cases)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, proc.stderr[-3000:]
    messages = json.loads(line[0][len("RESULT"):])
    assert messages == [
        "usage: python -m hgan.search index|query ... (see --help)",
        "usage: python -m hgan.search index|query ... (see --help)",
        "index needs exactly one of --images or --data_dir",
        "index needs exactly one of --images or --data_dir",
        'query takes one quoted sentence: query "a man in a red coat"',
        'query takes one quoted sentence: query "a man in a red coat"',
    ]
