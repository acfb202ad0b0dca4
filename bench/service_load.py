"""A bounded load test of the search service on loopback: C concurrent clients send R
requests each (sentences from a split's captions) and it stops by itself.

  python bench/service_load.py --savedmodel=demo_out/savedmodel --data_dir=demo_out/tfrecords \
      [--split=test] [--clients=8] [--requests=40] [--top_k=10] [--rerank_k=]

Indexes the split into a temporary gallery (unless --index is given), starts the server
(``hgan.serving.service``) in this process on a free port, warms it with a few queries,
then prints requests/s, latency p50 / p99 (client side, whole HTTP round trip), the number
of errors, and the process's resident memory before and after (is it stable). Nothing
here is asserted.
"""
import argparse
import json
import os
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--savedmodel", required=True)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--index", default=None, help="an existing gallery of the split")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=40, help="per client")
    p.add_argument("--top_k", type=int, default=10)
    p.add_argument("--rerank_k", type=int, default=None)
    args = p.parse_args()
    from hgan.data import pipeline, records
    from hgan.serving import search, service
    from hgan.tf_compat import tf

    examples = [records.parse_example(e) for e in
                tf.data.TFRecordDataset(pipeline.split_files(args.data_dir, args.split))]
    captions = [c.decode() for e in examples for c in e["captions"].numpy()]
    tmp = tempfile.mkdtemp()
    index = args.index or os.path.join(tmp, "gallery")
    if not args.index:
        t0 = time.time()
        search.build_index(args.savedmodel, index, data_dir=args.data_dir, split=args.split,
                           log=lambda _: None)
        print(f"indexed the {args.split} split in {time.time() - t0:.1f} s")
    searcher = search.Searcher(args.savedmodel, index)
    server = service.Server(service.create_app(searcher)).start()
    body = {"top_k": args.top_k}
    if args.rerank_k is not None:
        body["rerank_k"] = args.rerank_k

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
        for _ in range(args.requests):
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

    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    server.stop()
    ms = 1000 * np.asarray(latencies)
    print(f"{len(searcher)} images, {args.clients} clients × {args.requests} requests, "
          f"top_k {args.top_k}, rerank_k {args.rerank_k or searcher.default_rerank_k}: "
          f"{len(latencies) / wall:.1f} requests/s, p50 {np.percentile(ms, 50):.0f} ms, "
          f"p99 {np.percentile(ms, 99):.0f} ms, {len(errors)} errors; RSS {before:.0f} → "
          f"{rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
