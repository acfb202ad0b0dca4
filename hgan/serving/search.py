"""Text → image search with an exported SavedModel.

  python -m hgan.search index --savedmodel=DIR --images=FOLDER --index=INDEX.npz
  python -m hgan.search index --savedmodel=DIR --data_dir=TFRECORDS --split=test --index=INDEX.npz
  python -m hgan.search query --savedmodel=DIR --index=INDEX.npz "a woman in a red coat" \
      [--top_k=10] [--json]

The index holds each image's features from the model's ``encode_image`` signature (every
output it has) and its path; a query is scored against it with ``score_features`` (HGAN:
all levels, as eval.py; IATV: stage 1), in chunks. A model that also exports
``rerank_features`` (IATV's stage 2) re-orders each query's ``--rerank_k`` best by it, the
rest keeping their order behind, as in two-stage evaluation; ``--rerank_k`` defaults to the
export's own ``eval.rerank_k`` (its ``assets.extra/config.json``, what eval.py re-ranks;
20, IATV §4.2, for an export without one). Files in a folder that are
not JPEG/PNG images are skipped and reported.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from hgan.config import load_export_config
from hgan.data import pipeline, records
from hgan.evaluation import rerank
from hgan.tf_compat import tf

_EXTENSIONS = (".jpg", ".jpeg", ".png")


@functools.lru_cache(maxsize=4)
def _load(savedmodel: str):
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops the model uses)
    if not tf.io.gfile.exists(os.path.join(savedmodel, "saved_model.pb")):
        raise FileNotFoundError(f"{savedmodel} is not a SavedModel (python -m hgan.export)")
    return tf.saved_model.load(savedmodel)


def _folder_images(folder: str):
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder} not found")
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            if name.lower().endswith(_EXTENSIONS):
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    yield os.path.relpath(path, folder), f.read()


def _record_images(data_dir: str, split: str):
    ds = tf.data.TFRecordDataset(pipeline.split_files(data_dir, split)).map(records.parse_example)
    for ex in ds:
        yield ex["path"].numpy().decode(), ex["encoded"].numpy()


def build_index(savedmodel: str, index_path: str, images=None, data_dir=None, split="test",
                batch_size: int = 32, log=print) -> dict:
    """Encodes every image once and writes ``index_path`` (.npz) atomically."""
    served = _load(savedmodel)
    encode = served.signatures["encode_image"]
    source = _folder_images(images) if images else _record_images(data_dir, split)
    feats = {k: [] for k in encode.structured_outputs}
    paths, skipped, batch = [], [], []

    def flush():
        try:
            out = encode(images=tf.constant([b for _, b in batch]))
        except tf.errors.InvalidArgumentError:
            # One bad file fails its batch: encode one by one to find and skip it.
            for path, blob in batch:
                try:
                    out = encode(images=tf.constant([blob]))
                except tf.errors.InvalidArgumentError as e:
                    skipped.append({"path": path, "reason": e.message.split("\n")[0][:200]})
                    continue
                _keep([path], out)
            return
        _keep([p for p, _ in batch], out)

    def _keep(batch_paths, out):
        paths.extend(batch_paths)
        for k in feats:
            feats[k].append(out[k].numpy())

    for item in source:
        batch.append(item)
        if len(batch) == batch_size:
            flush()
            batch = []
            log(f"indexed {len(paths)} images")
    if batch:
        flush()
    if not paths:
        raise ValueError("no image could be indexed"
                         + (f"; skipped: {skipped[:3]}" if skipped else ""))
    arrays = {k: np.concatenate(v) for k, v in feats.items()}
    tmp = index_path + ".tmp.npz"
    np.savez(tmp, paths=np.array(paths), **arrays)
    os.replace(tmp, index_path)
    log(f"index of {len(paths)} images written to {index_path}; skipped {len(skipped)}")
    for s in skipped:
        log(f"  skipped {s['path']}: {s['reason']}")
    return {"images": len(paths), "skipped": skipped, "index": index_path}


def _image_inputs(signature, index, rows) -> dict:
    """The signature's ``image_<feature>`` inputs, read from the index at ``rows``."""
    names = [n for n in signature.structured_input_signature[1] if n.startswith("image_")]
    missing = [n for n in names if n[len("image_"):] not in index]
    if missing:
        raise ValueError(f"the index lacks {missing}: was it built with this SavedModel?")
    return {n: tf.constant(index[n[len("image_"):]][rows]) for n in names}


DEFAULT_RERANK_K = 20  # IATV §4.2, for an export without its config


def default_rerank_k(savedmodel: str) -> int:
    """The stage-1 candidates evaluation re-ranks for this export: its config's
    ``eval.rerank_k``, or ``DEFAULT_RERANK_K`` for an export without a config."""
    config = load_export_config(savedmodel)
    return DEFAULT_RERANK_K if config is None else config.eval.rerank_k


def query(savedmodel: str, index_path: str, text: str, top_k: int = 10,
          chunk: int = 1024, rerank_k: int | None = None) -> list[dict]:
    """The ``top_k`` images of the index for ``text``, best first: [{path, score}], plus
    ``rerank`` (the stage-2 logit) on the re-ranked ones of a model with
    ``rerank_features``; ``rerank_k`` None: ``default_rerank_k(savedmodel)``."""
    if not text.strip():
        raise ValueError("the query is empty")
    served = _load(savedmodel)
    if rerank_k is None:
        rerank_k = default_rerank_k(savedmodel)
    score = served.signatures["score_features"]
    index = dict(np.load(index_path))
    n = len(index["paths"])
    texts = tf.constant([text])
    scores = np.concatenate([
        score(texts=texts, **_image_inputs(score, index, slice(a, a + chunk)))["score"]
        .numpy()[0] for a in range(0, n, chunk)])
    second_stage = {}
    if "rerank_features" in served.signatures and rerank_k > 0:
        second = served.signatures["rerank_features"]

        def logits(_, images):
            out = second(texts=texts, **_image_inputs(second, index, images))["logits"]
            second_stage.update(zip(images.tolist(), out.numpy()[0].tolist()))
            return out.numpy()[0]

        final = rerank.rerank(scores[None], logits, k=rerank_k, batch_size=rerank_k)[0]
    else:
        final = scores
    order = np.argsort(-final, kind="stable")
    return [{"path": str(index["paths"][i]), "score": float(scores[i]),
             **({"rerank": second_stage[i]} if i in second_stage else {})}
            for i in order[:top_k]]
