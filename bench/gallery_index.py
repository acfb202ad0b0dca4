"""Stage 1 of gallery search at scale: FAISS IVF against exact search on synthetic global
embeddings, and the memory-mapped gallery's bytes per image and candidate reads.

  python bench/gallery_index.py [--n=1000000] [--dim=512] [--queries=200] [--k=100]
      [--nprobe=16,32,64] [--tables=100000] [--compact=20000] [--exact_queries=20]
      [--noflat] [--dir=/tmp/gallery_bench]
  python bench/gallery_index.py --small

Prints, for --n vectors of --dim (clustered like real embeddings: 2,000 centres plus
noise, l2-normalised), written to a memory-mapped gallery (``hgan.serving.gallery``,
float16) as ``hgan-search index`` writes one: the IVF that the product builds over them
(``hgan.serving.ann.build``, what ``hgan-search index`` calls above ``ann.EXACT_BELOW``
images; its quantizer training and its adds are timed inside that call), its bytes,
recall@k against exact search for each nprobe, and query latency p50 / p99 (one query at a
time, warm) of ``ann.Searcher`` as ``hgan.serving.searcher.Searcher`` sets it up: over the
gallery's memory-mapped float16 globals, exact (no IVF) or with the IVF file loaded by
``ann.load`` (FAISS's IO_FLAG_MMAP: its inverted lists are memory-mapped too). Then the
gallery's bytes per image at the paper's sizes (global 512 + word and phrase tables of
15 × 512 each) in float16 and float32, the 1 M footprint, the float16 ranking change, and
the time to gather k candidates' local tables from a --tables-image memory-mapped gallery
(what re-ranking reads per query).

Then the compact forms. IVF-PQ (``ann.build(kind="pq")``, what ``hgan-search index``
builds once IVF-Flat's vectors would pass ``ann.FLAT_MAX_BYTES``) over the same vectors:
build time (train and add), bytes per image of its file, the process's resident memory
after loading it (``ann.load``, lists memory-mapped) and querying, and recall@k against
exact search and one-query p50 / p99 per nprobe with its short list re-scored exactly
over the float16 memory-map (``ann.Searcher``). Then the re-rank store at the paper's
widths: bytes per image of float16, int8 and pq (``hgan.serving.codec``, from a gallery's
own ``bytes_per_item``), the pq store built for --compact synthetic images (codebooks
trained on ``searcher.CODEBOOK_SAMPLE`` images' tables, then coded and appended; its
rate gives the 1 M figure, labelled computed), and the time to gather and decode k
candidates' tables from it (and, for the rotated store, before the rotation: what a
query reads when the export folds it, ``rerank_rotated``); then the same for a pq store
without its learnt rotation (``--nopq_rotation``), whose training and decoding skip the
rotation. Synthetic vectors throughout; nothing here is asserted.
``--noflat`` leaves out the IVF-Flat (its build, recall and latency), ``--exact_queries``
sets how many exact one-query searches are timed (each reads the whole memory-map).

``--small`` (tests/test_benches.py): 5,000 × 32, 20 queries, k = 10, nprobe 4 and 8,
2,000 images' tables, 300 compact; every line of the full run in under a minute.
"""
import contextlib
import os
import shutil
import time

from absl import app, flags
import numpy as np

import _small

FLAGS = flags.FLAGS
SMALL = {"n": 5000, "dim": 32, "queries": 20, "k": 10, "nprobe": ["4", "8"],
         "tables": 2000, "compact": 40, "dir": "/tmp/gallery_bench_small"}
PAPER = {"global": (512,), "word": (15, 512), "phrase": (15, 512)}
BLOCK = 10_000  # rows appended to a gallery at a time


def define_flags():
    flags.DEFINE_integer("n", 1_000_000, "Global embeddings in the gallery.")
    flags.DEFINE_integer("dim", 512, "Their width (the paper: 512).")
    flags.DEFINE_integer("queries", 200, "Queries (near gallery vectors).")
    flags.DEFINE_integer("k", 100, "Neighbours per query (the re-ranker's K).")
    flags.DEFINE_list("nprobe", ["16", "32", "64"], "IVF lists probed per query.")
    flags.DEFINE_integer("tables", 100_000, "Images of the paper-size local-table gallery.")
    flags.DEFINE_integer("compact", 20_000, "Images of the paper-size pq store built.")
    flags.DEFINE_integer("exact_queries", 20, "Exact one-query searches timed.")
    flags.DEFINE_bool("flat", True, "Build and measure the IVF-Flat too.")
    flags.DEFINE_string("dir", "/tmp/gallery_bench", "Scratch folder (deleted at the end).")
    _small.define_flag()


