"""A bounded load test of the search service on loopback: C concurrent clients send R
requests each (sentences from a split's captions) and it stops by itself.

  python bench/service_load.py --savedmodel=demo_out/savedmodel --data_dir=demo_out/tfrecords \\
      [--split=test] [--clients=8] [--requests=40] [--top_k=10] [--rerank_k=K]
  python bench/service_load.py --small

Indexes the split into a temporary gallery with ``hgan.serving.searcher.build_index``
(unless --index is given), starts the server (``hgan.serving.service``, uvicorn) in this
process on a free port, warms it with a few queries, then runs the clients. The clients are
threads of this same process: they share its CPU cores and its Python interpreter with
the server (uvicorn's event loop, the search threads), so what they cost is in the
figures, and a server on its own process or machine would do somewhat better; the
resident memory printed is the server's and the clients' together. Prints requests/s,
latency p50 / p99 (client side, whole HTTP round trip), the number of errors, and the
process's resident memory before and after (is it stable). Nothing here is asserted.

``--small`` (tests/test_benches.py): writes a 10-identity demo set, exports the ``tiny``
preset's HGAN with random weights (``bench/_small.py``), and runs 2 clients × 5 requests;
every line of the full run in about 25 s.
"""
import json
import os
import shutil
import tempfile
import threading
import time
import urllib.request

from absl import app, flags
import numpy as np

import _small
from gallery_index import rss_mib

FLAGS = flags.FLAGS
SMALL = {"clients": 2, "requests": 5, "top_k": 5}


def define_flags():
    flags.DEFINE_string("savedmodel", None, "An hgan-export SavedModel (--small: a random one "
                        "is made).")
    flags.DEFINE_string("data_dir", None, "TFRecords: the split's images are the gallery, its "
                        "captions the queries (--small: a tiny demo set is made).")
    flags.DEFINE_string("split", "test", "The split.")
    flags.DEFINE_string("index", None, "An existing gallery of the split.")
    flags.DEFINE_integer("clients", 8, "Concurrent clients (threads of this process).")
    flags.DEFINE_integer("requests", 40, "Requests per client.")
    flags.DEFINE_integer("top_k", 10, "Results per request.")
    flags.DEFINE_integer("rerank_k", None, "Candidates re-ranked per request (default: the "
                         "export's eval.rerank_k).")
    _small.define_flag()


def main(argv):
    del argv
    _small.apply(SMALL)
    if not FLAGS.small and (FLAGS.savedmodel is None or FLAGS.data_dir is None):
        raise app.UsageError("--savedmodel and --data_dir are required (or --small)")
    tmp = tempfile.mkdtemp(prefix="bench_service_")
    if FLAGS.small:
        _small.data_and_export(tmp)
    from hgan.data import pipeline
    from hgan.serving import searcher as search
    from hgan.serving import service

    examples = pipeline.split_examples(FLAGS.data_dir, FLAGS.split)
    captions = [c.decode() for e in examples for c in e["captions"].numpy()]
    index = FLAGS.index or os.path.join(tmp, "gallery")
    if not FLAGS.index:
        t0 = time.time()
        search.build_index(FLAGS.savedmodel, index, data_dir=FLAGS.data_dir, split=FLAGS.split,
                           log=lambda _: None)
        print(f"indexed the {FLAGS.split} split in {time.time() - t0:.1f} s")
    searcher = search.Searcher(FLAGS.savedmodel, index)
    server = service.Server(service.create_app(searcher)).start()
    body = {"top_k": FLAGS.top_k}
    if FLAGS.rerank_k is not None:
        body["rerank_k"] = FLAGS.rerank_k

    def call(text):
        data = json.dumps({**body, "text": text}).encode()
        req = urllib.request.Request(server.url + "/api/search", data=data,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
            return r.status

    for text in captions[:5]:
        call(text)  # warm: traces the signatures
    before = rss_mib()
    latencies, errors, lock = [], [], threading.Lock()

    def client(c):
        rng = np.random.default_rng(c)
        for _ in range(FLAGS.requests):
            text = captions[rng.integers(len(captions))]
            t0 = time.perf_counter()
            try:
                status = call(text)
                ok = status == 200
            except Exception as e:  # noqa: BLE001  (counted, not raised: a load test)
                ok, status = False, repr(e)
            with lock:
                latencies.append(time.perf_counter() - t0)
                if not ok:
                    errors.append(status)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(FLAGS.clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    server.stop()
    ms = 1000 * np.asarray(latencies)
    rerank_k = FLAGS.rerank_k if FLAGS.rerank_k is not None else searcher.default_rerank_k
    print(f"{len(searcher)} images, {FLAGS.clients} clients × {FLAGS.requests} requests "
          f"(client threads in the server's own process, sharing its {os.cpu_count()} cores), "
          f"top_k {FLAGS.top_k}, rerank_k {rerank_k}: "
          f"{len(latencies) / wall:.1f} requests/s, p50 {np.percentile(ms, 50):.0f} ms, "
          f"p99 {np.percentile(ms, 99):.0f} ms, {len(errors)} errors; RSS (server + clients) "
          f"{before:.0f} → {rss_mib():.0f} MiB")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
