"""Evaluation: features of a split, exact and two-stage scoring, the papers' metrics.

* exact: every (query, gallery) pair scored by every enabled level, in chunks whose
  intermediate tensors stay within ``memory_budget_bytes``;
* two-stage: the sentence-level cosine ranks the whole gallery, then the word/phrase Gumbel
  heads re-score each query's top ``rerank_k`` and re-rank them; the rest keep their
  stage-1 order behind them.
"""
from __future__ import annotations

import functools
import time

import numpy as np

from hgan.config import Config
from hgan.data import pipeline
from hgan.evaluation import buffers, encode, local_head_kernel, metrics, rerank
from hgan.modeling.hgan.model import HGAN, TEXT_KEYS
from hgan.tf_compat import tf


LOCAL_LEVELS = ("word", "phrase")
# Texts × images of an exact-mode call of the Gumbel heads, within the memory budget;
# chosen by paired runs of bench/eval_scoring.py --grid_block (docs/benchmarks.md): under
# XLA, and with the heads' C kernel (whose calls cost less, so a larger block shares the
# fixed cost of a call over more pairs; 256 × 256 and 64 × 1,000 were no faster).
GRID_BLOCK = (128, 32)
NATIVE_GRID_BLOCK = (256, 64)
# (query, candidate) pairs of a two-stage call of the C kernel (which holds nothing of a
# pair but its score: the size only bounds the call's index arrays).
NATIVE_PAIRS = 1 << 16
# (query, candidate) pairs of a two-stage call; None: as many as the memory budget holds.
CANDIDATE_PAIRS = None


def encode_split(model: HGAN, data_dir: str, config: Config, split: str,
                 tokenizer=None, keep=None, log=None) -> tuple[dict, dict]:
    """HGAN's features of a split (``hgan.evaluation.encode.encode_split``): texts ``global``,
    ``word``, ``word_mask``, ``phrase``, ``phrase_mask``; images ``global``, ``word``,
    ``phrase``. ``keep``: feature keys to hold on to; all if None. ``log``: progress."""
    # Traced without AutoGraph (the model's layers branch on Python values only), as the
    # export's functions are: converting every layer's source cost seconds of each run.
    encode_image = encode.compiled(model, "encode_image", lambda ref: tf.function(
        lambda x: ref().encode_image(x, training=False), reduce_retracing=True,
        autograph=False))
    encode_text = encode.compiled(model, "encode_text", lambda ref: tf.function(
        lambda x: ref().encode_text(x, training=False), reduce_retracing=True,
        autograph=False))
    return encode.encode_split(encode_image, encode_text, data_dir, config, split,
                               tokenizer or pipeline.make_tokenizer(config), TEXT_KEYS,
                               keep=keep, log=log)


def _map_chunked(fn, x: np.ndarray, widths=None, chunk: int = 256) -> list[np.ndarray]:
    """``fn`` (→ a tuple of tensors) over ``x`` in chunks, written into preallocated float32
    buffers (scores are computed in float32 whatever the compute dtype: a mixed_float16
    model's heads give float16 tables; its variables stay float32): neither the whole
    set's intermediates nor a second copy of the result ever exist. ``widths`` [len(x)]
    (texts: ``_text_widths``): each row's slots from its width on are not computed but
    zero (rows of equal width are chunked together; every score reads only a text's real
    slots, and its padding's weights are 0)."""
    widths = np.full(len(x), x.shape[1]) if widths is None else np.asarray(widths)
    out = None
    for width in np.unique(widths):
        rows = np.flatnonzero(widths == width)
        for a in range(0, len(rows), chunk):
            at = rows[a:a + chunk]
            parts = [t.numpy() for t in fn(tf.constant(x[at, :width]))]
            if out is None:
                out = [buffers.empty(x.shape[:2] + p.shape[2:], np.float32) for p in parts]
            for o, p in zip(out, parts):
                o[at, :width] = p
                o[at, width:] = 0.0
    return out