def synthetic(n, dim, seed=0, chunk=100_000):
    """``n`` l2-normalised float16 vectors of ``dim`` around 2,000 centres (like real
    embeddings), in RAM."""
    from hgan.serving import ann
    rng = np.random.default_rng(seed)
    centres = ann.normalise(rng.normal(size=(2000, dim)))
    out = np.empty((n, dim), np.float16)
    for a in range(0, n, chunk):
        m = min(chunk, n - a)
        x = centres[rng.integers(0, 2000, m)] + 0.6 / np.sqrt(dim) * rng.normal(size=(m, dim))
        out[a:a + m] = ann.normalise(x)
    return out


MEMORY = ("VmRSS", "RssAnon", "RssFile", "VmHWM")  # /proc/PID/status lines, kB


def process_memory(pid="self") -> dict:
    """``MEMORY`` of process ``pid`` now (Linux /proc), MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in MEMORY:
                out[name] = int(value.split()[0]) / 1024
    return out


def rss_mib() -> float:
    """This process's resident memory now (VmRSS), MiB."""
    return process_memory()["VmRSS"]


def percentiles(times_s):
    t = 1000 * np.asarray(times_s)
    return f"p50 {np.percentile(t, 50):.1f} ms, p99 {np.percentile(t, 99):.1f} ms"


@contextlib.contextmanager
def timing_inside(module, names):
    """Times the module functions ``names`` while a product function runs them (they are
    looked up as module globals): yields {name: [(seconds, first argument's shape)]}."""
    originals = {name: getattr(module, name) for name in names}
    calls = {name: [] for name in names}

    def timed(name, fn):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            calls[name].append((time.perf_counter() - t0, np.shape(args[0]) if args else ()))
            return out
        return call

    for name, fn in originals.items():
        setattr(module, name, timed(name, fn))
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(module, name, fn)


def main(argv):
    del argv
    _small.apply(SMALL)
    import faiss
    from hgan.serving import ann, gallery
    n, dim, k = FLAGS.n, FLAGS.dim, FLAGS.k
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads; "
          f"{n:,} × {dim}, {FLAGS.queries} queries, k = {k}")
    shutil.rmtree(FLAGS.dir, ignore_errors=True)
    os.makedirs(FLAGS.dir)

    t0 = time.time()
    vectors = synthetic(n, dim)
    rng = np.random.default_rng(1)
    queries = ann.normalise(vectors[rng.choice(n, FLAGS.queries)].astype(np.float32)
                            + 0.5 / np.sqrt(dim) * rng.normal(size=(FLAGS.queries, dim)))
    g = gallery.Gallery.create(os.path.join(FLAGS.dir, "global"), "bench", {"global": (dim,)})
    for a in range(0, n, 100_000):
        g.append([str(i) for i in range(a, min(a + 100_000, n))],
                 {"global": vectors[a:a + 100_000]})
    mapped = gallery.Gallery.open(g.path).array("global")
    print(f"data + gallery write: {time.time() - t0:.0f} s; global float16 = "
          f"{g.bytes_per_item()} B/image; searched below as {type(mapped).__name__} of "
          f"{g.path} (memory-mapped, as hgan.serving.searcher.Searcher opens it)")

    exact = ann.Searcher(mapped)
    t0 = time.time()
    truth = np.concatenate([exact.search(queries[a:a + 50], k)[1]
                            for a in range(0, FLAGS.queries, 50)])
    print(f"exact, batched: {time.time() - t0:.1f} s for {FLAGS.queries} queries")
    times = []
    for q in queries[:FLAGS.exact_queries]:
        t0 = time.perf_counter()
        exact.search(q, k)
        times.append(time.perf_counter() - t0)
    print(f"exact brute force over the float16 memory-map, one query: {percentiles(times)}")

    if FLAGS.flat:
        flat_bytes = ivf_flat(mapped, queries, truth)
    else:
        flat_bytes = 4 * dim * n
        print(f"IVF-Flat not built (--noflat): its lists would hold {flat_bytes / n:,.0f} "
              "B/image of float32 vectors")
    ivf_pq(mapped, queries, truth, flat_bytes)
    tables(vectors, queries, rng)
    compact_store(rng)
    shutil.rmtree(FLAGS.dir, ignore_errors=True)


def recall_and_latency(searcher, queries, truth, k: int, batch: int):
    """(recall@k of ``searcher`` against ``truth``, searched ``batch`` queries a call; the
    seconds of each query searched alone, after 10 warm ones)."""
    got = np.concatenate([searcher.search(queries[a:a + batch], k)[1]
                          for a in range(0, len(queries), batch)])
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(got, truth)])
    for q in queries[:10]:
        searcher.search(q, k)  # warm
    times = []
    for q in queries:
        t0 = time.perf_counter()
        searcher.search(q, k)
        times.append(time.perf_counter() - t0)
    return recall, times


