"""Query latency of person search end to end: sentence → encode → stage-1 ANN over a
million images → re-rank the top K with the exported heads → top 10, warm, one query at a
time, on this machine; and the same through the HTTP service.

  python bench/search_latency.py --savedmodel=SAVEDMODEL --data_dir=TFRECORDS \
      [--n=1000000] [--tables=100000] [--rerank_k=100] [--top_k=10] [--queries=200] \
      [--nprobe=32] [--exact_queries=10] [--dir=/tmp/search_bench]

The queries are the --data_dir test split's captions, encoded by the SavedModel's
``encode_text`` (its BERT, BiLSTM and heads: a real model). The gallery is synthetic in the
SavedModel's own feature shapes (``encode_image`` of one image gives them): --n clustered,
l2-normalised global embeddings (as in bench/gallery_index.py) in a FAISS IVF, and a real
memory-mapped gallery directory (``hgan.serving.gallery``, float16) of --tables images
holding the globals and the re-ranker's local tables. Stage 1 searches all --n; the
re-rank reads its K candidates' tables from the --tables gallery (candidate id mod
--tables: the disk holds --tables images' tables, the 1 M footprint is printed from the
bytes per image). Printed:

* per phase (encode, ANN, gather + re-rank, sort) and in total, p50 / p99 in ms, for the
  IVF and, in the same run, exact brute force over the --n memory-mapped globals;
* the service (``hgan.serving.service`` on loopback, a ``Searcher`` over the --tables
  gallery with its own IVF): POST /api/search round trips, p50 / p99.

For the paper's sizes (512-d global, 15 × 512 local tables) export a model of those
widths; its weights do not matter for latency (e.g. one training step of
``--config=demo --set=embed_dim=512 --set=local_dim=512 --set=lstm_units=512``). Nothing
here is asserted.
"""
import argparse
import io
import json
import os
import shutil
import sys
import time
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from gallery_index import percentiles, synthetic  # noqa: E402


def _png() -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (64, 128), (120, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--savedmodel", required=True)
    p.add_argument("--data_dir", required=True, help="its test split's captions are the queries")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--tables", type=int, default=100_000)
    p.add_argument("--rerank_k", type=int, default=100)
    p.add_argument("--top_k", type=int, default=10)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--exact_queries", type=int, default=10)
    p.add_argument("--nprobe", type=int, default=32)
    p.add_argument("--dir", default="/tmp/search_bench")
    args = p.parse_args()
    from hgan.data import pipeline, records
    from hgan.serving import ann, gallery, search, service
    from hgan.tf_compat import tf

    examples = [records.parse_example(e) for e in
                tf.data.TFRecordDataset(pipeline.split_files(args.data_dir, "test"))]
    captions = [c.decode() for e in examples for c in e["captions"].numpy()]
    queries = [captions[i % len(captions)] for i in range(args.queries)]
    served = search._load(args.savedmodel)
    shapes = {k: tuple(v.shape[1:]) for k, v in
              served.signatures["encode_image"](images=tf.constant([_png()])).items()}
    key = search.global_key(shapes)
    dim = shapes[key][0]
    print(f"{args.savedmodel}: features {shapes}; {len(captions)} test captions; "
          f"n = {args.n:,}, tables of {args.tables:,} images, re-rank {args.rerank_k}, "
          f"top {args.top_k}, nprobe {args.nprobe}")

    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    t0 = time.time()
    vectors = synthetic(args.n, dim)
    path = os.path.join(args.dir, "gallery")
    store = gallery.Gallery.create(path, gallery.model_fingerprint(args.savedmodel), shapes)
    rng = np.random.default_rng(2)
    block = 10_000
    local = {k: rng.normal(size=(block, *s)).astype(np.float16)
             for k, s in shapes.items() if k != key}
    for a in range(0, args.tables, block):
        m = min(block, args.tables - a)
        store.append([f"synthetic/{i}.jpg" for i in range(a, a + m)],
                     {key: vectors[a:a + m], **{k: v[:m] for k, v in local.items()}})
    store = gallery.Gallery.open(path)
    print(f"gallery of {args.tables:,}: {store.bytes_per_item():,} B/image float16 "
          f"({args.tables * store.bytes_per_item() / 2**30:.1f} GiB; 1 M images = "
          f"{1e6 * store.bytes_per_item() / 2**30:.1f} GiB), written in {time.time() - t0:.0f} s")
    t0 = time.time()
    small = ann.build(store.array(key))
    if small is not None:
        ann.save(small, os.path.join(path, search.ANN_FILE))
    big = ann.build(vectors)
    print(f"IVF over {args.n:,} ({big.nlist} lists) and over the {args.tables:,} gallery "
          f"built in {time.time() - t0:.0f} s")

    second = search.reranker(served.signatures)  # the one search.Searcher uses

    def pipeline_once(text, stage1):
        times = {}
        t = time.perf_counter()
        texts = tf.constant([text])
        encoded = served.signatures["encode_text"](sentences=texts)
        vector = encoded[search.global_key(encoded)].numpy()
        times["encode"] = time.perf_counter() - t
        t = time.perf_counter()
        _, ids = stage1.search(vector, args.rerank_k)
        times["ann"] = time.perf_counter() - t
        t = time.perf_counter()
        rows = np.unique(ids[0][ids[0] >= 0] % args.tables)  # sorted: file order
        score = second(**search._text_inputs(second, texts, encoded),
                       **search._image_inputs(second, store, rows))["score"]
        times["rerank"] = time.perf_counter() - t
        t = time.perf_counter()
        top = rows[np.argsort(-score.numpy()[0], kind="stable")[:args.top_k]]
        times["sort"] = time.perf_counter() - t
        times["total"] = sum(times.values())
        return top, times

    def report(name, stage1, texts):
        for text in texts[:5]:
            pipeline_once(text, stage1)  # warm: traces, page cache
        runs = [pipeline_once(text, stage1)[1] for text in texts]
        print(f"{name}:")
        for phase in ("encode", "ann", "rerank", "sort", "total"):
            print(f"  {phase:7s} {percentiles([r[phase] for r in runs])}")

    report(f"IVF{big.nlist} nprobe {args.nprobe} over {args.n:,}",
           ann.Searcher(vectors, big, nprobe=args.nprobe), queries)
    report(f"exact brute force over {args.n:,} ({args.exact_queries} queries)",
           ann.Searcher(vectors), queries[:args.exact_queries])

    searcher = search.Searcher(args.savedmodel, path, nprobe=args.nprobe)
    server = service.Server(service.create_app(searcher, log=lambda _: None)).start()
    try:
        url = server.url + "/api/search"
        body = lambda q: {"text": q, "top_k": args.top_k, "rerank_k": args.rerank_k}
        for q in queries[:5]:
            _post(url, body(q))
        times = []
        for q in queries:
            t = time.perf_counter()
            _post(url, body(q))
            times.append(time.perf_counter() - t)
        print(f"service, POST /api/search over the {args.tables:,} gallery "
              f"(IVF {'on' if small is not None else 'off'}), {len(queries)} requests one "
              f"at a time: {percentiles(times)}")
    finally:
        server.stop()
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
