"""Benchmark: exact and two-stage scoring of a CUHK-PEDES-sized test set.

  python bench/eval_scoring.py [--queries=6156] [--gallery=3074] [--modes=exact,two_stage]
                               [--rerank_k=100] [--budget_mb=512] [--identities=0]
  python bench/eval_scoring.py --small

``hgan.evaluation.hgan_scoring.Scorer`` driven by the paper's heads alone (two ``LocalMatching`` of
H = 512, k1 = 4, k2 = 2, random weights) on random features of the paper's sizes: C' = 512,
15 regions per image for both local levels, 64 word slots of which 20-40 are real words,
8 phrase slots of which 3-5 are real, 512-d sentence features. Each mode times the calls
``hgan_scoring.evaluate`` (hgan-eval) makes and times: ``exact`` is ``Scorer.exact`` (every
(query, image) pair at every level, once: text-to-image and its transpose); ``two_stage``
is ``Scorer.two_stage_both`` at ``metrics.rerank_depth(--rerank_k)`` (the heads' per-item
tables prepared once, then text-to-image and image-to-text, each re-ranking the
sentence-level top K with the local heads). The split of that time into preparing the
tables and each direction is read inside those same calls; the metrics hgan-eval computes
afterwards (``metrics.both_directions``, outside its ``{mode}_s``) are timed apart. The
scorer's memory budget is ``--budget_mb`` (hgan-eval: ``Scorer``'s default, 512 MiB). Each
mode runs in its own subprocess, so its peak resident set (``ru_maxrss``) is its own.

Reported per mode: wall time; the floating-point operations computed (``pair_flops`` per
computed pair and level), the GFLOP/s they ran at, and its share of TensorFlow's float32
matmul peak measured in the same process just before (``matmul_peak_gflops``), with the
time over that peak's floor; the (text, image) pairs the local heads actually computed,
counted at each call of the scorer's compiled chunk function, padding included (a partial
chunk is padded to the compiled shape: its extra rows cost time and their scores are
dropped), against the pairs the mode needs (Q·G for exact, (Q + G)·K for two-stage), so a
ratio above 1.00x is padding overhead; pairs/s; and the resident set after importing TF
and building the heads, after making the features, and at its peak. Random global
features make every query's top-K independent of its neighbours', the worst case for a
scorer that re-scores the union of a chunk's candidates; ``--identities=N`` draws them
around N identity centres in shard order instead.

Targets (at 6,156 × 3,074): two-stage at K = 100 under 60 s, exact under 10 minutes,
peak memory under 4 GiB. Prints its figures; asserts nothing.

``--small`` (tests/test_benches.py): 40 queries × 20 images, K = 5, the same paper-size
heads, both modes in this process (their memory figures are not their own); every line of
the full run (and the projection to full size), in about 20 s.
"""
import json
import os
import resource
import subprocess
import sys
import time
import types

from absl import app, flags
import numpy as np

import _small

FLAGS = flags.FLAGS
SMALL = {"queries": 40, "gallery": 20, "rerank_k": 5}


def define_flags():
    flags.DEFINE_integer("queries", 6156, "Text queries (CUHK-PEDES test: 6,156 captions).")
    flags.DEFINE_integer("gallery", 3074, "Gallery images (CUHK-PEDES test: 3,074).")
    flags.DEFINE_list("modes", ["exact", "two_stage"],
                      "Scoring modes, each in its own process.")
    flags.DEFINE_integer("rerank_k", 100, "Two-stage: gallery items re-ranked per query.")
    flags.DEFINE_integer("budget_mb", 512, "Scorer's memory_budget_bytes, in MiB (hgan-eval: "
                         "the Scorer's default, 512).")
    flags.DEFINE_integer("identities", 0, "0: unstructured random global features; N: drawn "
                         "around N identity centres, in shard order (CUHK-PEDES test: 1,000).")
    flags.DEFINE_integer("seed", 0, "Feature and weight seed.")
    flags.DEFINE_string("child_mode", "", "Internal: run one mode in this process, print "
                        "JSON.")
    _small.define_flag()