def timed_build(ann, mapped, kind: str):
    """``ann.build`` of an IVF of ``kind`` over every row → (index, its seconds, the
    seconds and arguments of its ``train`` call, the seconds of its ``add`` calls)."""
    t0 = time.time()
    with timing_inside(ann, ["train", "add"]) as calls:
        index = ann.build(mapped, threshold=0, kind=kind)
    build_s = time.time() - t0
    (train_s, sample), = calls["train"]
    return index, build_s, train_s, sample, sum(s for s, _ in calls["add"])


def ivf_flat(mapped, queries, truth):
    """The product's IVF-Flat build (ann.build), its two phases timed inside it → its file
    bytes."""
    import faiss
    from hgan.serving import ann
    n, k = len(mapped), FLAGS.k
    index, build_s, train_s, sample, add_s = timed_build(ann, mapped, "flat")
    path = os.path.join(FLAGS.dir, "ivf.faiss")
    ann.save(index, path)
    index = ann.load(path)  # as Searcher opens a gallery's ann.faiss
    lists = type(faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists))
    print(f"IVF{index.nlist},Flat by hgan.serving.ann.build: {build_s:.0f} s (train "
          f"{train_s:.0f} s on {sample[0]:,}, add {add_s:.0f} s); "
          f"{os.path.getsize(path) / n:.0f} B/image on disk; loaded by ann.load: "
          f"{lists.__name__} (memory-mapped)")
    for nprobe in map(int, FLAGS.nprobe):
        recall, times = recall_and_latency(ann.Searcher(mapped, index, nprobe=nprobe),
                                           queries, truth, k, batch=len(queries))
        print(f"  nprobe {nprobe:3d}: recall@{k} {recall:.3f}, one query "
              f"{percentiles(times)}")

    return os.path.getsize(path)


def tables(vectors, queries, rng):
    """The float16 ranking change, and the paper-size float16 tables."""
    from hgan.serving import ann, gallery
    k = FLAGS.k
    # float16 against float32: does the ranking change?
    sub = np.asarray(vectors[:100_000], np.float32)
    r32 = ann.Searcher(sub).search(queries[:50], k)[1]
    r16 = ann.Searcher(sub.astype(np.float16)).search(queries[:50], k)[1]
    same = np.mean([len(set(a) & set(b)) / k for a, b in zip(r32, r16)])
    print(f"float16 vs float32 top-{k} overlap over {len(sub):,}: {same:.4f}")

    # The re-ranker's local tables at the paper's sizes, memory-mapped.
    paper = {"global": (512,), "word": (15, 512), "phrase": (15, 512)}
    per16 = sum(int(np.prod(s)) for s in paper.values()) * 2
    print(f"paper-size tables: {per16 / 1024:.1f} KiB/image float16 "
          f"({2 * per16 / 1024:.1f} KiB float32); 1 M images = {per16 * 1e6 / 2**30:.1f} GiB "
          f"float16, {2 * per16 * 1e6 / 2**30:.1f} GiB float32, "
          f"~{per16 * 1e6 / 2**31:.1f} GiB int8")
    t = gallery.Gallery.create(os.path.join(FLAGS.dir, "tables"), "bench", paper)
    block = {name: rng.normal(size=(min(BLOCK, FLAGS.tables), *s)).astype(np.float16)
             for name, s in paper.items()}
    t0 = time.time()
    for a in range(0, FLAGS.tables, BLOCK):
        m = min(BLOCK, FLAGS.tables - a)
        t.append([str(i) for i in range(a, a + m)], {name: v[:m] for name, v in block.items()})
    print(f"wrote {FLAGS.tables:,} images' tables in {time.time() - t0:.0f} s "
          f"({FLAGS.tables * per16 / 2**30:.1f} GiB)")
    tables = gallery.Gallery.open(t.path)
    word, phrase = tables.array("word"), tables.array("phrase")
    times = []
    for _ in range(100):
        ids = np.sort(rng.choice(FLAGS.tables, k, replace=False))
        t0 = time.perf_counter()
        _ = np.asarray(word[ids], np.float32), np.asarray(phrase[ids], np.float32)
        times.append(time.perf_counter() - t0)
    print(f"gather {k} candidates' word + phrase tables (page cache as it is): "
          f"{percentiles(times)}")


