"""Stage 1 of gallery search at scale: FAISS IVF against exact search on synthetic global
embeddings, and the memory-mapped gallery's bytes per image and candidate reads.

  python bench/gallery_index.py [--n=1000000] [--dim=512] [--queries=200] [--k=100]
      [--nprobe=16,32,64] [--tables=100000] [--dir=/tmp/gallery_bench]

Prints, for --n vectors of --dim (clustered like real embeddings: 2,000 centres plus
noise, l2-normalised): the IVF's train and add times, its bytes, recall@k against exact
search for each nprobe, query latency p50 / p99 (one query at a time, warm) for IVF and for
exact brute force over the float16 memory-map measured in the same run; then the
gallery's bytes per image at the paper's sizes (global 512 + word and phrase tables of
15 × 512 each) in float16 and float32, the 1 M footprint, the float16 ranking change, and
the time to gather k candidates' local tables from a --tables-image memory-mapped gallery
(what re-ranking reads per query). Nothing here is asserted.
"""
import argparse
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hgan.serving import ann, gallery  # noqa: E402


def synthetic(n, dim, seed=0, chunk=100_000):
    rng = np.random.default_rng(seed)
    centres = ann.normalise(rng.normal(size=(2000, dim)))
    out = np.empty((n, dim), np.float16)
    for a in range(0, n, chunk):
        m = min(chunk, n - a)
        x = centres[rng.integers(0, 2000, m)] + 0.6 / np.sqrt(dim) * rng.normal(size=(m, dim))
        out[a:a + m] = ann.normalise(x)
    return out


def percentiles(times_s):
    t = 1000 * np.asarray(times_s)
    return f"p50 {np.percentile(t, 50):.1f} ms, p99 {np.percentile(t, 99):.1f} ms"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--nprobe", default="16,32,64")
    p.add_argument("--tables", type=int, default=100_000)
    p.add_argument("--dir", default="/tmp/gallery_bench")
    args = p.parse_args()
    import faiss
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; "
          f"{args.n:,} × {args.dim}, {args.queries} queries, k = {args.k}")
    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)

    t0 = time.time()
    vectors = synthetic(args.n, args.dim)
    rng = np.random.default_rng(1)
    queries = ann.normalise(vectors[rng.choice(args.n, args.queries)].astype(np.float32)
                            + 0.5 / np.sqrt(args.dim) * rng.normal(size=(args.queries,
                                                                          args.dim)))
    g = gallery.Gallery.create(os.path.join(args.dir, "global"), "bench",
                               {"global": (args.dim,)})
    for a in range(0, args.n, 100_000):
        g.append([str(i) for i in range(a, min(a + 100_000, args.n))],
                 {"global": vectors[a:a + 100_000]})
    mapped = gallery.Gallery.open(g.path).array("global")
    print(f"data + gallery write: {time.time() - t0:.0f} s; global float16 = "
          f"{g.bytes_per_item()} B/image")

    exact = ann.Searcher(mapped, chunk=131072)
    t0 = time.time()
    truth = np.concatenate([exact.search(queries[a:a + 50], args.k)[1]
                            for a in range(0, args.queries, 50)])
    print(f"exact, batched: {time.time() - t0:.1f} s for {args.queries} queries")
    times = []
    for q in queries[:20]:
        t0 = time.perf_counter()
        exact.search(q, args.k)
        times.append(time.perf_counter() - t0)
    print(f"exact brute force over the float16 memory-map, one query: {percentiles(times)}")

    nlist = ann.default_nlist(args.n)
    t0 = time.time()
    rows = np.sort(rng.choice(args.n, min(args.n, max(200_000, 39 * nlist)), replace=False))
    index = ann.train(np.asarray(vectors[rows], np.float32), nlist)
    train_s = time.time() - t0
    t0 = time.time()
    ann.add(index, mapped)
    add_s = time.time() - t0
    path = os.path.join(args.dir, "ivf.faiss")
    ann.save(index, path)
    print(f"IVF{nlist},Flat: train {train_s:.0f} s on {len(rows):,}, add {add_s:.0f} s; "
          f"{os.path.getsize(path) / args.n:.0f} B/image on disk")
    for nprobe in map(int, args.nprobe.split(",")):
        searcher = ann.Searcher(mapped, index, nprobe=nprobe)
        got = searcher.search(queries, args.k)[1]
        recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(got, truth)])
        for q in queries[:10]:
            searcher.search(q, args.k)  # warm
        times = []
        for q in queries:
            t0 = time.perf_counter()
            searcher.search(q, args.k)
            times.append(time.perf_counter() - t0)
        print(f"  nprobe {nprobe:3d}: recall@{args.k} {recall:.3f}, one query "
              f"{percentiles(times)}")

    # float16 against float32: does the ranking change?
    sub = np.asarray(vectors[:100_000], np.float32)
    r32 = ann.Searcher(sub).search(queries[:50], args.k)[1]
    r16 = ann.Searcher(sub.astype(np.float16)).search(queries[:50], args.k)[1]
    same = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(r32, r16)])
    print(f"float16 vs float32 top-{args.k} overlap over {len(sub):,}: {same:.4f}")

    # The re-ranker's local tables at the paper's sizes, memory-mapped.
    paper = {"global": (512,), "word": (15, 512), "phrase": (15, 512)}
    per16 = sum(int(np.prod(s)) for s in paper.values()) * 2
    print(f"paper-size tables: {per16 / 1024:.1f} KiB/image float16 "
          f"({2 * per16 / 1024:.1f} KiB float32); 1 M images = {per16 * 1e6 / 2**30:.1f} GiB "
          f"float16, {2 * per16 * 1e6 / 2**30:.1f} GiB float32, "
          f"~{per16 * 1e6 / 2**31:.1f} GiB int8")
    t = gallery.Gallery.create(os.path.join(args.dir, "tables"), "bench", paper)
    block = {k: rng.normal(size=(10_000, *s)).astype(np.float16) for k, s in paper.items()}
    t0 = time.time()
    for a in range(0, args.tables, 10_000):
        t.append([str(i) for i in range(a, a + 10_000)], block)
    print(f"wrote {args.tables:,} images' tables in {time.time() - t0:.0f} s "
          f"({args.tables * per16 / 2**30:.1f} GiB)")
    tables = gallery.Gallery.open(t.path)
    word, phrase = tables.array("word"), tables.array("phrase")
    times = []
    for _ in range(100):
        ids = np.sort(rng.choice(args.tables, args.k, replace=False))
        t0 = time.perf_counter()
        _ = np.asarray(word[ids], np.float32), np.asarray(phrase[ids], np.float32)
        times.append(time.perf_counter() - t0)
    print(f"gather {args.k} candidates' word + phrase tables (page cache as it is): "
          f"{percentiles(times)}")
    shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