def _text_widths(mask: np.ndarray, bucket: int = 8) -> np.ndarray:
    """[T] each text's word slots up to its last real one, rounded up to a multiple of
    ``bucket`` and at most the mask's [T, L'] width (a text without any counts one slot)."""
    slots = mask.shape[1]
    last = np.where(mask.any(axis=1), slots - np.argmax(mask[:, ::-1] > 0, axis=1), 1)
    return np.minimum(slots, -(-last // bucket) * bucket)


def _shared(array: np.ndarray) -> tf.Tensor:
    """A tensor on ``array``'s buffer (DLPack, no copy)."""
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


def _used_length(mask: np.ndarray, bucket: int = 8) -> int:
    """The widest ``_text_widths`` of the rows of ``mask`` [..., L'] (padding after a row's
    last real slot changes no score): slots a call of those rows computes, rounded up to a
    multiple of ``bucket`` so few distinct shapes reach the compiler."""
    slots = mask.shape[-1]
    return int(_text_widths(mask.reshape(-1, slots), bucket).max(
        initial=min(slots, bucket)))  # every width is at least this; also for no rows


def _pad_index(index: np.ndarray, size: int) -> np.ndarray:
    """``index`` padded to ``size`` entries by repeating its first one: a chunk's last,
    partial block keeps the compiled shape (the padded rows' scores are dropped)."""
    return np.concatenate([index, np.repeat(index[:1], size - len(index), axis=0)])


def _pair_index(text_rows, image_rows, layout: str):
    """The table rows of each pair's text and image, broadcastable to [X, Y] ([P] for
    ``paired``: text_rows and image_rows pair by pair)."""
    if layout == "paired":
        return text_rows, image_rows
    text_index = text_rows if layout == "text_paired" else text_rows[:, None]
    image_index = {"grid": image_rows[None], "image_paired": image_rows,
                   "text_paired": image_rows[:, None]}[layout]
    return text_index, image_index


def _pair_gamma(head, t_gamma, t_mask, v_gamma, text_rows, image_rows, layout: str,
                used: int):
    """Eq. 2's γ [X, Y, R, N] of the pairs given by table rows (layouts as
    ``LocalMatching.score_prepared``; R = ``used`` word slots) and their word mask
    [X, Y, R]: one oneDNN product (grid: [X·R, H] × [H, Y·N])."""
    tg = tf.gather(t_gamma, text_rows)[..., :used, :]
    vg = tf.gather(v_gamma, image_rows)
    mask = tf.gather(t_mask, text_rows)[..., :used]
    gamma = head.pair_gamma(tg, vg, layout)
    pair_mask = mask if layout == "text_paired" else mask[:, None]
    return gamma, tf.broadcast_to(pair_mask, tf.shape(gamma)[:3])


def _traced_per_shape(fn):
    """``fn(*tensors, layout, used)`` as one ``tf.function`` per (layout, word width) the
    calls use, each traced once: the traces one function retraced for every new pair of
    values made, without TensorFlow's retracing warning for what is traced on purpose."""
    traced = {}

    def call(*args):
        *tensors, layout, used = args
        if (layout, used) not in traced:
            traced[layout, used] = tf.function(functools.partial(
                fn, layout=layout, used=used), reduce_retracing=True, autograph=False)
        return traced[layout, used](*tensors)

    call.experimental_get_tracing_count = lambda: sum(  # as a tf.function reports it
        f.experimental_get_tracing_count() for f in traced.values())
    return call


def _prepare_fn(ref, level: str, side: str):
    """``{level}_head.{side}`` (``prepare_text`` / ``prepare_image``) of the model
    ``ref()`` as one traced graph: oneDNN runs each linear map with its bias and ReLU
    fused, 6–14 % faster than eagerly at CUHK-PEDES size and the same bits. Traced once
    per input dtype and width, for rows [any, any, C'] (the chunks' counts and the texts'
    widths vary): each call of a function traced per shape would retrace, and TensorFlow
    warns about frequent retracing across the four of them (one ``lambda`` to it)."""
    fn = tf.function(lambda x: getattr(getattr(ref(), f"{level}_head"), side)(x),
                     autograph=False)
    concrete = {}

    def call(x):
        key = (x.dtype, x.shape[-1])
        if key not in concrete:
            concrete[key] = fn.get_concrete_function(tf.TensorSpec([None, None, key[1]],
                                                                   key[0]))
        return concrete[key](x)

    call.experimental_get_tracing_count = fn.experimental_get_tracing_count
    return call


def _keeps_images(words, regions):
    """Whether the C kernel keeps a pair's image turned and streams its text's rows (fewer
    word slots than regions: the phrase level), rather than keeping the text; elementwise
    for arrays of ``words``. The side with more rows fills the vector lanes best and
    leaves the fewer rows to stream (``bench/local_head_parts.py``)."""
    return words < regions


def _pair_bases(prep: dict, text_rows, image_rows, layout: str, shape) -> tuple:
    """Each pair's first row in the flattened text and image tables, [X, Y] each."""
    t_slots, regions = prep["text_np"][0].shape[1], prep["image_np"][0].shape[1]
    text_index, image_index = _pair_index(np.asarray(text_rows), np.asarray(image_rows),
                                          layout)
    return (np.broadcast_to(text_index.astype(np.int64) * t_slots, shape),
            np.broadcast_to(image_index.astype(np.int64) * regions, shape))


def _native_pairs(head, prep: dict, text_rows, image_rows, layout: str,
                  used: int) -> np.ndarray:
    """The pairs' scores [X, Y], γ included, by the C kernel straight from the prepared
    tables (``local_head_kernel.score_rows``): no pair's rows are gathered. Besides the
    layouts of ``_pair_index``, ``paired``: text_rows [P] and image_rows [P], pair by
    pair. The kernel turns once the side a run of consecutive pairs shares and streams the
    other's rows: image_paired pairs share their text, text_paired pairs their image, a
    grid's pairs are given so that they share the side ``_keeps_images`` chooses, and
    ``paired`` pairs are taken to come in runs of that side
    (``Scorer._native_scores``)."""
    text_rows, image_rows = np.asarray(text_rows), np.asarray(image_rows)
    shape = {"grid": (len(text_rows), len(image_rows)), "image_paired": image_rows.shape,
             "text_paired": text_rows.shape, "paired": text_rows.shape}[layout]
    text_base, image_base = _pair_bases(prep, text_rows, image_rows, layout, shape)
    (t_phi, t_lin), (v_phi, v_lin) = prep["text_np"], prep["image_np"]
    hidden, regions = t_phi.shape[-1], v_phi.shape[1]
    keep_images = layout == "text_paired" or (
        layout in ("grid", "paired") and _keeps_images(used, regions))
    by_image = layout == "grid" and keep_images
    if by_image:  # the grid image by image: [Y, X]
        text_base, image_base = text_base.T, image_base.T
    scores = local_head_kernel.score_rows(
        local_head_kernel.load(), (t_phi.reshape(-1, hidden), t_lin.reshape(-1, hidden)),
        prep["mask_np"].reshape(-1), (v_phi.reshape(-1, hidden), v_lin.reshape(-1, hidden)),
        text_base, image_base, used, regions, head,
        repeated="image" if keep_images else "text")
    return scores.reshape(shape[::-1]).T if by_image else scores.reshape(shape)


class Scorer:
    """Scores texts against images with a trained model's heads, chunked.

    The heads' per-item linear parts are computed once for the whole gallery and once for
    all queries; only the pair-dependent part runs per chunk.
    """

    def __init__(self, model: HGAN, memory_budget_bytes: int = 512 << 20,
                 head_kernel: str = "auto", log=None):
        """``head_kernel``: how the Gumbel heads run after γ: ``"native"``, the C kernel
        (``local_head_kernel``; an error where it cannot be built), ``"xla"``,
        ``LocalMatching.score_selected`` under XLA, or ``"auto"``, the kernel where it
        builds, else XLA. Both give the same scores to float rounding. ``log``: progress
        lines of exact mode's grids (``encode.Progress``)."""
        if head_kernel not in ("auto", "native", "xla"):
            raise ValueError(f"head_kernel must be 'auto', 'native' or 'xla', got "
                             f"{head_kernel!r}")
        self.model = model
        self.config = model.config
        self.budget = memory_budget_bytes
        self.head_kernel = head_kernel
        self.heads = {"word": model.word_head, "phrase": model.phrase_head}
        self.weights = dict(zip(("sentence", "word", "phrase"), self.config.eval.score_weights))
        self._pair_fn = {}
        self.log = log

    def levels(self) -> list[str]:
        return (["sentence"] if self.config.model.use_sentence else []) + \
            [lv for lv in LOCAL_LEVELS if self.heads[lv] is not None]

    def head_kernel_used(self) -> str:
        """``"native"`` or ``"xla"``: what the Gumbel heads run after γ."""
        if self.head_kernel == "xla":
            return "xla"
        if local_head_kernel.load() is not None:
            return "native"
        if self.head_kernel == "native":
            why = (local_head_kernel.load_error()
                   or f"turned off by {local_head_kernel.ENV}=xla")
            raise RuntimeError("head_kernel='native' but the local heads' C kernel is not "
                               f"available: {why}")
        return "xla"

    def _native(self, level: str) -> bool:
        """Whether ``level``'s head runs after γ in the C kernel: a Gumbel head whose k1 and
        k2 the kernel takes (``local_head_kernel.MAX_K``), when the kernel is in use."""
        head = self.heads[level]
        if head.attention != "gumbel" or self.head_kernel_used() != "native":
            return False
        if max(head.k1, head.k2) <= local_head_kernel.MAX_K:
            return True
        if self.head_kernel == "native":
            raise ValueError(f"head_kernel='native' takes k1, k2 ≤ {local_head_kernel.MAX_K}; "
                             f"the {level} head has k1={head.k1}, k2={head.k2}")
        return False

    def _prepared(self, texts: dict, images: dict) -> dict:
        """Per local level, the heads' per-item parts, made once, float32: text tables
        (φ_t(T), W·T) [Q, L', H] trimmed to the longest text L' (each text's slots past its
        ``_text_widths`` zero, not computed), their mask [Q, L'] (numpy,
        for chunk planning, and as a tensor), and image tables (φ_v(V), W·V) [G, N, H],
        as tensors (``text``, ``image``) sharing the buffers of the arrays (``text_np``,
        ``image_np``)."""
        prep = {}
        for level in LOCAL_LEVELS:
            head = self.heads[level]
            if head is None:
                continue
            mask = texts[f"{level}_mask"]
            used = _used_length(mask, bucket=1)
            prepare_text, prepare_image = (
                encode.compiled(self.model, f"{side}/{level}", functools.partial(
                    _prepare_fn, level=level, side=side))
                for side in ("prepare_text", "prepare_image"))
            text = _map_chunked(prepare_text, texts[level][:, :used],
                                _text_widths(mask[:, :used]))
            image = _map_chunked(prepare_image, images[level])
            prep[level] = {"text": [_shared(a) for a in text], "text_np": text,
                           "mask": mask[:, :used],
                           "mask_np": np.ascontiguousarray(mask[:, :used], np.float32),
                           "mask_t": tf.constant(mask[:, :used], tf.float32),
                           "image": [_shared(a) for a in image], "image_np": image}
        return prep

    def _chunk_fn(self, level):
        """Scores the (text, image) pairs given by table rows: ``fn(text_rows, image_rows,
        layout, used)`` → [X, Y] (layouts as ``LocalMatching.score_prepared``: grid rows
        [X] × [Y], image_paired [X] × [X, Y], text_paired [X, Y] × [X]; ``used`` word
        slots). Gumbel heads: the C kernel from the tables, γ included
        (``_native_pairs``), or γ by oneDNN (XLA's CPU batched matmul is an order slower)
        then ``score_selected`` under XLA (``head_kernel``, ``_native``); soft attention:
        the dense path."""
        if level not in self._pair_fn:
            head = self.heads[level]
            if self._native(level):
                self._pair_fn[level] = functools.partial(_native_pairs, head)
            else:
                graph_fn = encode.compiled(self.model, f"pairs/{level}",
                                           lambda ref: self._make_pair_fn(self.heads[level]))
                self._pair_fn[level] = lambda prep, *args: graph_fn(  # noqa: E731
                    *prep["text"], prep["mask_t"], *prep["image"], *args)
        return self._pair_fn[level]

    @staticmethod
    def _make_pair_fn(head):
        """The compiled pair scorer of one head (see ``_chunk_fn``), made once per model:
        γ and ``score_selected`` under XLA (Gumbel heads), the dense path (soft)."""
        compiled = tf.function(head.score_selected, jit_compile=True,
                               reduce_retracing=True, autograph=False)

        def fn(t_gamma, t_lin, t_mask, v_gamma, v_lin, text_rows, image_rows, layout,
               used):
            if head.attention != "gumbel":
                tg = tf.gather(t_gamma, text_rows)[..., :used, :]
                tl = tf.gather(t_lin, text_rows)[..., :used, :]
                mask = tf.gather(t_mask, text_rows)[..., :used]
                vg, vl = tf.gather(v_gamma, image_rows), tf.gather(v_lin, image_rows)
                return head.score_prepared((tg, tl), mask, (vg, vl), training=False,
                                           layout=layout)
            gamma, pair_mask = _pair_gamma(head, t_gamma, t_mask, v_gamma, text_rows,
                                           image_rows, layout, used)
            text_index, image_index = _pair_index(text_rows, image_rows, layout)
            return compiled(gamma, t_lin, pair_mask, text_index, v_lin, image_index)
        return _traced_per_shape(fn)

    def _pair_bytes(self, level: str, words: int, regions: int, own_rows: bool) -> int:
        """Bytes of one pair's intermediates: its γ map [R, N] a few times over (the
        product, its transpose, the selections' inputs) and, where the pair has [H]-wide
        rows of its own, the [R, H] + [N, H] rows of both directions a few times over.
        Gumbel heads have them only as gathered φ rows of a two-stage pair (``own_rows``;
        a grid block shares its texts' and images' rows, and the fused vectors of Eqs. 6–8
        stay inside the C kernel's loop or ``score_selected``'s XLA loop); soft attention
        (the dense path) writes its fused and hidden tensors in every layout."""
        k1, k2, h = self.config.model.k1, self.config.model.k2, self.config.model.mlp_hidden
        if own_rows or self.heads[level].attention != "gumbel":
            rows = words * (k2 + 3) + regions * (k1 + 3)
        else:
            rows = 0
        return 4 * (6 * words * regions + h * rows)

    def _pairs_per_chunk(self, level: str, words: int, regions: int) -> int:
        """Two-stage under XLA: (query, candidate) pairs a call scores, within the memory
        budget (at most ``CANDIDATE_PAIRS`` if set). A pair counts its [R, H] + [N, H]
        fused and hidden tensors of both directions, its gathered φ rows among them: 600,
        1,600 and 6,400 pairs a call ran within 15 % of each other in paired runs at the
        paper's widths, and 1,600 took a CUHK-PEDES-sized run past 4 GiB. (The C kernel
        holds nothing of a pair but its score: ``_native_candidates``.)"""
        per_pair = self._pair_bytes(level, words, regions, own_rows=True)
        return max(1, min(CANDIDATE_PAIRS or self.budget, self.budget // per_pair))

    def grid_block(self, level: str, texts: int, images: int, words: int,
                   regions: int) -> tuple[int, int]:
        """The (texts, images) block of ``local_grid``: ``GRID_BLOCK`` (``NATIVE_GRID_BLOCK``
        for a Gumbel head run by the C kernel) cut to the inputs and to the memory budget
        (texts kept first, images cut)."""
        block = NATIVE_GRID_BLOCK if self._native(level) else GRID_BLOCK
        tc = max(1, min(texts, self.config.eval.eval_chunk, block[0]))
        pairs = max(1, self.budget // self._pair_bytes(level, words, regions, own_rows=False))
        tc = min(tc, pairs)
        ic = max(1, min(images, block[1], pairs // tc))
        return tc, ic

    def local_grid(self, level: str, prep: dict, text_rows: np.ndarray,
                   image_cols: np.ndarray) -> np.ndarray:
        """[len(text_rows), len(image_cols)] scores of one local level, block by block:
        a block of texts (sorted by length, so it drops the padding its rows share)
        against a block of images is one call (under XLA: one γ product, then one
        compiled call)."""
        fn, t_mask = self._chunk_fn(level), prep["mask"]
        tc, ic = self.grid_block(level, len(text_rows), len(image_cols), t_mask.shape[1],
                                 prep["image"][0].shape[1])
        out = np.zeros((len(text_rows), len(image_cols)), np.float32)
        order = np.argsort(t_mask[text_rows].sum(axis=1), kind="stable")
        progress = encode.Progress(self.log, f"scoring every pair at the {level} level",
                                   len(text_rows) * len(image_cols), " pairs")
        for a in range(0, len(text_rows), tc):
            at = order[a:a + tc]
            rows = _pad_index(text_rows[at], tc)
            used = _used_length(t_mask[rows])
            for b in range(0, len(image_cols), ic):
                cols = _pad_index(image_cols[b:b + ic], ic)
                scores = np.asarray(fn(prep, rows, cols, "grid", used))
                out[at, b:b + ic] = scores[:len(at), :min(ic, len(image_cols) - b)]
                progress.add(len(at) * min(ic, len(image_cols) - b))
        progress.end()
        return out

    def local_candidates(self, level: str, prep: dict, top: np.ndarray,
                         direction: str) -> np.ndarray:
        """Scores of each query with its own candidates only, [Q, K]: query q's row holds
        S(q, top[q, j]) (t2i: q a text, candidates images; i2t the other way round). A
        chunk of queries is one call: the C kernel reads each candidate's rows in place;
        under XLA, one batched γ product, [R, H] × [H, K·N] per text query (t2i),
        [K·R, H] × [H, N] per image query (i2t)."""
        if self._native(level):
            return self._native_candidates(level, prep, top, direction)
        fn, t_mask = self._chunk_fn(level), prep["mask"]
        layout = "image_paired" if direction == "t2i" else "text_paired"
        q_chunk = max(1, self._pairs_per_chunk(level, t_mask.shape[1],
                                               prep["image"][0].shape[1]) // top.shape[1])
        q_chunk = min(q_chunk, len(top))
        out = np.zeros(top.shape, np.float32)
        lengths = t_mask.sum(axis=1)
        # Queries sorted by the length of their texts, so each chunk drops shared padding.
        key = lengths if direction == "t2i" else lengths[top].max(axis=1)
        order = np.argsort(key, kind="stable")
        for a in range(0, len(top), q_chunk):
            kept = order[a:a + q_chunk]
            rows = _pad_index(kept, q_chunk)
            cand = top[rows]
            if direction == "t2i":
                scores = fn(prep, rows, cand, layout, _used_length(t_mask[rows]))
            else:
                scores = fn(prep, cand, rows, layout, _used_length(t_mask[cand]))
            out[kept] = np.asarray(scores)[:len(kept)]
        return out

    def _native_candidates(self, level: str, prep: dict, top: np.ndarray,
                           direction: str) -> np.ndarray:
        """``local_candidates`` by the C kernel (``_native_scores`` of the direction's
        (query, candidate) pairs)."""
        queries = np.repeat(np.arange(len(top)), top.shape[1])
        texts, images = ((queries, top.ravel()) if direction == "t2i"
                         else (top.ravel(), queries))
        return self._native_scores(level, prep, texts, images).reshape(top.shape)

    def _native_scores(self, level: str, prep: dict, texts: np.ndarray,
                       images: np.ndarray) -> np.ndarray:
        """Scores of the (text, image) pairs ``texts[p], images[p]`` [P] by the C kernel,
        grouped by the width of their text (its word slots up to the last real one,
        rounded up to 8, so a call drops the padding its texts share), and within a width
        by the side with more rows (its text, or its image when the regions outnumber the
        words: the phrase level): the kernel turns that side once for the run of pairs
        that share it and streams the other's fewer rows. Calls of at most
        ``NATIVE_PAIRS`` pairs. A pair's score does not depend on the others given with
        it."""
        fn, t_mask = self._chunk_fn(level), prep["mask"]
        width = _text_widths(t_mask)[texts]
        by_image = _keeps_images(width, prep["image_np"][0].shape[1])
        order = np.lexsort((np.where(by_image, images, texts), width))
        out = np.zeros(len(texts), np.float32)
        starts = np.flatnonzero(np.diff(width[order], prepend=-1, append=-1))
        for first, end in zip(starts[:-1], starts[1:]):
            for a in range(first, end, NATIVE_PAIRS):
                pairs = order[a:min(end, a + NATIVE_PAIRS)]
                out[pairs] = np.asarray(fn(prep, texts[pairs], images[pairs], "paired",
                                           int(width[pairs[0]])))
        return out

    def sentence(self, texts: dict, images: dict) -> np.ndarray:
        t = texts["global"] / np.linalg.norm(texts["global"], axis=1, keepdims=True)
        v = images["global"] / np.linalg.norm(images["global"], axis=1, keepdims=True)
        return t @ v.T

    def exact(self, texts: dict, images: dict, prep=None) -> dict:
        """Every pair, every level → {level: [Q, G], "total": weighted sum}. ``prep``: the
        heads' tables of these texts and images (``_prepared``), made here if None."""
        out = {}
        if self.config.model.use_sentence:
            out["sentence"] = self.sentence(texts, images)
        prep = prep if prep is not None else self._prepared(texts, images)
        rows, cols = np.arange(len(texts["label"])), np.arange(len(images["label"]))
        for level in prep:
            out[level] = self.local_grid(level, prep[level], rows, cols)
        out["total"] = sum(self.weights[k] * v for k, v in out.items())
        return out

    def _stage1(self, texts: dict, images: dict, k: int, direction: str, sentence=None):
        """Stage 1 of a direction: (its [Q, G] sentence scores, [G, Q] for i2t, contiguous;
        each query's top ``k`` columns [Q, k], in no order). ``sentence``: the texts'
        [Q, G] sentence scores (``sentence``), computed here if None."""
        if not self.config.model.use_sentence:
            raise ValueError("two-stage retrieval needs the sentence level (use_sentence)")
        stage1 = self.sentence(texts, images) if sentence is None else sentence
        if direction == "i2t":  # [G, Q], contiguous: its rows are ranked and merged
            turned = buffers.empty(stage1.shape[::-1], stage1.dtype)
            turned[...] = stage1.T
            stage1 = turned
        return stage1, rerank.top_k_unordered(stage1, min(k, stage1.shape[1]))

    def _merged(self, stage1: np.ndarray, top: np.ndarray, local: dict) -> np.ndarray:
        """The two-stage [Q, G] matrix from stage 1, its top [Q, k] and each local level's
        scores of those candidates ``local`` {level: [Q, k]}: the weighted sum, summed
        in float64 in the order of ``levels``."""
        top_scores = self.weights["sentence"] * np.take_along_axis(stage1, top, 1)
        top_scores = top_scores.astype(np.float64)
        for level, scores in local.items():
            top_scores += self.weights[level] * scores
        return rerank.merge(stage1, top, top_scores)

    def two_stage(self, texts: dict, images: dict, k: int, direction: str = "t2i",
                  prep=None) -> np.ndarray:
        """Stage-1 sentence ranking, stage-2 local re-ranking of the top ``k`` per query.

        Only the Q·k (query, candidate) pairs are scored by the local heads. Returns a
        [Q, G] (t2i) or [G, Q] (i2t) float64 matrix whose row order is the final ranking:
        the top-k carry their combined score, above every other item, which keep their
        stage-1 scores and order.
        """
        stage1, top = self._stage1(texts, images, k, direction)
        prep = prep if prep is not None else self._prepared(texts, images)
        return self._merged(stage1, top, {
            level: self.local_candidates(level, prep[level], top, direction)
            for level in prep})

    def two_stage_both(self, texts: dict, images: dict, k: int, prep=None):
        """(t2i, i2t) two-stage matrices, the same as ``two_stage`` of each direction,
        preparing the heads' inputs once. Where every local level runs in the C kernel,
        a (text, image) pair among both directions' candidates (a text's near images are
        mostly images whose near texts include it) is scored once: the union of the
        directions' pairs is scored, then each direction reads its own."""
        prep = prep if prep is not None else self._prepared(texts, images)
        if not all(self._native(level) for level in prep):
            return (self.two_stage(texts, images, k, "t2i", prep),
                    self.two_stage(texts, images, k, "i2t", prep))
        stage1_t, top_t = self._stage1(texts, images, k, "t2i")
        stage1_i, top_i = self._stage1(texts, images, k, "i2t", stage1_t)
        gallery = len(images["label"])
        keys = np.concatenate([  # text · G + image, in int64 whatever NumPy's default
            (np.arange(len(top_t), dtype=np.int64)[:, None] * gallery + top_t).ravel(),
            (top_i.astype(np.int64) * gallery + np.arange(len(top_i))[:, None]).ravel()])
        pairs, where = np.unique(keys, return_inverse=True)
        local_t, local_i = {}, {}
        for level in prep:
            scores = self._native_scores(level, prep[level], pairs // gallery,
                                         pairs % gallery)[where]
            local_t[level] = scores[:top_t.size].reshape(top_t.shape)
            local_i[level] = scores[top_t.size:].reshape(top_i.shape)
        t2i = self._merged(stage1_t, top_t, local_t)
        del stage1_t  # i2t's stage 1 is its own turned copy: one [Q, G] less at the peak
        return t2i, self._merged(stage1_i, top_i, local_i)


def evaluate(model: HGAN, data_dir: str, config: Config, split: str,
             modes=("exact", "two_stage"), rerank_k=None, log=None) -> dict:
    """The full report: {"t2i", "i2t", "timing", ...} per mode, plus, from the exact mode,
    the arrays the figures and the page read under ``"_arrays"`` (the fused matrix, the
    features, and each level's [Q, G] scores under ``"levels"``)."""
    modes = tuple(modes)
    unknown = [mode for mode in modes if mode not in ("exact", "two_stage")]
    if unknown:
        raise ValueError(f"unknown mode {unknown[0]!r}")
    manifest = pipeline.load_manifest(data_dir)
    class_level = manifest.get("dataset") in metrics.CLASS_LEVEL_DATASETS
    t0 = time.time()
    texts, images = encode_split(model, data_dir, config, split, log=log)
    encode_s = time.time() - t0
    scorer = Scorer(model, log=log)
    report = {"split": split, "queries": int(len(texts["label"])),
              "gallery": int(len(images["label"])), "timing": {"encode_s": encode_s},
              "levels": scorer.levels()}
    k = metrics.rerank_depth(rerank_k or config.eval.rerank_k, class_level)
    report["candidates"] = int(k)
    # The heads' tables, made once for every mode (timed with the first).
    prep = None
    for mode in modes:
        t0 = time.time()
        if prep is None:
            prep = scorer._prepared(texts, images)
        if mode == "exact":
            per_level = scorer.exact(texts, images, prep)
            t2i = per_level.pop("total")
            i2t = t2i.T
        else:
            t2i, i2t = scorer.two_stage_both(texts, images, k, prep)
        if mode == modes[-1]:
            prep = None  # the tables are not kept through the metrics
        report["timing"][f"{mode}_s"] = time.time() - t0
        if log is not None:
            log(f"scored {mode}: {report['timing'][f'{mode}_s']:.1f} s")
        # AP@50 is rank-based (both modes); the class-level metrics fuse raw scores, so
        # they are read off the exact matrix only.
        report[mode] = metrics.both_directions(t2i, i2t, texts["label"], images["label"],
                                               ap50=class_level,
                                               class_r1=class_level and mode == "exact")
        if mode == "exact":
            # Each level ranked alone: which of sentence / word / phrase has learned.
            report["levels_exact"] = {
                level: metrics.both_directions(m, m.T, texts["label"], images["label"])
                for level, m in per_level.items()}
            report["_arrays"] = {"t2i": t2i, "texts": texts, "images": images,
                                 "levels": per_level}
    return report
