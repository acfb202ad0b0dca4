"""Benchmark: the top-k selections of Eqs. 5 and 7 on one exact-mode block, in the form the
scorer runs and in the other forms TensorFlow offers, to say what bounds them.

  python bench/topk_select.py [--texts=128] [--images=32] [--words=40] [--regions=15]
                              [--k1=4] [--k2=2] [--repeats=15]
  python bench/topk_select.py --small

One block of γ [texts, images, words, regions] (random normal; a quarter of the word slots
padded at -1e9, as the scorer masks them): each word's top k2 regions (over the last axis)
and each region's top k1 words (over the word axis), indices only, each form compiled once
and timed as the median of ``--repeats`` calls:

- ``rounds``: ``hgan.layers.gumbel_topk.top_k_rounds`` under XLA, what
  ``LocalMatching.score_selected`` runs (k passes of a max and a lowest-position-of-the-max
  along each short row; the words first moved to the last axis);
- ``packed``: each entry's float bits and position packed into one int64 key, so that a
  round is one max reduction, under XLA;
- ``slabs``: one insertion pass over the positions, each step elementwise over whole slabs
  (the rows' k best kept sorted), under XLA;
- ``top_k``: ``tf.math.top_k`` (TensorFlow's CPU kernel, no XLA);
- ``C kernel``: the selections of ``hgan/evaluation/native/local_head.c``
  (``hgan.evaluation.local_head_kernel.select``), a hand-written kernel that keeps each
  row's k best in vector registers, one branch-free insertion a key, and gives Eq. 7's
  weights too, the block's pairs split over ``--threads`` threads; compiled with the
  system's C compiler for this CPU (without one, the bench says so and leaves the
  kernel's lines out);
- ``one max``: a single ``reduce_max`` of both inputs under XLA, a lower bound of one pass.

Every form is checked to give the rounds' indices. Prints each form's milliseconds and
nanoseconds per γ entry and round (k2 rounds over the regions, k1 over the words).

Then the whole word call of such a block (its word mask) from random prepared tables of
``--hidden`` (the paper: 512), four ways: Eq. 2's γ alone (``LocalMatching.pair_gamma``,
one oneDNN product); γ then ``score_selected`` under XLA (the rounds inside the compiled
call, fused with the gathers that read them; ``hgan-eval`` with ``HGAN_HEAD_KERNEL=xla``);
γ, the C kernel's selections, then ``score_from_selected`` under XLA (the same gathers,
Eq. 8's MLP and means, reading the kernel's indices and weights); and the whole call in
the C kernel, γ included (``local_head_kernel.score_rows``, what the scorer runs where the
kernel builds). Every score is checked equal to the second's within 1e-5 relative.
Asserts nothing.

``--small`` (tests/test_benches.py): a 4 × 4 block; every line of the full run.
"""
import os
import statistics
import time

import numpy as np
from absl import app, flags

import _heads
import _small

FLAGS = flags.FLAGS
SMALL = {"texts": 4, "images": 4, "repeats": 2, "hidden": 16}
MASKED = -1e9


def define_flags():
    flags.DEFINE_integer("texts", 128, "Texts of the block (the scorer's GRID_BLOCK[0]).")
    flags.DEFINE_integer("images", 32, "Images of the block (GRID_BLOCK[1]).")
    flags.DEFINE_integer("words", 40, "Word slots.")
    flags.DEFINE_integer("repeats", 15, "Timed calls per form.")
    flags.DEFINE_integer("threads", os.cpu_count() or 1, "Threads of the C kernel.")
    _heads.define_shape_flags()
    _small.define_flag()


def packed_rounds(tf, scores, k: int):
    """``top_k_rounds``'s indices with one reduction a round: key = (order-preserving int of
    the float) << 32 | (n − 1 − position), so the largest key is the largest value at its
    lowest position."""
    n = scores.shape[-1]
    scores = tf.where(scores == 0, tf.zeros_like(scores), scores)  # -0.0 as +0.0
    bits = tf.bitcast(scores, tf.int32)
    order = tf.bitwise.bitwise_xor(
        bits, tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, 31), 0x7FFFFFFF))
    keys = tf.bitwise.bitwise_or(tf.bitwise.left_shift(tf.cast(order, tf.int64), 32),
                                 (n - 1) - tf.range(n, dtype=tf.int64))
    lowest = tf.constant(np.iinfo(np.int64).min, tf.int64)
    indices = []
    for _ in range(k):
        best = tf.reduce_max(keys, axis=-1, keepdims=True)
        index = (n - 1) - tf.bitwise.bitwise_and(best, 0xFFFFFFFF)
        indices.append(tf.cast(tf.where(best == lowest, tf.zeros_like(index), index)[..., 0],
                               tf.int32))
        keys = tf.where(keys == best, lowest, keys)
    return indices


