"""hgan-search: builds, merges and queries a gallery index with an exported model (what the
gallery holds and how a query is scored: ``hgan.serving.searcher``).

  hgan-search index --savedmodel=DIR --images=FOLDER|LIST.txt --index=GALLERY_DIR \
      [--shard=i/N] [--dtype=float16|float32|int8|pq] [--codebook=GALLERY_DIR] \
      [--pq_subdim=S] [--nopq_rotation] [--ann=auto|flat|pq] [--batch_size=32]
  hgan-search index --savedmodel=DIR --data_dir=TFRECORDS --split=test --index=...
  hgan-search merge --index=GALLERY_DIR SHARD_DIR [SHARD_DIR ...]
  hgan-search quantizer --savedmodel=DIR --images=...|--data_dir=... --quantizer=OUT.faiss \
      [--sample=N] [--nlist=K] [--ann=auto|flat|pq]
  hgan-search query --savedmodel=DIR --index=GALLERY_DIR "a woman in a red coat" \
      [--top_k=10] [--rerank_k=K] [--nprobe=N] [--json]
  hgan-search verify --index=GALLERY_DIR

``quantizer`` trains an IVF quantizer on a sample of the images before any shard is
encoded, so that every ``index --shard=i/N --quantizer=OUT.faiss`` starts at once.

``verify`` reads every file of the gallery again against the checksums its writer recorded
(``hgan.serving.checksums``) and names the file and rows of each chunk whose bytes
changed; exit status 1 when any did. It needs no model and reads the whole gallery once.

``--dtype=int8`` stores the re-rank tables as int8 with a scale per row, ``--dtype=pq``
product-quantised (``hgan.serving.codec``; the global embedding stays float16 in both);
shards to merge share one pq codebook (``--codebook`` = shard 0's gallery). ``--ann``
picks the IVF's kind (default: by the gallery's size, ``hgan.serving.ann.kind_for``).
"""
from __future__ import annotations

import json

from absl import app, flags

from hgan.cli import gallery_flags, start

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("savedmodel", None, "Exported model (hgan-export).")
    flags.DEFINE_string("index", None, "Gallery directory (hgan.serving.gallery).")
    gallery_flags.define(prefix="index: ")
    flags.DEFINE_string("shard", None, "index: i/N, every N-th image from the i-th (N "
                        "machines; join them with merge).")
    flags.DEFINE_string("quantizer", None, "index: an ann.faiss (hgan-search quantizer's, "
                        "or shard 0's) whose trained IVF quantizer this gallery's IVF adds "
                        "to, so shard IVFs merge with FAISS's merge_from; quantizer: the "
                        "file to write.")
    flags.DEFINE_integer("sample", 0, "quantizer: images encoded to train it (0: 39 per "
                         "list, FAISS's minimum without a warning).")
    flags.DEFINE_integer("nlist", 0, "quantizer: inverted lists (0: about 4·sqrt(images)).")
    flags.DEFINE_enum("ann", "auto", ["auto", "flat", "pq"], "index, quantizer: the IVF's "
                      "kind (auto: IVF-Flat while its vectors fit 1 GiB, IVF-PQ above).")
    flags.DEFINE_integer("top_k", 10, "query: results to return.")
    flags.DEFINE_integer("rerank_k", None, "query: stage-1 best re-ranked by a model's "
                         "two-stage score (IATV: stage 2, plus stage 1's weighted); default: "
                         "the export's eval.rerank_k; 0 = stage 1 only.")
    flags.DEFINE_bool("json", False, "query: print JSON.")
    gallery_flags.define_nprobe(prefix="query: ")


