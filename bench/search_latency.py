"""Query latency of person search end to end, as ``hgan-search query`` and the service run
it: ``hgan.serving.searcher.Searcher.query`` (sentence → ``encode_text`` → stage-1 search
of the global embeddings → re-rank exactly K candidates with the export's ``rerank``
signature → top k), warm, one query at a time, on this machine; and the same through the
HTTP service.

  python bench/search_latency.py --savedmodel=SAVEDMODEL --data_dir=TFRECORDS \\
      [--n=100000] [--rerank_k=100] [--top_k=10] [--queries=200] [--nprobe=N] \\
      [--recall_nprobe=32,64] [--recall_refine=4,32] \\
      [--exact_queries=20] [--dtype=float16|int8|pq] [--ann=auto|flat|pq]
      [--fidelity=float32,float16,int8,pq,pq:8,pq:6:1] [--dir=/tmp/search_bench]
  python bench/search_latency.py --small

The queries are the --data_dir test split's captions, encoded by the SavedModel's
``encode_text`` (its BERT, BiLSTM and heads: a real model). The gallery is a real gallery
directory (``hgan.serving.gallery``, float16, as ``hgan-search index`` writes one) of --n
synthetic images in the SavedModel's own feature shapes (``encode_image`` of one image gives
them): clustered, l2-normalised global embeddings (as in bench/gallery_index.py) and the
re-ranker's local tables of every image (one random block of them repeated: the bytes are
on disk, their values do not matter for latency). ``Searcher`` opens it as it opens any
gallery: every feature memory-mapped (the globals too: stage 1 reads them from the
memory-map, through the page cache, never from an array of this script), the IVF file
loaded with FAISS's IO_FLAG_MMAP. The run prints where they live.

Timed: each ``Searcher.query(text, top_k, rerank_k=K)`` call whole, and inside the same
calls (its stage-1 searcher and its two signatures wrapped in timers) the ``encode_text``
signature, the stage-1 search (exact, or the IVF), the ``rerank`` signature on the K
candidates (``rerank_rotated`` for a pq gallery with rotations, when the export has it),
and the rest (gathering and decoding the K candidates' tables from the memory-map,
ordering). Every query's re-rank is checked to get exactly K candidates, and the count is
printed. Stage 1 runs first exactly (the gallery without an IVF: what ``Searcher`` does
below ``ann.EXACT_BELOW`` images; --exact_queries queries), then with the IVF that
``hgan.serving.ann.build`` makes (what ``hgan-search index`` builds above that size; built
here at any size) and --nprobe, and the IVF's recall@K against exact search for every
query's caption embedding (stage 1's K candidates, the ones the re-rank reads), with
stage 1's one-query latency, at --nprobe and each --recall_nprobe (an IVF-PQ also with
each --recall_refine short list). Then the service as it
is deployed: ``hgan-serve`` in its own process over the same gallery and IVF, POST
/api/search round trips one at a time, p50 / p99, and that process's memory after them
(/proc: VmRSS, of it anonymous and file-backed pages, and its peak) beside the same
service over a 1,000-image gallery of the same shapes: the two VmRSS apart are what the
large index holds resident in the service (TensorFlow and the export count in both).

For the paper's sizes (512-d global, 15 × 512 local tables: 31 KiB an image, 30 GiB a
million) export a model of those widths; its weights do not matter for latency (e.g. one
training step of ``--config=demo --set=embed_dim=512 --set=local_dim=512
--set=lstm_units=512``). --n=1000000 needs that much disk; the 1 M footprint is printed from
the bytes per image, and bench/gallery_index.py times stage 1 alone at 1 M. Nothing here is
asserted.

``--dtype`` stores the synthetic gallery's re-rank tables as ``hgan-search index
--dtype`` does (``hgan.serving.codec``; pq codebooks trained on the random block), and
``--ann`` picks the IVF's kind (``ann.build``; auto: by size). ``--fidelity`` first indexes
the --data_dir test split itself with ``hgan.serving.searcher.build_index`` once per listed
dtype and prints, for each, the two-stage ranking of the split in both directions (stage 1
the cosine of the stored global embeddings, the export's ``rerank`` signature on each
query's K = ``eval.rerank_k`` best, the rest in stage-1 order: hgan-eval's two_stage mode,
over what the gallery stores): R1 and mAP, and their change from the first dtype listed.
``pq:S`` indexes with S values per code (``index --pq_subdim``), ``pq:S:SEED`` also with
codebooks trained from k-means seed SEED (and the rows they are sampled from), and
``pq:S:SEED:plain`` without the learnt rotation (``codec.train_rotation``): one seed's R1
moves by points (the hard top-k selections flip), so a pq form is judged over several.
``pq:S:SEED:held`` (or ``plain+held``) trains the codebooks on the train split's tables
instead of the test split's own (its first ``CODEBOOK_SAMPLE`` images, encoded once into
a float32 gallery): what a large gallery gets, whose codebooks are learnt on its first
images and then code images they never saw. Under each dtype's line, per direction
(``flips``): how many queries changed their first item (to a relevant one, away from
one), the score error's sd on the pairs both dtypes re-ranked against the scores' own sd,
and how many queries had their top two nearer than twice that error under the first
dtype (the near ties a code of that error flips), with a relevant item first in how many.

``--small`` (tests/test_benches.py): writes a 10-identity demo set, exports the ``tiny``
preset's HGAN with random weights (``bench/_small.py``), and searches a 2,000-image
gallery with K = 20, 20 queries (5 exact); every line of the full run in about 30 s.
"""
import functools
import io
import json
import os
import shutil
import time
import types
import urllib.request

