"""Benchmark: exact and two-stage scoring of a CUHK-PEDES-sized test set.

  python bench/eval_scoring.py [--queries=6156] [--gallery=3074] [--modes=exact,two_stage]
                               [--rerank_k=100] [--budget_mb=512] [--identities=0]
                               [--profile] [--grid_block=128,32] [--candidate_pairs=N]
                               [--preset=paper] [--head_kernel=auto|native|xla]
  python bench/eval_scoring.py --small

``hgan.evaluation.hgan_scoring.Scorer`` driven by the paper's heads alone (two ``LocalMatching`` of
H = 512, k1 = 4, k2 = 2, random weights) on random features of the paper's sizes: C' = 512,
15 regions per image for both local levels, 64 word slots of which 20-40 are real words,
8 phrase slots of which 3-5 are real, 512-d sentence features. Each mode times the calls
``hgan_scoring.evaluate`` (hgan-eval) makes and times: ``exact`` is ``Scorer.exact`` (every
(query, image) pair at every level, once: text-to-image and its transpose); ``two_stage``
is ``Scorer.two_stage_both`` at ``metrics.rerank_depth(--rerank_k)`` (the heads' per-item
tables prepared once, then text-to-image and image-to-text, each re-ranking the
sentence-level top K with the local heads; with the C kernel, the union of both
directions' pairs scored once). The split of that time into preparing the tables, stage 1
and the merges (or, under XLA, each direction) is read inside those same calls; the
metrics hgan-eval computes
afterwards (``metrics.both_directions``, outside its ``{mode}_s``) are timed apart. The
scorer's memory budget is ``--budget_mb`` (hgan-eval: ``Scorer``'s default, 512 MiB). Each
mode runs in its own subprocess, so its peak resident set (``ru_maxrss``) is its own.

Reported per mode: wall time; the floating-point operations computed (``pair_flops`` per
computed pair and level), the GFLOP/s they ran at, and its share of TensorFlow's float32
matmul peak measured in the same process just before the scoring and again just after
its metrics (``matmul_peak_gflops``; the shares use the mean of the two, and a line says
when they differ by more than ``PEAK_DRIFT``: a shared or throttled machine whose speed
moved during the run), with the time over that peak's floor; the preparation of the
heads' tables with the FLOPs of its per-item linear maps (outside ``pair_flops``) and its
share of the peak, and the share that the time outside the local heads alone leaves
``pair_flops`` (the most any speed-up of the heads can reach); the (text, image) pairs the
local heads actually computed, counted at each call of the scorer's chunk function,
padding included (a partial chunk is padded to the compiled shape: its extra rows cost
time and their scores are dropped), against the pairs the mode needs (Q·G for exact,
(Q + G)·K for two-stage), so a ratio above 1.00x is padding overhead and one below it
pairs both directions share; pairs/s; for two-stage, the GFLOP/s and share of the peak of the
work the directions ask for (each direction's pairs at their text widths, a shared pair
counted twice: what scoring each direction apart computes); and the resident set after
importing TF and building the heads, after making the features, and at its peak. Random
global features make every query's top-K independent of its neighbours', the worst case
for a scorer that re-scores the union of a chunk's candidates; ``--identities=N`` draws
them around N identity centres in shard order instead.

Each mode also prints, per direction (exact mode: the one grid both directions read;
two-stage: the local heads' loops over both directions' pairs, or, under XLA,
text-to-image and image-to-text apart, timed inside ``Scorer.two_stage``),
pairs/s, GFLOP/s and the share of the peak. ``--profile`` adds, per direction and level,
one call's time (``profile_phases``: the C kernel's whole; under XLA split into the
gathers, Eq. 2's γ product, the top-k selections, the fused vectors and Eq. 8's MLP) and
how much of the scoring loop's time is spent outside its calls (``bench/local_head_parts.py``
splits a pair's time inside the C kernel). ``--grid_block`` and ``--candidate_pairs`` set
the scorer's block shapes (under XLA; the kernel's two-stage calls take ``NATIVE_PAIRS``),
to compare them. ``--head_kernel`` says how the heads run (``Scorer``'s argument:
``auto``, what hgan-eval runs, is the C kernel of ``hgan.evaluation.local_head_kernel``,
γ included, where it builds, else XLA); each mode prints which. Unstructured random
features (``--identities=0``) are labelled as CUHK-PEDES test's 1,000 identities, for the
metrics.

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
LABELS = 1000  # identities of the labels under --identities=0 (CUHK-PEDES test's)
SMALL = {"queries": 40, "gallery": 20, "rerank_k": 5, "profile": True}


def define_flags():
    flags.DEFINE_integer("queries", 6156, "Text queries (CUHK-PEDES test: 6,156 captions).")
    flags.DEFINE_integer("gallery", 3074, "Gallery images (CUHK-PEDES test: 3,074).")
    flags.DEFINE_list("modes", ["exact", "two_stage"],
                      "Scoring modes, each in its own process.")
    flags.DEFINE_integer("rerank_k", 100, "Two-stage: gallery items re-ranked per query.")
    flags.DEFINE_integer("budget_mb", 512, "Scorer's memory_budget_bytes, in MiB (hgan-eval: "
                         "the Scorer's default, 512).")
    flags.DEFINE_integer("identities", 0, "0: unstructured random global features (labels "
                         "of 1,000 identities, for the metrics); N: drawn around N identity "
                         "centres, in shard order (CUHK-PEDES test: 1,000).")
    flags.DEFINE_integer("seed", 0, "Feature and weight seed.")
    flags.DEFINE_string("preset", "paper", "Preset whose widths the heads and features "
                        "take (paper: H = C' = 512, 64 word slots; demo: 128, 40).")
    flags.DEFINE_list("grid_block", [], "TEXTS,IMAGES: exact mode's block shape "
                      "(hgan_scoring.GRID_BLOCK, or NATIVE_GRID_BLOCK with the C kernel; empty: "
                      "the scorer's).")
    flags.DEFINE_integer("candidate_pairs", 0, "Two-stage pairs per call "
                         "(hgan_scoring.CANDIDATE_PAIRS; 0: as many as the memory budget holds).")
    flags.DEFINE_boolean("profile", False, "Also print, per direction and level, where a "
                         "compiled call's time goes (gathers, the gamma product, the top-k "
                         "selections, the fused MLP) and the scoring loop's time outside "
                         "its calls.")
    flags.DEFINE_enum("head_kernel", "auto", ["auto", "native", "xla"],
                      "How the Gumbel heads run after gamma: the C kernel (native), "
                      "score_selected under XLA (xla), or auto (hgan-eval: native where "
                      "it builds).")
    flags.DEFINE_string("child_mode", "", "Internal: run one mode in this process, print "
                        "JSON.")
    _small.define_flag()

FULL = (6156, 3074)
LEVELS = ["word", "phrase"]
TARGET_S = {"exact": 600.0, "two_stage": 60.0}
TARGET_RSS_GIB = 4.0
GIB = float(1 << 30)
PEAK_DRIFT = 0.10  # before / after the scoring: a larger change is reported


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
    # Labels of CUHK-PEDES test's structure (1,000 identities) unless told: they only
    # matter to the metrics, whose time depends on how many items each query has.
    image_label = (np.arange(gallery) * (identities or LABELS)) // gallery
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
    the X·Y entries of the 2-d index; paired ([P] texts, [P] images, the C kernel's
    two-stage calls) P pairs."""
    text_rows, image_rows = np.asarray(text_rows), np.asarray(image_rows)
    if layout == "grid":
        return int(text_rows.size * image_rows.size)
    if layout == "image_paired":
        return int(image_rows.size)
    if layout in ("text_paired", "paired"):
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
        times, inside the calls ``evaluate`` makes, the preparation of the heads' tables,
        the parts of the two-stage scoring (stage 1, the local heads, the merges; under
        XLA each direction whole), each level's scoring loop and the time inside its
        compiled calls. Counts are kept per direction: ``grid`` (exact mode, whose
        image-to-text matrix is the transpose of the one grid), ``both`` (two-stage with
        the C kernel: both directions' pairs, each once), ``t2i``, ``i2t`` (under XLA)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.direction = "grid"
            self.pairs, self.flops, self.calls = {}, {}, {}
            self.parts, self.loops, self.in_calls = {}, {}, {}
            self.uncounted, self.tops = {}, {}

        def _timed(self, name, fn, *args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - t0
            return out

        def _prepared(self, texts, images):
            self.prep = self._timed("prepare", super()._prepared, texts, images)
            return self.prep

        def two_stage(self, texts, images, k, direction="t2i", prep=None):
            self.direction = direction
            return self._timed(direction, super().two_stage, texts, images, k, direction, prep)

        def two_stage_both(self, texts, images, k, prep=None):
            self.direction = "both"  # the pairs of both directions, each scored once
            return super().two_stage_both(texts, images, k, prep)

        def _stage1(self, texts, images, k, direction, sentence=None):
            if self.direction != "both":  # timed with its direction
                stage1, top = super()._stage1(texts, images, k, direction, sentence)
            else:
                stage1, top = self._timed("stage 1", super()._stage1, texts, images, k,
                                          direction, sentence)
            self.tops[direction] = top
            return stage1, top

        def _merged(self, stage1, top, local):
            if self.direction != "both":
                return super()._merged(stage1, top, local)
            return self._timed("merge", super()._merged, stage1, top, local)

        def _native_scores(self, level, prep, texts, images):
            if self.direction != "both":  # timed by local_candidates
                return super()._native_scores(level, prep, texts, images)
            t0 = time.perf_counter()
            out = super()._native_scores(level, prep, texts, images)
            self.loops[("both", level)] = time.perf_counter() - t0
            self.parts["local heads"] = self.parts.get("local heads", 0.0) + \
                self.loops[("both", level)]
            return out

        def local_grid(self, level, *args):
            t0 = time.perf_counter()
            out = super().local_grid(level, *args)
            self.loops[("grid", level)] = time.perf_counter() - t0
            return out

        def local_candidates(self, level, prep, top, direction):
            t0 = time.perf_counter()
            out = super().local_candidates(level, prep, top, direction)
            self.loops[(direction, level)] = time.perf_counter() - t0
            return out

        def _chunk_fn(self, level):
            fn = self.uncounted[level] = super()._chunk_fn(level)

            def counted(prep, text_rows, image_rows, layout, used):
                key = (self.direction, level)
                pairs = computed_pairs(text_rows, image_rows, layout)
                c = self.config.model
                flops = pairs * pair_flops(used, prep["image"][0].shape[1], c.mlp_hidden,
                                           c.k1, c.k2)
                for table, value in ((self.pairs, pairs), (self.flops, flops)):
                    table[key] = table.get(key, 0) + value
                self.calls.setdefault(key, []).append((text_rows, image_rows, layout, used))
                t0 = time.perf_counter()
                out = np.asarray(fn(prep, text_rows, image_rows, layout, used))
                self.in_calls[key] = self.in_calls.get(key, 0.0) + time.perf_counter() - t0
                return tf.constant(out)
            return counted

    config = preset(FLAGS.preset).replace(rerank_k=FLAGS.rerank_k)
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
    peak_size = (512, 3) if FLAGS.small else ()
    peak = matmul_peak_gflops(*peak_size)
    texts, images = make_features(config, FLAGS.queries, FLAGS.gallery, regions,
                                  FLAGS.identities, FLAGS.seed)
    rss_features = _rss()
    scorer = CountingScorer(model, memory_budget_bytes=FLAGS.budget_mb << 20,
                            head_kernel=FLAGS.head_kernel)
    if FLAGS.grid_block:
        hgan_scoring.GRID_BLOCK = hgan_scoring.NATIVE_GRID_BLOCK = tuple(
            int(v) for v in FLAGS.grid_block)
    if FLAGS.candidate_pairs:
        hgan_scoring.CANDIDATE_PAIRS = FLAGS.candidate_pairs

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
    # The heads' per-item linear maps (prepare_text / prepare_image: φ's two layers and the
    # fuse map W on each computed row), which pair_flops leaves out.
    c = config.model
    row_flops = 2 * (2 * c.local_dim * c.mlp_hidden + c.mlp_hidden ** 2)
    prepare_flops = sum(
        row_flops * (int(hgan_scoring._text_widths(p["mask_np"]).sum())
                     + int(np.prod(p["image_np"][0].shape[:2])))
        for p in scorer.prep.values())
    asked = asked_flops(scorer, config) if mode == "two_stage" else None
    # evaluate's metrics, after its timing: the retrieval figures of both directions.
    t0 = time.perf_counter()
    metrics.both_directions(t2i, i2t, texts["label"], images["label"])
    metrics_s = time.perf_counter() - t0
    peak_after = matmul_peak_gflops(*peak_size)
    profile = profile_phases(scorer) if FLAGS.profile else []
    join = "/".join
    return {"mode": mode, "timing": timing, "metrics_s": metrics_s,
            "head_kernel": scorer.head_kernel_used(),
            "pairs": {join(k): v for k, v in scorer.pairs.items()},
            "flops": {join(k): v for k, v in scorer.flops.items()},
            "loops": {join(k): v for k, v in scorer.loops.items()},
            "in_calls": {join(k): v for k, v in scorer.in_calls.items()},
            "calls": {join(k): len(v) for k, v in scorer.calls.items()},
            "profile": profile, "peak_gflops": (peak + peak_after) / 2,
            "peak_ends": (peak, peak_after), "needed": needed, "asked_flops": asked,
            "rss_base": rss_base, "rss_features": rss_features, "rss_peak": _peak_rss(),
            "prepare_flops": prepare_flops}


def asked_flops(scorer, config) -> dict:
    """Two-stage: per level, the FLOPs (``pair_flops``, at each pair's text width, as the
    C kernel's calls compute it; XLA's calls compute each chunk at its widest text) of
    every (query, candidate) pair each direction asks for, a pair both directions ask
    for counted twice: what scoring each direction apart would compute."""
    from hgan.evaluation import hgan_scoring
    c = config.model
    out = {}
    for level, prep in scorer.prep.items():
        widths, regions = hgan_scoring._text_widths(prep["mask"]), prep["image"][0].shape[1]
        total = 0
        for direction, top in scorer.tops.items():
            texts = (np.repeat(np.arange(len(top)), top.shape[1]) if direction == "t2i"
                     else top.ravel())
            width, count = np.unique(widths[texts], return_counts=True)
            total += sum(int(n) * pair_flops(int(w), regions, c.mlp_hidden, c.k1, c.k2)
                         for w, n in zip(width, count))
        out[level] = total
    return out


def _median_time(fns, repeats: int) -> list:
    """Median wall time of each of ``fns`` (each returns tensors), called in turn
    ``repeats`` times after one warm-up call each, so a load that comes and goes on a
    shared machine weighs on all of them alike."""
    for fn in fns:
        [np.asarray(t) for t in fn()]
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            [np.asarray(t) for t in fn()]
            ts.append(time.perf_counter() - t0)
    return [float(np.median(ts)) for ts in times]


def profile_phases(scorer, repeats: int = 5) -> list:
    """Where a compiled call's time goes (``--profile``), for each direction and level:
    one call of median word slots, re-run as nested prefixes of what the call computes,
    each returning only its last, small result: Eq. 2's γ from rows gathered beforehand;
    the gathers of the rows from the prepared tables + γ; + the top-k selections and
    their Eq. 7 softmax (``top_k_selected`` under XLA); the whole call (+ the fused
    vectors of Eqs. 6–7, Eq. 8's MLP and the means). Each phase is the difference of two
    medians (γ: the first alone). With the C kernel, the call is one call of the kernel,
    γ included (``native``). The scoring loop's time
    outside its calls (index building, padding, copies into the output) is read from the
    timed run."""
    from hgan.evaluation import hgan_scoring
    from hgan.tf_compat import tf
    out = []
    for (direction, level), calls in scorer.calls.items():
        head, prep = scorer.heads[level], scorer.prep[level]
        rows, cols, layout, used = sorted(calls, key=lambda c: c[3])[len(calls) // 2]
        (t_gamma, _), (v_gamma, _) = prep["text"], prep["image"]
        rows, cols = tf.constant(rows), tf.constant(cols)

        def gamma():  # what the scorer's calls compute first
            return hgan_scoring._pair_gamma(head, t_gamma, prep["mask_t"], v_gamma, rows,
                                            cols, layout, used)

        fn = scorer.uncounted[level]
        call = [lambda: [fn(prep, rows.numpy(), cols.numpy(), layout, used)]]
        if scorer.head_kernel_used() == "native":  # one C call, γ included
            (t_call,) = _median_time(call, repeats)
            t_alone = t_gamma = t_select = None
        else:
            select = tf.function(head.top_k_selected, jit_compile=True)
            tg, vg = tf.gather(t_gamma, rows)[..., :used, :], tf.gather(v_gamma, cols)
            phases = [tf.function(lambda: [head.pair_gamma(tg, vg, layout)]),
                      tf.function(lambda: gamma()[:1]),
                      tf.function(lambda: tf.nest.flatten(select(*gamma())))]
            t_alone, t_gamma, t_select, t_call = _median_time(phases + call, repeats)
        out.append({"direction": direction, "level": level, "layout": layout,
                    "shape": {"grid": [int(rows.shape[0]), int(cols.shape[0])],
                              "image_paired": list(cols.shape),
                              "text_paired": list(rows.shape),
                              "paired": [int(rows.shape[0])]}[layout],
                    "used": int(used), "native": t_alone is None,
                    **({} if t_alone is None else {
                        "gather_s": t_gamma - t_alone, "gamma_s": t_alone,
                        "select_s": t_select - t_gamma, "fuse_s": t_call - t_select}),
                    "call_s": t_call, "calls": len(calls),
                    "loop_s": scorer.loops[(direction, level)],
                    "in_calls_s": scorer.in_calls[(direction, level)]})
    return out


def _report(r: dict):
    q, g = FLAGS.queries, FLAGS.gallery
    mode, total = r["mode"], r["timing"]["total"]
    parts = "".join(f", {k} {v:.1f} s" for k, v in r["timing"].items() if k != "total")
    print(f"{mode}: {total:.1f} s{' (' + parts[2:] + ')' if parts else ''}  "
          f"target < {TARGET_S[mode]:.0f} s at {FULL[0]}x{FULL[1]}"
          + (f": {'met' if total < TARGET_S[mode] else 'NOT met'}" if (q, g) == FULL else "")
          + f"; then hgan-eval's metrics {r['metrics_s']:.1f} s")
    print("  local heads: " + {"native": "the C kernel, gamma included (local_head_kernel)",
                                "xla": "gamma by oneDNN, then score_selected under XLA"}[
        r["head_kernel"]])
    levels = sorted({key.split("/")[1] for key in r["pairs"]}, key=LEVELS.index)
    for level in levels:
        pairs = sum(v for key, v in r["pairs"].items() if key.endswith("/" + level))
        print(f"  {level:>6}: {pairs:,} pairs computed (padding included) = "
              f"{pairs / r['needed']:.2f}x the {r['needed']:,} needed")
    scored = sum(r["pairs"].values())
    print(f"  {scored / total / 1e3:.1f} k computed pairs/s over both local levels "
          f"({len(levels) * r['needed'] / total / 1e3:.1f} k needed pairs/s)")
    flops, peak_gflops = sum(r["flops"].values()), r["peak_gflops"]
    achieved = flops / total / 1e9
    before, after = r["peak_ends"]
    print(f"  {achieved:.1f} GFLOP/s achieved ({flops / 1e12:.3f} TFLOP computed, "
          f"pair_flops per pair and level) = {100 * achieved / peak_gflops:.1f} % of the "
          f"float32 matmul peak measured in this process, {peak_gflops:.0f} GFLOP/s (the "
          f"mean of {before:.0f} before the scoring and {after:.0f} after it); "
          f"{total / (flops / peak_gflops / 1e9):.1f}x the FLOP floor at that peak")
    timing = r["timing"]
    prepare_s = timing.get("prepare", 0.0)
    if prepare_s:
        print(f"  prepare: {prepare_s:.1f} s for {r['prepare_flops'] / 1e12:.3f} TFLOP of the "
              f"heads' per-item linear maps (not in pair_flops) = "
              f"{100 * r['prepare_flops'] / prepare_s / 1e9 / peak_gflops:.1f} % of peak")
    # What is left when the local heads take no time: the bound it sets on the share.
    outside = "local heads" in timing
    rest = total - timing["local heads"] if outside else prepare_s
    if rest > 0:
        print(f"  {'the time outside the local heads' if outside else 'the preparation'} "
              f"({rest:.1f} s) alone caps pair_flops' share at "
              f"{100 * flops / rest / 1e9 / peak_gflops:.0f} % of peak")
    if abs(after - before) > PEAK_DRIFT * min(before, after):
        print(f"  the machine's matmul rate moved by {100 * (after / before - 1):+.0f} % "
              f"during this mode: its shares of the peak are uncertain by as much")
    if r["asked_flops"]:
        asked = sum(r["asked_flops"].values())
        print(f"  {asked / total / 1e9:.1f} GFLOP/s of the work the directions ask for "
              f"({asked / 1e12:.3f} TFLOP, a pair both ask for counted twice) = "
              f"{100 * asked / total / 1e9 / peak_gflops:.1f} % of peak")
    # Per direction: exact mode scores one grid (its image-to-text matrix is the
    # transpose); two-stage the union of both directions' pairs, each once (the local
    # heads' loops), or, under XLA, each direction apart, timed inside Scorer.two_stage.
    for direction in ("grid", "both", "t2i", "i2t"):
        keys = [k for k in r["pairs"] if k.startswith(direction + "/")]
        if not keys:
            continue
        seconds = {"grid": total, "both": sum(
            v for k, v in r["loops"].items() if k.startswith("both/"))}.get(
            direction, r["timing"].get(direction))
        pairs = sum(r["pairs"][k] for k in keys)
        gflops = sum(r["flops"][k] for k in keys) / seconds / 1e9
        name = {"grid": "both directions (one grid)",
                "both": "local heads, both directions' pairs once"}.get(direction, direction)
        print(f"  {name}: {seconds:.1f} s, {pairs / seconds / 1e3:.1f} k pairs/s, "
              f"{gflops:.1f} GFLOP/s = {100 * gflops / peak_gflops:.1f} % of peak")
    for p in r["profile"]:
        shape = "x".join(str(d) for d in p["shape"])
        outside = p["loop_s"] - p["in_calls_s"]
        print(f"  profile {p['direction']}/{p['level']}: a call of {shape} pairs, "
              f"{p['used']} word slots, {1e3 * p['call_s']:.1f} ms"
              + (" in the C kernel (gamma, select, fuse, MLP from the tables); " if p["native"]
                 else f" = gather {1e3 * p['gather_s']:.1f} + gamma {1e3 * p['gamma_s']:.1f} + "
                 f"select {1e3 * p['select_s']:.1f} + fuse/MLP {1e3 * p['fuse_s']:.1f} ms; ") +
              f"{p['calls']} calls {p['in_calls_s']:.2f} s of the loop's "
              f"{p['loop_s']:.2f} s (outside the calls: {outside:.2f} s)")
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
