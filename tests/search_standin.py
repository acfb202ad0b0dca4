"""A stand-in SavedModel for the search tests (test_search.py, test_service.py): the
serving contract's signatures as plain functions of hand-made features, so every ranking
is known in advance, and a folder with what ``gallery.model_fingerprint`` reads.

An image is the bytes ``IMG:<x>``: its global embedding is [x, 1] and its regions x; any
other bytes fail their ``encode_image`` call, as the exported models' in-graph check does.
"""
import numpy as np

from hgan.config import preset
from hgan.tf_compat import tf


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


# A query's direction in a 2-d feature space; stage 1 is the cosine with it.
DIRECTIONS = {b"red": [1.0, 0.0], b"blue": [0.0, 1.0]}


def _encode_text(sentences):
    return {"global": np.array([DIRECTIONS[t] for t in sentences], np.float32)}


def logits(texts, image_regions):
    # Stage 2 reads another feature than stage 1: region [0, 0] (+1 for a "blue" query).
    return {"score": np.array([image_regions[:, 0, 0] + (t == b"blue") for t in texts])}


def _encode_image(images):
    """"IMG:<x>" bytes → embedding [x, 1] and regions of x; other bytes fail their call, as
    the exported models' in-graph check does."""
    if any(not blob.startswith(b"IMG:") for blob in images):
        raise tf.errors.InvalidArgumentError(None, None, "not a JPEG or PNG image\nmore")
    x = np.array([float(b[4:]) for b in images], np.float32)
    return {"global": np.stack([x, np.ones_like(x)], 1),
            "regions": x[:, None, None] * np.ones((1, 2, 3), np.float32)}


def served():
    """The serving contract (``hgan.serving.savedmodel``) of a stand-in model."""
    signatures = {"encode_text": Signature(_encode_text, ["sentences"], ["global"]),
                  "encode_image": Signature(_encode_image, ["images"],
                                            ["global", "regions"]),
                  "rerank": Signature(logits, ["texts", "image_regions"])}
    return type("Served", (), {"signatures": signatures})()


def fake_savedmodel(path, version=b"1", rerank_k=20):
    """A folder with what ``gallery.model_fingerprint`` reads (the graph, the index) and
    the export's config (``eval.rerank_k``: how many candidates a query re-ranks)."""
    (path / "variables").mkdir(parents=True, exist_ok=True)
    (path / "saved_model.pb").write_bytes(b"graph" + version)
    (path / "variables" / "variables.index").write_bytes(b"index")
    preset("tiny").replace(rerank_k=rerank_k).save(str(path / "assets.extra"))
    return str(path)