from absl import app, flags
import numpy as np

import _small
from gallery_index import MEMORY, percentiles, process_memory, recall_and_latency, synthetic

FLAGS = flags.FLAGS
SMALL = {"n": 2000, "rerank_k": 20, "top_k": 5, "queries": 20, "exact_queries": 5,
         "nprobe": 8, "recall_nprobe": ["16"], "dir": "/tmp/search_bench_small",
         "fidelity": ["float32", "float16", "int8", "pq", "pq:6:0:held"]}
BLOCK = 10_000  # rows appended to the gallery at a time
BASELINE = 1_000  # images of the gallery whose service's memory is the baseline
PHASES = ("encode", "stage1", "rerank", "other", "total")


def define_flags():
    flags.DEFINE_string("savedmodel", None, "An hgan-export SavedModel (--small: a random one "
                        "is made).")
    flags.DEFINE_string("data_dir", None, "TFRecords: its test split's captions are the "
                        "queries (--small: a tiny demo set is made).")
    flags.DEFINE_integer("n", 100_000, "Images in the synthetic gallery.")
    flags.DEFINE_integer("rerank_k", 100, "K: candidates re-ranked per query.")
    flags.DEFINE_integer("top_k", 10, "Results per query.")
    flags.DEFINE_integer("queries", 200, "Timed queries (after 5 warm-up ones), IVF and "
                         "service.")
    flags.DEFINE_integer("exact_queries", 20, "Timed queries with exact stage 1.")
    flags.DEFINE_integer("nprobe", None, "IVF lists probed per query (Searcher.query and the "
                         "service); default: the IVF kind's (ann.NPROBE), as served.")
    flags.DEFINE_list("recall_nprobe", ["32", "64"], "Stage 1's recall@K and one-query "
                      "latency are also measured at these nprobe (besides --nprobe).")
    flags.DEFINE_list("recall_refine", [], "An IVF-PQ's recall and latency are also "
                      "measured with these short lists (candidates re-scored per result; "
                      "besides ann.REFINE).")
    flags.DEFINE_enum("dtype", "float16", ["float16", "float32", "int8", "pq"],
                      "How the synthetic gallery stores its features (hgan.serving.codec).")
    flags.DEFINE_enum("ann", "auto", ["auto", "flat", "pq"], "The IVF's kind (auto: by "
                      "size, ann.kind_for).")
    flags.DEFINE_list("fidelity", ["float32", "float16", "int8", "pq"], "Stored dtypes whose "
                      "two-stage ranking of the test split is measured (empty: none); the "
                      "first is the reference. pq:S: pq with S values per one-byte code; "
                      "pq:S:SEED: and codebooks trained with k-means seed SEED; "
                      "pq:S:SEED:FORM, FORM plain (no rotation), held (codebooks trained "
                      "on the train split) or plain+held.")
    flags.DEFINE_string("dir", "/tmp/search_bench", "Scratch folder (deleted at the end).")
    _small.define_flag()


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