def ivf_pq(mapped, queries, truth, flat_bytes):
    """IVF-PQ over the gallery's memory-mapped globals: build, bytes, memory, recall, latency."""
    import faiss
    from hgan.serving import ann
    n, k = len(mapped), FLAGS.k
    before = rss_mib()
    index, build_s, train_s, sample, add_s = timed_build(ann, mapped, "pq")
    built = rss_mib()
    path = os.path.join(FLAGS.dir, "ivfpq.faiss")
    ann.save(index, path)
    nlist, m = index.nlist, index.pq.M
    del index
    index = ann.load(path)
    size = os.path.getsize(path)
    print(f"IVF{nlist},PQ{m} by hgan.serving.ann.build(kind='pq'): {build_s:.0f} s (train "
          f"{train_s:.0f} s on {sample[0]:,}, add {add_s:.0f} s); {size / n:.0f} B/image on "
          f"disk ({size / 2**20:.0f} MiB; IVF-Flat {flat_bytes / n:.0f} B/image, "
          f"{flat_bytes / 2**20:.0f} MiB); process RSS {before:.0f} MiB before the build, "
          f"{built:.0f} MiB after it")
    for nprobe in map(int, FLAGS.nprobe):
        recall, times = recall_and_latency(ann.Searcher(mapped, index, nprobe=nprobe),
                                           queries, truth, k, batch=50)
        print(f"  IVF-PQ nprobe {nprobe:3d}, short list {ann.REFINE * k} re-scored exactly: "
              f"recall@{k} {recall:.3f}, one query {percentiles(times)}; process RSS "
              f"{rss_mib():.0f} MiB")
    del faiss


def compact_store(rng):
    """The re-rank store at the paper's widths: bytes per image of each dtype, the pq
    store's build rate and memory, and gathering + decoding k candidates' tables."""
    from hgan.serving import gallery, searcher
    k = FLAGS.k
    sample = {name: rng.normal(size=(min(FLAGS.compact, searcher.CODEBOOK_SAMPLE), *s))
              .astype(np.float32) for name, s in PAPER.items()}
    sizes = {}
    for form in ("float16", "int8", "pq", "pq plain"):
        dtype, books = form.split()[0], None
        label = "pq store" + (" without its rotation (--nopq_rotation)" if "plain" in form
                              else "")
        if dtype == "pq":
            t0 = time.time()
            books = gallery.train_codebooks(dtype, sample, rotate="plain" not in form)
            train_s = time.time() - t0
        g = gallery.Gallery.create(os.path.join(FLAGS.dir, f"store_{form.replace(' ', '_')}"),
                                   "bench", PAPER, dtype, codebooks=books)
        sizes[dtype] = g.bytes_per_item()
        if dtype != "pq":
            continue
        before = rss_mib()
        block = {name: v[:BLOCK] for name, v in sample.items()}
        t0 = time.time()
        for a in range(0, FLAGS.compact, BLOCK):
            m = min(BLOCK, FLAGS.compact - a, len(block["word"]))
            g.append([str(i) for i in range(a, a + m)], {name: v[:m] for name, v in block.items()})
        append_s = time.time() - t0
        rate = FLAGS.compact / append_s
        print(f"{label}: codebooks trained on {len(sample['word']):,} images' tables in "
              f"{train_s:.1f} s; {FLAGS.compact:,} images coded and appended in "
              f"{append_s:.1f} s = {rate:,.0f} images/s, process RSS {before:.0f} → "
              f"{rss_mib():.0f} MiB; 1 M images (computed from that rate): "
              f"{train_s + 1e6 / rate:.0f} s of one process, "
              f"{sizes['pq'] * 1e6 / 2**30:.2f} GiB on disk")
        store = gallery.Gallery.open(g.path)
        word, phrase = store.array("word"), store.array("phrase")
        times = []
        for _ in range(100):
            ids = np.sort(rng.choice(len(store), min(k, len(store)), replace=False))
            t0 = time.perf_counter()
            _ = word[ids], phrase[ids]
            times.append(time.perf_counter() - t0)
        print(f"{label}: gather and decode {k} candidates' word + phrase tables: "
              f"{percentiles(times)}")
        if word.codec.rotation is not None:
            times = []
            for _ in range(100):
                ids = np.sort(rng.choice(len(store), min(k, len(store)), replace=False))
                t0 = time.perf_counter()
                _ = word.unturned(ids), phrase.unturned(ids)
                times.append(time.perf_counter() - t0)
            print(f"{label}: gather and decode them before the rotation (a query's read "
                  f"when the export folds the rotation into its first layers): "
                  f"{percentiles(times)}")
    print(f"re-rank store at the paper's widths (global float16 + word and phrase 15 × 512): "
          f"float16 {sizes['float16']:,} B/image, int8 {sizes['int8']:,}, pq "
          f"{sizes['pq']:,} ({sizes['float16'] / sizes['pq']:.1f}x smaller than float16; "
          f"1 M images {sizes['pq'] * 1e6 / 2**30:.2f} GiB, 10 M "
          f"{sizes['pq'] * 1e7 / 2**30:.1f} GiB)")


if __name__ == "__main__":
    define_flags()
    app.run(main)