FULL = (6156, 3074)
TARGET_S = {"exact": 600.0, "two_stage": 60.0}
TARGET_RSS_GIB = 4.0
GIB = float(1 << 30)


def _rss() -> float:
    """Current resident set in bytes."""
    try:
        import psutil
        return float(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as f:
            return float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # KiB on Linux


def make_features(config, queries: int, gallery: int, regions: int, identities: int,
                  seed: int) -> tuple[dict, dict]:
    """Random float32 features with the shapes and masks ``encode_split`` returns."""
    rng = np.random.default_rng(seed)
    C, L, M = config.model.local_dim, config.data.max_len, config.data.max_phrases
    image_label = (np.arange(gallery) * max(identities, 1)) // gallery
    image_index = (np.arange(queries) * gallery) // queries  # ~2 captions per image
    text_label = image_label[image_index]

    def normal(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    if identities:
        centres = normal(identities, config.model.embed_dim)
        v_global = centres[image_label] + 0.7 * normal(gallery, config.model.embed_dim)
        t_global = centres[text_label] + 0.7 * normal(queries, config.model.embed_dim)
    else:
        v_global, t_global = normal(gallery, config.model.embed_dim), normal(queries, config.model.embed_dim)
    word_mask = np.zeros([queries, L], np.float32)
    lengths = rng.integers(20, min(40, L - 2) + 1, queries)
    for q, n in enumerate(lengths):
        word_mask[q, 1:n + 1] = 1.0  # [CLS] at 0 and [SEP] after the words are not words
    phrase_mask = (np.arange(M)[None] < rng.integers(3, 6, queries)[:, None]).astype(np.float32)
    texts = {"global": t_global, "word": normal(queries, L, C), "word_mask": word_mask,
             "phrase": normal(queries, M, C), "phrase_mask": phrase_mask,
             "label": text_label, "image_index": image_index}
    images = {"global": v_global, "word": normal(gallery, regions, C),
              "phrase": normal(gallery, regions, C), "label": image_label}
    return texts, images


def computed_pairs(text_rows, image_rows, layout: str) -> int:
    """(text, image) pairs one call of ``Scorer._chunk_fn(level)`` scores, from its index
    arguments (``LocalMatching.score_prepared``'s layouts): grid [X] × [Y] is X·Y pairs;
    image_paired ([X] texts, [X, Y] images) and text_paired ([X, Y] texts, [X] images) are
    the X·Y entries of the 2-d index."""
    text_rows, image_rows = np.asarray(text_rows), np.asarray(image_rows)
    if layout == "grid":
        return int(text_rows.size * image_rows.size)
    if layout == "image_paired":
        return int(image_rows.size)
    if layout == "text_paired":
        return int(text_rows.size)
    raise ValueError(f"unknown layout {layout!r}")


def pair_flops(words: int, regions: int, hidden: int, k1: int, k2: int) -> int:
    """Floating-point operations of one (text, image) pair at one local level, as the
    Gumbel scorer computes it (``LocalMatching.pair_gamma`` + ``score_selected``), counting
    a multiply-add as 2: Eq. 2's γ = φ_t(T)·φ_v(V)ᵀ, [R, H] × [H, N]: 2·R·N·H; Eqs. 6–7's
    fused vectors, k1 words per region and k2 regions per word: 2·(k1·N + k2·R)·H; Eq. 8's
    output layer on every region and word: 2·(N + R)·H. The top-k, softmaxes, sigmoids
    and means are O(R·N) and left out. ``words`` is the chunk's word slots (its padding
    included: what is computed)."""
    return 2 * hidden * (words * regions + k1 * regions + k2 * words + regions + words)


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    """TensorFlow's float32 matmul rate on this machine, in GFLOP/s: the best of
    ``repeats`` [size, size] × [size, size] products (2·size³ FLOPs each), in a
    ``tf.function``, after one warm-up call."""
    from hgan.tf_compat import tf
    a = tf.random.normal([size, size], seed=1)
    b = tf.random.normal([size, size], seed=2)
    product = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    product(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        product(a, b).numpy()
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best / 1e9


def run_mode(mode: str) -> dict:
    from hgan.evaluation import hgan_scoring, metrics
    from hgan.config import preset
    from hgan.layers.matching import LocalMatching
    from hgan.tf_compat import tf
    from hgan.modeling.hgan.visual import partition_grid

    class CountingScorer(hgan_scoring.Scorer):
        """Counts the (text, image) pairs every local level's heads compute: each call of
        the compiled chunk function, with the padding rows and columns that keep a partial
        chunk at the compiled shape (their scores are dropped, their cost is not); and
        times, inside the calls ``evaluate`` makes, the preparation of the heads' tables
        and each direction of the two-stage scoring."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.pairs = {level: 0 for level in hgan_scoring.LOCAL_LEVELS}
            self.flops = {level: 0 for level in hgan_scoring.LOCAL_LEVELS}
            self.parts = {}

        def _timed(self, name, fn, *args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - t0
            return out

        def _prepared(self, texts, images):
            return self._timed("prepare", super()._prepared, texts, images)

        def two_stage(self, texts, images, k, direction="t2i", prep=None):
            return self._timed(direction, super().two_stage, texts, images, k, direction, prep)

        def _chunk_fn(self, level):
            fn = super()._chunk_fn(level)

            def counted(prep, text_rows, image_rows, layout, used):
                pairs = computed_pairs(text_rows, image_rows, layout)
                self.pairs[level] += pairs
                c = self.config.model
                self.flops[level] += pairs * pair_flops(
                    used, prep["image"][0].shape[1], c.mlp_hidden, c.k1, c.k2)
                return fn(prep, text_rows, image_rows, layout, used)
            return counted

    config = preset("paper").replace(rerank_k=FLAGS.rerank_k)
    tf.random.set_seed(FLAGS.seed)
    regions = int(np.prod(partition_grid(config.model.partition_map, config.model.word_pool,
                                         config.model.word_stride)))
    phrase_regions = int(np.prod(partition_grid(config.model.partition_map, config.model.phrase_pool,
                                                config.model.phrase_stride)))
    if phrase_regions != regions:
        raise ValueError("this benchmark assumes both local levels have the same regions")
    heads = {}
    for level, slots in (("word", config.data.max_len), ("phrase", config.data.max_phrases)):
        head = LocalMatching(hidden=config.model.mlp_hidden, k1=config.model.k1, k2=config.model.k2,
                             temperature=config.model.temperature, attention=config.model.attention,
                             name=f"{level}_matching")
        head((tf.zeros([1, slots, config.model.local_dim]), tf.ones([1, slots]),
              tf.zeros([1, regions, config.model.local_dim])))
        heads[level] = head
    model = types.SimpleNamespace(config=config, word_head=heads["word"],
                                  phrase_head=heads["phrase"])
    rss_base = _rss()
    peak = matmul_peak_gflops(*((512, 3) if FLAGS.small else ()))
    texts, images = make_features(config, FLAGS.queries, FLAGS.gallery, regions,
                                  FLAGS.identities, FLAGS.seed)
    rss_features = _rss()
    scorer = CountingScorer(model, memory_budget_bytes=FLAGS.budget_mb << 20)

    # What hgan_scoring.evaluate runs for each mode, and times as its "{mode}_s".
    t0 = time.perf_counter()
    if mode == "exact":
        t2i = scorer.exact(texts, images)["total"]
        i2t = t2i.T
        needed = FLAGS.queries * FLAGS.gallery
    elif mode == "two_stage":
        k = metrics.rerank_depth(config.eval.rerank_k, class_level=False)
        t2i, i2t = scorer.two_stage_both(texts, images, k)
        needed = FLAGS.queries * min(k, FLAGS.gallery) + FLAGS.gallery * min(k, FLAGS.queries)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    timing = {**scorer.parts, "total": time.perf_counter() - t0}
    # evaluate's metrics, after its timing: the retrieval figures of both directions.
    t0 = time.perf_counter()
    metrics.both_directions(t2i, i2t, texts["label"], images["label"])
    return {"mode": mode, "timing": timing, "metrics_s": time.perf_counter() - t0,
            "pairs": scorer.pairs, "flops": scorer.flops, "peak_gflops": peak,
            "needed": needed, "rss_base": rss_base,
            "rss_features": rss_features, "rss_peak": _peak_rss()}


def _report(r: dict):
    q, g = FLAGS.queries, FLAGS.gallery
    mode, total = r["mode"], r["timing"]["total"]
    parts = "".join(f", {k} {v:.1f} s" for k, v in r["timing"].items() if k != "total")
    print(f"{mode}: {total:.1f} s{' (' + parts[2:] + ')' if parts else ''}  "
          f"target < {TARGET_S[mode]:.0f} s at {FULL[0]}x{FULL[1]}"
          + (f": {'met' if total < TARGET_S[mode] else 'NOT met'}" if (q, g) == FULL else "")
          + f"; then hgan-eval's metrics {r['metrics_s']:.1f} s")
    scored = sum(r["pairs"].values())
    for level, pairs in r["pairs"].items():
        print(f"  {level:>6}: {pairs:,} pairs computed (padding included) = "
              f"{pairs / r['needed']:.2f}x the {r['needed']:,} needed")
    print(f"  {scored / total / 1e3:.1f} k computed pairs/s over both local levels "
          f"({len(r['pairs']) * r['needed'] / total / 1e3:.1f} k needed pairs/s)")
    flops, peak_gflops = sum(r["flops"].values()), r["peak_gflops"]
    achieved = flops / total / 1e9
    print(f"  {achieved:.1f} GFLOP/s achieved ({flops / 1e12:.3f} TFLOP computed, "
          f"pair_flops per pair and level) = {100 * achieved / peak_gflops:.1f} % of the "
          f"float32 matmul peak measured in this process, {peak_gflops:.0f} GFLOP/s; "
          f"{total / (flops / peak_gflops / 1e9):.1f}x the FLOP floor at that peak")
    if mode == "exact" and (q, g) != FULL:
        print(f"  projected at {FULL[0]}x{FULL[1]}: {total * FULL[0] * FULL[1] / (q * g):.0f} s "
              "(time x pairs)")
    peak = r["rss_peak"] / GIB
    print(f"  memory: {r['rss_base'] / GIB:.2f} GiB after TF + heads, "
          f"{r['rss_features'] / GIB:.2f} GiB with the features "
          f"(+{(r['rss_features'] - r['rss_base']) / GIB:.2f}), peak {peak:.2f} GiB  "
          f"target < {TARGET_RSS_GIB:.0f} GiB"
          + (f": {'met' if peak < TARGET_RSS_GIB else 'NOT met'}" if (q, g) == FULL else ""))


def main(argv):
    del argv
    _small.apply(SMALL)
    if FLAGS.child_mode:
        print("RESULT " + json.dumps(run_mode(FLAGS.child_mode)), flush=True)
        return
    print(f"{FLAGS.queries} queries x {FLAGS.gallery} images, K={FLAGS.rerank_k}, "
          f"budget {FLAGS.budget_mb} MiB, "
          f"{'random' if not FLAGS.identities else f'{FLAGS.identities}-identity'} features")
    failed = []
    for mode in FLAGS.modes:
        if FLAGS.small:  # one process for both modes: at this size its memory says nothing
            _report(run_mode(mode))
            continue
        args = [a for a in sys.argv[1:] if not a.startswith(("--child_mode", "--modes"))]
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *args,
                               f"--child_mode={mode}"], stdout=subprocess.PIPE, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{mode}: failed (exit code {proc.returncode})")
            failed.append(mode)
            continue
        _report(json.loads(lines[-1][len("RESULT "):]))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