def served_requests(index: str, queries, body) -> tuple:
    """``hgan-serve`` over ``index`` in its own process (any free port, no reloads): 5
    warm-up requests, then one POST /api/search per query, one at a time → (seconds per
    request, ``process_memory`` of the service after them)."""
    import subprocess
    import sys
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hgan.cli.serve", f"--savedmodel={FLAGS.savedmodel}",
         f"--index={index}", "--port=0", "--reload_every=0",
         *([f"--nprobe={FLAGS.nprobe}"] if FLAGS.nprobe else [])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving "):
                url = line.split(" at ")[1].split()[0].rstrip("/") + "/api/search"
                break
        else:
            raise RuntimeError("hgan-serve stopped before serving:\n" + "".join(lines[-20:]))
        for q in queries[:5]:
            _post(url, body(q))
        times = []
        for q in queries:
            t = time.perf_counter()
            _post(url, body(q))
            times.append(time.perf_counter() - t)
        return times, process_memory(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        proc.stdout.close()


class _Timed:
    """A callable (a signature) that records the seconds of each call; every other
    attribute is the wrapped one's (``structured_input_signature``, ...)."""

    def __init__(self, fn, times: list, on_call=None):
        self._fn, self._times, self._on_call = fn, times, on_call

    def __call__(self, *args, **kwargs):
        if self._on_call is not None:
            self._on_call(kwargs)
        t0 = time.perf_counter()
        out = self._fn(*args, **kwargs)
        self._times.append(time.perf_counter() - t0)
        return out

    def __getattr__(self, name):
        return getattr(self._fn, name)


class Phases:
    """Times the phases of ``Searcher.query`` from inside it: ``searcher``'s stage-1
    searcher and its ``encode_text`` and ``rerank`` (or ``rerank_rotated``) signatures are
    wrapped in timers (the signatures are the loaded SavedModel's, unchanged); counts each
    re-rank's candidates. "other" is the rest: gathering and decoding the candidates'
    tables, the results."""

    def __init__(self, searcher):
        from hgan.serving.savedmodel import ENCODE_TEXT
        self.times = {"encode": [], "stage1": [], "rerank": []}
        self.candidates = []
        signatures = dict(searcher.served.signatures)
        signatures[ENCODE_TEXT] = _Timed(signatures[ENCODE_TEXT], self.times["encode"])
        searcher.served = types.SimpleNamespace(signatures=signatures)
        stage1 = searcher.stage1  # the served state's (Searcher.snapshot)
        searcher.snapshot.stage1 = types.SimpleNamespace(
            search=_Timed(stage1.search, self.times["stage1"]), vectors=stage1.vectors,
            index=stage1.index)
        searcher.second = _Timed(searcher.second, self.times["rerank"], self._count)
        if searcher.rotated is not None:  # the re-rank a pq gallery with rotations uses
            rerank, fold = searcher.rotated
            searcher.rotated = (_Timed(rerank, self.times["rerank"], self._count), fold)
        self.searcher = searcher

    def _count(self, inputs: dict) -> None:
        rows = {len(v) for k, v in inputs.items() if k.startswith("image_")}
        self.candidates.append(rows.pop() if len(rows) == 1 else -1)

    def run(self, texts, top_k: int, rerank_k: int) -> dict:
        """Warm (5 untimed queries), then one ``Searcher.query`` per text → {phase: [s]}."""
        for text in texts[:5]:
            self.searcher.query(text, top_k, rerank_k)
        for kept in self.times.values():
            kept.clear()
        self.candidates.clear()
        totals = []
        for text in texts:
            t0 = time.perf_counter()
            self.searcher.query(text, top_k, rerank_k)
            totals.append(time.perf_counter() - t0)
        out = {k: np.asarray(v) for k, v in self.times.items()}
        if len(out["rerank"]) != len(totals):  # rerank_k = 0: stage 1 only
            out["rerank"] = np.zeros(len(totals))
        out["total"] = np.asarray(totals)
        out["other"] = out["total"] - out["encode"] - out["stage1"] - out["rerank"]
        return out


def report(name: str, phases: Phases, texts, k: int) -> None:
    runs = phases.run(texts, FLAGS.top_k, k)
    counts = sorted(set(phases.candidates))
    exact_k = counts == [k]
    print(f"{name}: Searcher.query, {len(texts)} queries one at a time; re-ranked "
          + (f"exactly K = {k} candidates in every query" if exact_k else
             f"{counts} candidates (asked K = {k}): NOT exactly K"))
    for phase in PHASES:
        print(f"  {phase:7s} {percentiles(runs[phase])}")


def flips(direction: str, base_ranked, ranked, base_pairs, pairs, query_labels,
          item_labels, base_name: str) -> str:
    """Why a stored form moves R1: the queries whose first item changed (to a relevant item
    or away from one), the score error on the re-ranked pairs both forms scored (its sd
    against the sd of the scores), and the queries whose top two were nearer than twice
    that error under the base form (near ties: a lossy code flips them about as often as
    not), with how many of those had a relevant item first."""
    first, was = ranked.argmax(axis=1), base_ranked.argmax(axis=1)
    right, was_right = (item_labels[x] == query_labels for x in (first, was))
    changed = first != was
    width = ranked.shape[1]
    keys, base_keys = (p[0] * width + p[1] for p in (pairs, base_pairs))
    _, at, base_at = np.intersect1d(keys, base_keys, return_indices=True)
    error = float(np.std(pairs[2][at] - base_pairs[2][base_at]))
    spread = float(np.std(base_pairs[2][base_at]))
    top_two = -np.sort(-base_ranked, axis=1)[:, :2]
    near = top_two[:, 0] - top_two[:, 1] < 2 * error
    return (f"{direction}: {int(changed.sum())} of {len(first)} queries changed their first "
            f"item ({int((changed & right & ~was_right).sum())} to a relevant one, "
            f"{int((changed & was_right & ~right).sum())} away from one); score error sd "
            f"{error:.4f} = {100 * error / max(spread, 1e-12):.1f} % of the scores' sd; "
            f"{int(near.sum())} queries had their top two within twice that under "
            f"{base_name}, {int((near & was_right).sum())} of them a relevant item first")


def fidelity(savedmodel: str, data_dir: str, dtypes: list) -> None:
    """The test split indexed once per dtype; two-stage R1 / mAP both ways from each."""
    from hgan.data import pipeline
    from hgan.evaluation import metrics, rerank
    from hgan.serving import codec, gallery, searcher as search
    from hgan.serving.savedmodel import ENCODE_TEXT, GLOBAL, RERANK
    from hgan.tf_compat import tf
    served = search._load(savedmodel)
    k = search.default_rerank_k(savedmodel)
    examples = pipeline.split_examples(data_dir, "test")
    labels = np.array([int(e["label"]) for e in examples])
    captions = [c.decode() for e in examples for c in e["captions"].numpy()]
    caption_labels = np.array([int(e["label"]) for e in examples
                               for _ in e["captions"].numpy()])
    texts = {}
    for a in range(0, len(captions), 64):
        out = served.signatures[ENCODE_TEXT](sentences=tf.constant(captions[a:a + 64]))
        for name, v in out.items():
            texts.setdefault(name, []).append(v.numpy())
    texts = {name: np.concatenate(v) for name, v in texts.items()}
    second = served.signatures[RERANK]
    inputs = [n for n in second.structured_input_signature[1]]
    text_names = [n[len("text_"):] for n in inputs if n.startswith("text_")]
    image_names = [n[len("image_"):] for n in inputs if n.startswith("image_")]

    def scored(images, text_rows, image_rows):
        out = second(**{f"text_{n}": tf.constant(texts[n][text_rows]) for n in text_names},
                     **{f"image_{n}": tf.constant(images[n][image_rows]) for n in image_names})
        return out["score"].numpy()  # [T, I]

    def t2i(images, seen):
        def fn(q, g):
            out = np.empty(len(q))
            for u in np.unique(q):
                sel = np.flatnonzero(q == u)
                out[sel] = scored(images, [u], g[sel])[0]
            seen.append((q, g, out))
            return out
        return fn

    def i2t(images, seen):
        def fn(q, g):
            out = np.empty(len(q))
            for u in np.unique(q):
                sel = np.flatnonzero(q == u)
                out[sel] = scored(images, g[sel], [u])[:, 0]
            seen.append((q, g, out))
            return out
        return fn

    held_sample = {}

    def train_split_tables() -> dict:
        """The train split's first CODEBOOK_SAMPLE images' tables, encoded once."""
        if not held_sample:
            path = os.path.join(FLAGS.dir, "fidelity_train_split")
            search.build_index(savedmodel, path, data_dir=data_dir, split="train",
                               dtype="float32", log=lambda *_: None)
            store = gallery.Gallery.open(path)
            held_sample.update({n: np.asarray(store.array(n)[:search.CODEBOOK_SAMPLE],
                                              np.float32) for n in store.features})
        return held_sample

    base, changes = None, {}
    train_codebooks = gallery.train_codebooks
    for spec in dtypes:
        # "pq:6": pq with 6 values per code; "pq:6:1": and k-means seed 1 (default 0);
        # "pq:6:1:plain": without the rotation; "pq:6:1:held": codebooks of the train split.
        dtype, subdim, seed, form = (spec.split(":") + ["", "", ""])[:4]
        tokens = set(form.split("+")) - {""}
        if tokens - {"plain", "held"}:
            raise app.UsageError(f"--fidelity {spec}: a pq form is plain, held or plain+held")
        path = os.path.join(FLAGS.dir, f"fidelity_{spec.replace(':', '_')}")
        train = functools.partial(train_codebooks, seed=int(seed or 0))
        if "held" in tokens:
            sample = train_split_tables()
            gallery.train_codebooks = lambda dtype, _own, **kw: train(dtype, sample, **kw)
        else:
            gallery.train_codebooks = train
        try:
            search.build_index(savedmodel, path, data_dir=data_dir, split="test",
                               dtype=dtype, log=lambda *_: None,
                               pq_subdim=int(subdim) if subdim else None,
                               pq_rotation="plain" not in tokens)
        finally:
            gallery.train_codebooks = train_codebooks
        store = gallery.Gallery.open(path)
        assert store.paths() == [e["path"].numpy().decode() for e in examples]
        images = {n: np.asarray(store.array(n), np.float32) for n in store.features}
        stage1 = metrics.unit_rows(texts[GLOBAL]) @ metrics.unit_rows(images[GLOBAL]).T
        seen = {"t2i": [], "i2t": []}
        ranked = {"t2i": rerank.rerank(stage1, t2i(images, seen["t2i"]), k),
                  "i2t": rerank.rerank(stage1.T, i2t(images, seen["i2t"]), k)}
        got = {"t2i": metrics.retrieval_metrics(ranked["t2i"], caption_labels, labels),
               "i2t": metrics.retrieval_metrics(ranked["i2t"], labels, caption_labels)}
        pairs = {d: [np.concatenate(x) for x in zip(*v)] for d, v in seen.items()}
        if base is None:
            base, base_ranked, base_pairs = got, ranked, pairs
        form = ":".join(x for x in (dtype, subdim or str(codec.PQ_SUBDIM), form) if x) \
            if dtype == "pq" else dtype
        changes.setdefault(form, []).append(
            [got[d][m] - base[d][m] for d in ("t2i", "i2t") for m in ("R1", "mAP")])
        line = "; ".join(
            f"{d} R1 {got[d]['R1']:.2f} ({got[d]['R1'] - base[d]['R1']:+.2f}) mAP "
            f"{got[d]['mAP']:.2f} ({got[d]['mAP'] - base[d]['mAP']:+.2f})" for d in got)
        print(f"fidelity, {spec} ({store.bytes_per_item():,} B/image): {line}")
        if got is not base:
            for d, (query_labels, item_labels) in (("t2i", (caption_labels, labels)),
                                                   ("i2t", (labels, caption_labels))):
                print("  " + flips(d, base_ranked[d], ranked[d], base_pairs[d], pairs[d],
                                   query_labels, item_labels, dtypes[0]))
    for form, rows in changes.items():
        if len(rows) > 1:
            rows = np.asarray(rows)
            print(f"fidelity, {form} over {len(rows)} seeds, change from {dtypes[0]}: mean "
                  + ", ".join(f"{name} {m:+.2f} (sd {sd:.2f}, {lo:+.2f} to {hi:+.2f})"
                              for name, m, sd, lo, hi in zip(
                                  ("t2i R1", "t2i mAP", "i2t R1", "i2t mAP"), rows.mean(0),
                                  rows.std(0, ddof=1), rows.min(0), rows.max(0))))
    print(f"fidelity over the test split: {len(labels)} images, {len(captions)} captions, "
          f"K = {k}; change from {dtypes[0]} in brackets")


def main(argv):
    del argv
    _small.apply(SMALL)
    if not FLAGS.small and (FLAGS.savedmodel is None or FLAGS.data_dir is None):
        raise app.UsageError("--savedmodel and --data_dir are required (or --small)")
    shutil.rmtree(FLAGS.dir, ignore_errors=True)
    os.makedirs(FLAGS.dir)
    if FLAGS.small:
        small_root = os.path.join(FLAGS.dir, "small")
        os.makedirs(small_root)
        _small.data_and_export(small_root)
    from hgan.data import pipeline
    from hgan.serving import ann, gallery
    from hgan.serving import searcher as search
    from hgan.serving.savedmodel import ENCODE_TEXT, GLOBAL
    from hgan.tf_compat import tf

    if FLAGS.fidelity:
        fidelity(FLAGS.savedmodel, FLAGS.data_dir, FLAGS.fidelity)
    examples = pipeline.split_examples(FLAGS.data_dir, "test")
    captions = [c.decode() for e in examples for c in e["captions"].numpy()]
    queries = [captions[i % len(captions)] for i in range(FLAGS.queries)]
    served = search._load(FLAGS.savedmodel)  # the loader (and cache) Searcher uses
    shapes = {k: tuple(v.shape[1:]) for k, v in
              served.signatures["encode_image"](images=tf.constant([_png()])).items()}
    dim = shapes[GLOBAL][0]
    k = FLAGS.rerank_k
    print(f"{FLAGS.savedmodel}: features {shapes}; {len(captions)} test captions; "
          f"n = {FLAGS.n:,}, re-rank K = {k}, top {FLAGS.top_k}, nprobe "
          f"{FLAGS.nprobe or 'by the IVF kind (ann.NPROBE)'}")

    t0 = time.time()
    path = os.path.join(FLAGS.dir, "gallery")
    rng = np.random.default_rng(2)
    local = {name: rng.normal(size=(BLOCK, *s)).astype(np.float16)
             for name, s in shapes.items() if name != GLOBAL}
    store = gallery.Gallery.create(path, gallery.model_fingerprint(FLAGS.savedmodel), shapes,
                                   FLAGS.dtype,
                                   codebooks=gallery.train_codebooks(FLAGS.dtype, local))
    vectors = synthetic(FLAGS.n, dim)
    for a in range(0, FLAGS.n, BLOCK):
        m = min(BLOCK, FLAGS.n - a)
        store.append([f"synthetic/{i}.jpg" for i in range(a, a + m)],
                     {GLOBAL: vectors[a:a + m], **{name: v[:m] for name, v in local.items()}})
    del vectors, local  # from here on, the gallery on disk is all there is
    store = gallery.Gallery.open(path)
    per = store.bytes_per_item()
    print(f"gallery of {FLAGS.n:,}: {per:,} B/image {FLAGS.dtype} "
          f"({FLAGS.n * per / 2**30:.2f} GiB; "
          f"1 M images = {1e6 * per / 2**30:.1f} GiB), written in {time.time() - t0:.0f} s")

    exact = search.Searcher(FLAGS.savedmodel, path, nprobe=FLAGS.nprobe)
    assert exact.stage1.exact  # no ann.faiss yet
    print(f"global vectors: {type(exact.stage1.vectors).__name__} of "
          f"{os.path.join(path, 'feat.' + GLOBAL + '.bin')} ({dim}-d float16, "
          f"{FLAGS.n * dim * 2 / 2**20:.1f} MiB): memory-mapped, read through the page "
          "cache (warm: just written, and the warm-up queries read them)")
    report(f"exact brute force over {FLAGS.n:,}", Phases(exact), queries[:FLAGS.exact_queries],
           k)

    t0 = time.time()
    index = ann.build(store.array(GLOBAL), threshold=0, kind=FLAGS.ann)
    ann.save(index, os.path.join(path, search.ANN_FILE))
    print(f"IVF-{ann.kind_of(index).upper()} over {FLAGS.n:,} ({index.nlist} lists) built by "
          f"hgan.serving.ann.build in "
          f"{time.time() - t0:.0f} s" + ("" if FLAGS.n >= ann.EXACT_BELOW else
                                         f" (hgan-search index builds one from "
                                         f"{ann.EXACT_BELOW:,} images; here for the figure)"))
    ivf = search.Searcher(FLAGS.savedmodel, path, nprobe=FLAGS.nprobe)
    nprobe = int(ivf.stage1.index.nprobe)  # --nprobe, else the kind's default
    import faiss
    lists = type(faiss.downcast_InvertedLists(faiss.extract_index_ivf(ivf.stage1.index)
                                              .invlists)).__name__
    print(f"IVF lists: {lists} of {os.path.join(path, search.ANN_FILE)} (ann.load: "
          f"memory-mapped); global vectors still {type(ivf.stage1.vectors).__name__}")
    report(f"IVF{index.nlist} nprobe {nprobe} over {FLAGS.n:,}", Phases(ivf), queries, k)
    vectors = np.concatenate([
        served.signatures[ENCODE_TEXT](sentences=tf.constant(queries[a:a + 64]))[GLOBAL]
        .numpy() for a in range(0, len(queries), 64)])
    truth = exact.stage1.search(vectors, k)[1]
    stage1 = ann.Searcher(ivf.stage1.vectors, ivf.stage1.index, nprobe)  # as served
    saved = stage1.index.nprobe, stage1.refine
    refines = sorted({saved[1], *map(int, FLAGS.recall_refine)}) if saved[1] else [0]
    for probed in sorted({nprobe, *map(int, FLAGS.recall_nprobe)}):
        for refine in refines:
            stage1.index.nprobe, stage1.refine = probed, refine
            recall, times = recall_and_latency(stage1, vectors, truth, k, batch=64)
            print(f"stage 1 recall@{k} of the IVF against exact search, the {len(queries)} "
                  f"captions' embeddings, nprobe {probed:3d}"
                  + (f", short list {refine * k}" if refine else "")
                  + f": {recall:.3f}; one query {percentiles(times)}")
    stage1.index.nprobe, stage1.refine = saved

    small = os.path.join(FLAGS.dir, "baseline")  # the same shapes, BASELINE images, no IVF
    store = gallery.Gallery.create(small, gallery.model_fingerprint(FLAGS.savedmodel), shapes,
                                   FLAGS.dtype, codebooks=store.codebooks)
    store.append([f"synthetic/{i}.jpg" for i in range(BASELINE)],
                 {GLOBAL: synthetic(BASELINE, dim, seed=1),
                  **{name: rng.normal(size=(BASELINE, *s)).astype(np.float16)
                     for name, s in shapes.items() if name != GLOBAL}})
    body = lambda q: {"text": q, "top_k": FLAGS.top_k, "rerank_k": k}  # noqa: E731
    base_times, base_memory = served_requests(small, queries, body)
    times, memory = served_requests(path, queries, body)
    print(f"service (hgan-serve, its own process), POST /api/search over the {FLAGS.n:,} "
          f"gallery (IVF, nprobe {nprobe}, K = {k}), {len(queries)} requests one at a "
          f"time: {percentiles(times)}")
    print(f"  over a {BASELINE:,}-image gallery of the same shapes (exact stage 1): "
          f"{percentiles(base_times)}")
    print("service process memory after its requests, MiB (" + ", ".join(MEMORY) + "): "
          f"{FLAGS.n:,} images " + " / ".join(f"{memory[m]:,.0f}" for m in MEMORY)
          + f"; {BASELINE:,} images " + " / ".join(f"{base_memory[m]:,.0f}" for m in MEMORY))
    print(f"resident memory of the {FLAGS.n:,}-image index in the service: "
          f"{memory['VmRSS'] - base_memory['VmRSS']:,.0f} MiB (the two services' VmRSS "
          f"apart; anonymous {memory['RssAnon'] - base_memory['RssAnon']:+,.0f} MiB, "
          f"file pages {memory['RssFile'] - base_memory['RssFile']:+,.0f} MiB: the gallery's "
          "memory-mapped files and the IVF's lists count as their pages are read)")
    shutil.rmtree(FLAGS.dir, ignore_errors=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