def main(argv):
    if len(argv) < 2 or argv[1] not in ("index", "merge", "query", "quantizer", "verify"):
        raise app.UsageError("usage: hgan-search index|merge|query|quantizer|verify ... (see "
                             "--help)")
    if argv[1] == "quantizer":
        return _quantizer(argv)
    if not FLAGS.index:
        raise app.UsageError(f"{argv[1]} needs --index")
    if argv[1] == "verify":
        return _verify(FLAGS.index)
    from hgan.serving.searcher import build_index, merge_index, query
    if argv[1] == "merge":
        if len(argv) < 3:
            raise app.UsageError("merge takes the shard gallery dirs: merge --index=OUT S1 S2")
        merge_index(FLAGS.index, argv[2:])
        return 0
    if not FLAGS.savedmodel:
        raise app.UsageError(f"{argv[1]} needs --savedmodel")
    if argv[1] == "index":
        if bool(FLAGS.images) == bool(FLAGS.data_dir):
            raise app.UsageError("index needs exactly one of --images or --data_dir")
        build_index(FLAGS.savedmodel, FLAGS.index, FLAGS.images, FLAGS.data_dir, FLAGS.split,
                    batch_size=FLAGS.batch_size, shard=FLAGS.shard, dtype=FLAGS.dtype,
                    quantizer=FLAGS.quantizer, codebook=FLAGS.codebook, ann_kind=FLAGS.ann,
                    pq_subdim=FLAGS.pq_subdim, pq_rotation=FLAGS.pq_rotation)
        return 0
    if len(argv) != 3:
        raise app.UsageError('query takes one quoted sentence: query "a man in a red coat"')
    results = query(FLAGS.savedmodel, FLAGS.index, argv[2], FLAGS.top_k,
                    rerank_k=FLAGS.rerank_k, nprobe=FLAGS.nprobe)
    if FLAGS.json:
        print(json.dumps({"query": argv[2], "results": results}, indent=2))
    else:
        for rank, r in enumerate(results, 1):
            second = f"  stage-2 {r['rerank']:+.3f}" if "rerank" in r else ""
            print(f"{rank:3d}  {r['score']:.4f}{second}  {r['path']}")
    return 0


def _quantizer(argv):
    if not FLAGS.savedmodel or not FLAGS.quantizer:
        raise app.UsageError("quantizer needs --savedmodel and --quantizer (the file to write)")
    if bool(FLAGS.images) == bool(FLAGS.data_dir):
        raise app.UsageError("quantizer needs exactly one of --images or --data_dir")
    from hgan.serving.searcher import train_quantizer
    train_quantizer(FLAGS.savedmodel, FLAGS.quantizer, FLAGS.images, FLAGS.data_dir,
                    FLAGS.split, sample=FLAGS.sample, nlist=FLAGS.nlist,
                    batch_size=FLAGS.batch_size, ann_kind=FLAGS.ann)
    return 0


def _verify(path: str) -> int:
    import os
    from hgan.serving import checksums, gallery
    store = gallery.Gallery.open(path)
    verdict = store.verify()
    if not verdict.recorded:
        print(f"{path}: no checksums recorded (written without them); a writer records them: "
              f"re-run hgan-search index --index={path} with its --savedmodel and images")
        return 0
    seen = (f"{len(store)} rows, {verdict.files} files, {verdict.checked_bytes / 1e6:.1f} MB "
            f"in {verdict.seconds:.2f} s ({verdict.mb_per_s:.0f} MB/s)")
    if verdict.ok:
        print(f"{path} verified: {seen}; no byte differs from what was written")
    else:
        print(f"{path}: {len(verdict.mismatches)} chunk(s) differ from what was written "
              f"({seen}):")
        for m in verdict.mismatches:
            print(f"  {m}")
        print("the rows named cannot be trusted: copy the gallery again from a good copy, or "
              "index its images into an empty folder (hgan-search index)")
    ivf = os.path.join(path, gallery.ANN_FILE)
    try:
        with open(ivf + ".json") as f:
            recorded = json.load(f).get("crc32")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if not os.path.exists(ivf):
        return 0 if verdict.ok else 1
    if recorded is None:
        print(f"{ivf}: no checksum recorded beside it (ann.faiss.json); not checked")
    elif checksums.file_crc(ivf) != recorded:
        print(f"{ivf} differs from what was written (CRC-32 against ann.faiss.json; or a run "
              f"was killed between the two): the next hgan-search index --index={path} "
              "trains it again; deleting it makes stage 1 exact")
        return 1
    else:
        print(f"{ivf} verified")
    return 0 if verdict.ok else 1


def run():
    define_flags()
    start(main, __doc__)


if __name__ == "__main__":
    run()
