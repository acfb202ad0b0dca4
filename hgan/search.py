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
export's own ``iatv_candidates`` (its ``assets.extra/config.json``, what eval.py re-ranks;
20, §4.2, for an export without one). Files in a folder that are
not JPEG/PNG images are skipped and reported.
"""
from __future__ import annotations

import functools
import json
import os
import sys

import numpy as np
from absl import app, flags

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
    from hgan import data, records
    ds = tf.data.TFRecordDataset(data.split_files(data_dir, split)).map(records.parse_example)
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
        raise ValueError("no image could be indexed" + (f"; skipped: {skipped[:3]}" if skipped else ""))
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


DEFAULT_RERANK_K = 20  # §4.2, for an export without its config


def default_rerank_k(savedmodel: str) -> int:
    """The stage-1 candidates evaluation re-ranks for this export: its config's
    ``iatv_candidates``, or ``DEFAULT_RERANK_K`` for an export without a config."""
    from hgan.config import load_export_config
    config = load_export_config(savedmodel)
    return DEFAULT_RERANK_K if config is None else config.iatv_candidates


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
    order = np.argsort(-scores, kind="stable")
    rerank = {}
    if "rerank_features" in served.signatures and rerank_k > 0:
        head = order[:rerank_k]
        second = served.signatures["rerank_features"]
        logits = second(texts=texts, **_image_inputs(second, index, head))["logits"].numpy()[0]
        rerank = dict(zip(head.tolist(), logits.tolist()))
        order = np.concatenate([head[np.argsort(-logits, kind="stable")], order[rerank_k:]])
    return [{"path": str(index["paths"][i]), "score": float(scores[i]),
             **({"rerank": rerank[i]} if i in rerank else {})} for i in order[:top_k]]


FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_string("savedmodel", None, "Exported model (python -m hgan.export).")
    flags.DEFINE_string("index", None, "Index file (.npz).")
    flags.DEFINE_string("images", None, "index: a folder of JPEG/PNG images.")
    flags.DEFINE_string("data_dir", None, "index: a data_prep output dir instead of a folder.")
    flags.DEFINE_string("split", "test", "index: the split of --data_dir.")
    flags.DEFINE_integer("top_k", 10, "query: results to return.")
    flags.DEFINE_integer("rerank_k", None, "query: stage-1 best re-ranked by a model's "
                         "rerank_features (IATV's stage 2); default: the export's "
                         "iatv_candidates (§4.2: 20); 0 = stage 1 only.")
    flags.DEFINE_bool("json", False, "query: print JSON.")
    flags.mark_flags_as_required(["savedmodel", "index"])


def main(argv):
    if len(argv) < 2 or argv[1] not in ("index", "query"):
        raise app.UsageError("usage: python -m hgan.search index|query ... (see --help)")
    if argv[1] == "index":
        if bool(FLAGS.images) == bool(FLAGS.data_dir):
            raise app.UsageError("index needs exactly one of --images or --data_dir")
        build_index(FLAGS.savedmodel, FLAGS.index, FLAGS.images, FLAGS.data_dir, FLAGS.split)
        return 0
    if len(argv) != 3:
        raise app.UsageError('query takes one quoted sentence: query "a man in a red coat"')
    results = query(FLAGS.savedmodel, FLAGS.index, argv[2], FLAGS.top_k,
                    rerank_k=FLAGS.rerank_k)
    if FLAGS.json:
        print(json.dumps({"query": argv[2], "results": results}, indent=2))
    else:
        for rank, r in enumerate(results, 1):
            second = f"  stage-2 {r['rerank']:+.3f}" if "rerank" in r else ""
            print(f"{rank:3d}  {r['score']:.4f}{second}  {r['path']}")
    return 0


if __name__ == "__main__":
    _define_flags()
    app.run(main, argv=sys.argv)