def slab_rounds(tf, scores, k: int):
    """``top_k_rounds``'s indices by one insertion pass over the last axis's positions:
    a later entry enters only where strictly larger, so ties keep the lower position."""
    slabs = tf.unstack(scores, axis=-1)
    values = [tf.fill(tf.shape(slabs[0]), float("-inf"))] * k
    indices = [tf.zeros(tf.shape(slabs[0]), tf.int32)] * k
    for j, x in enumerate(slabs):
        above = [x > v for v in values]
        new_values, new_indices = [], []
        for i in range(k):
            v = tf.where(above[i], x, values[i])
            ix = tf.where(above[i], j, indices[i])
            if i:
                v = tf.where(above[i - 1], values[i - 1], v)
                ix = tf.where(above[i - 1], indices[i - 1], ix)
            new_values.append(v)
            new_indices.append(ix)
        values, indices = new_values, new_indices
    return indices


def main(argv):
    del argv
    _small.apply(SMALL)
    from hgan.layers.gumbel_topk import top_k_rounds
    from hgan.tf_compat import tf

    x, y, r, n = FLAGS.texts, FLAGS.images, FLAGS.words, FLAGS.regions
    rng = np.random.default_rng(0)
    gamma = rng.standard_normal((x, y, r, n)).astype(np.float32)
    gamma[:, :, r - r // 4:] = MASKED  # padded words
    by_region = tf.constant(gamma)
    by_word = tf.constant(np.ascontiguousarray(gamma.transpose(0, 1, 3, 2)))
    print(f"one block: {x} texts x {y} images = {x * y:,} pairs, {r} word slots x {n} "
          f"regions ({x * y * r * n:,} γ entries, {x * y * r * n * 4 / 2**20:.1f} MiB); top "
          f"{FLAGS.k2} of {n} regions per word, top {FLAGS.k1} of {r} words per region")

    def both(select):
        return lambda a, b: [*select(a, FLAGS.k2), *select(b, FLAGS.k1)]

    forms = {
        "rounds": tf.function(both(lambda s, k: top_k_rounds(s, k)[1]), jit_compile=True),
        "packed": tf.function(both(lambda s, k: packed_rounds(tf, s, k)), jit_compile=True),
        "slabs": tf.function(both(lambda s, k: slab_rounds(tf, s, k)), jit_compile=True),
        "top_k": tf.function(both(lambda s, k: tf.unstack(tf.math.top_k(s, k).indices,
                                                          axis=-1))),
        "one max": tf.function(lambda a, b: [tf.reduce_max(a, -1), tf.reduce_max(b, -1)],
                               jit_compile=True),
    }
    from hgan.evaluation import local_head_kernel
    lib = local_head_kernel.load()
    if lib is None:
        print(f"C kernel: not built ({local_head_kernel.load_error()})")
    word_mask = (gamma[..., 0] > MASKED / 2).astype(np.float32)

    def c_kernel(_a, _b):
        (_, t2i), (_, i2t) = local_head_kernel.select(lib, gamma, word_mask, FLAGS.k1,
                                                      FLAGS.k2, FLAGS.threads)
        return [*np.moveaxis(t2i, -1, 0), *np.moveaxis(i2t, -1, 0)]
    if lib is not None:
        forms["C kernel"] = c_kernel
    forms["one max"] = forms.pop("one max")
    reference = [i.numpy() for i in forms["rounds"](by_region, by_word)]
    for name in [f for f in forms if f not in ("rounds", "one max")]:
        got = [np.asarray(i) for i in forms[name](by_region, by_word)]
        same = all(np.array_equal(a, b) for a, b in zip(got, reference))
        print(f"  {name}: the rounds' indices {'exactly' if same else 'NOT'}")
    forms["one max"](by_region, by_word)  # compiled before the timing, as the others
    entry_rounds = x * y * r * n * (FLAGS.k1 + FLAGS.k2)
    times = _interleaved(forms, (by_region, by_word))
    for name, ms in times.items():
        per = (f", {ms * 1e6 / entry_rounds:.2f} ns per entry and round"
               if name != "one max" else f", {ms * 1e6 / (2 * x * y * r * n):.2f} ns per entry")
        print(f"{name}: {ms:.2f} ms{per}")
    if lib is not None:
        word_call(tf, lib, word_mask)


def _interleaved(fns: dict, args) -> dict:
    """Median milliseconds of each of ``fns`` over ``--repeats`` calls, interleaved so a
    slow spell of the machine hits all."""
    times = {name: [] for name in fns}
    for _ in range(FLAGS.repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            [np.asarray(t) for t in fn(*args)]
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def word_call(tf, lib, word_mask):
    """The whole word call on one block, from random prepared tables: γ by oneDNN
    (``pair_gamma``) then XLA's selections inside the call, or the C kernel's before it;
    or the whole call, γ included, in the C kernel."""
    from hgan.evaluation import local_head_kernel
    from hgan.layers.matching import LocalMatching
    x, r = word_mask.shape[0], word_mask.shape[-1]
    y, n, h = FLAGS.images, FLAGS.regions, FLAGS.hidden
    rng = np.random.default_rng(1)
    head = LocalMatching(hidden=h, k1=FLAGS.k1, k2=FLAGS.k2)
    head((tf.zeros([1, r, h]), tf.ones([1, r]), tf.zeros([1, n, h])))
    t_phi, t_lin = (rng.standard_normal((x, r, h)).astype(np.float32) for _ in range(2))
    v_phi, v_lin = (rng.standard_normal((y, n, h)).astype(np.float32) for _ in range(2))
    text_mask = np.ascontiguousarray(word_mask[:, 0])  # [x, r]: a text's mask
    mask = tf.constant(word_mask)
    rows, cols = tf.range(x)[:, None], tf.range(y)[None]
    phi = tf.constant(t_phi), tf.constant(v_phi)
    product = tf.function(head.pair_gamma)

    def gamma():
        return product(*phi)
    inside = tf.function(head.score_selected, jit_compile=True)
    after = tf.function(head.score_from_selected, jit_compile=True)

    def with_kernel():
        g = gamma()
        t2i, i2t = local_head_kernel.select(lib, g.numpy(), word_mask, FLAGS.k1, FLAGS.k2,
                                            FLAGS.threads)
        t2i, i2t = ((w, list(np.moveaxis(p, -1, 0))) for w, p in (t2i, i2t))
        return [after(t2i, i2t, t_lin, mask, rows, v_lin, cols)]
    tables = [a.reshape(-1, h) for a in (t_phi, t_lin, v_phi, v_lin)]

    def whole():
        return [local_head_kernel.score_rows(
            lib, tables[:2], text_mask.reshape(-1), tables[2:],
            np.arange(x)[:, None] * r, np.arange(y)[None] * n, r, n, head,
            threads=FLAGS.threads).reshape(x, y)]
    calls = {"gamma alone (oneDNN)": lambda: [gamma()],
             "gamma, then XLA's selections inside the call": lambda: [
                 inside(gamma(), t_lin, mask, rows, v_lin, cols)],
             "gamma, then the C kernel's selections, then the rest under XLA": with_kernel,
             "the whole call in the C kernel, gamma included (score_rows)": whole}
    scores = [np.asarray(fn()[0]) for name, fn in calls.items() if "alone" not in name]
    same = all(np.allclose(s, scores[0], rtol=1e-5, atol=1e-6) for s in scores[1:])
    times = _interleaved(calls, ())
    first = times[list(times)[1]]
    print(f"word call ({x} x {y} pairs, H = {h}; scores {'equal' if same else 'NOT equal'} "
          f"within 1e-5; ratios to the second): "
          + "; ".join(f"{name} {ms:.2f} ms ({ms / first:.2f})" for name, ms in times.items()))


if __name__ == "__main__":
    define_flags()
    app.run(main)
