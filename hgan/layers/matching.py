"""Matching heads: local (word / phrase) Gumbel attention matching and sentence matching.

Every head scores all (text, image) pairs of its inputs at once: texts [Bt, ...] against
images [Bi, ...] give a score matrix [Bt, Bi]; there is no Python loop over pairs. The
linear parts of the MLPs of Eqs. 2 and 8 are applied once per text and once per image
(``prepare_text`` / ``prepare_image``), outside the pair dimension, so a gallery can be
prepared once and scored in chunks.
"""
from __future__ import annotations

from hgan.layers.gumbel_topk import GumbelTopK, top_k_rounds
from hgan.tf_compat import keras, tf


def _weights_over_selection(selection, scores, mask):
    """Eq. 7's softmax(α ⊙ γ) restricted to the selected positions.

    w_j = α_j e^{γ_j} / Σ_l α_l e^{γ_l}: a softmax over the k selected keys. Written with α as
    a factor (not as a mask) so the straight-through gradient of α reaches the scores.

    The exponent is shifted by the largest *selected* γ, so the largest term is exactly
    α·1 and the sum is at least 1. (Shifting by the row's maximum, as before, underflowed
    whenever the Gumbel noise picked keys far below it, which at training time is most of
    the time: the sum fell to the 1e-9 guard, the weights to ~0 and their gradient to
    ~1e9, and every compact-CNN demo run collapsed after 100–180 steps.)

    Computed in float32 whatever the inputs' dtype, as Keras's mixed-precision guide keeps
    softmaxes: in float16 the -1e9 of a padded key is -inf, and a row with no selected key
    (a padded word or phrase) gave -inf - (-inf) = NaN, a non-finite loss.
    """
    dtype = scores.dtype
    scores, selection = tf.cast(scores, tf.float32), tf.cast(selection, tf.float32)
    scores = tf.where(mask, scores, -1e9)
    picked = tf.logical_and(tf.stop_gradient(selection) > 0.5, mask)
    top = tf.reduce_max(tf.where(picked, scores, -1e9), axis=-1, keepdims=True)
    shifted = tf.minimum(scores - tf.stop_gradient(top), 0.0)  # unselected terms: × α = 0
    numerator = selection * tf.exp(shifted) * tf.cast(mask, scores.dtype)
    weights = numerator / (tf.reduce_sum(numerator, axis=-1, keepdims=True) + 1e-9)
    return tf.cast(weights, dtype)


# Einsum operands of the three pair layouts of ``LocalMatching.score_prepared`` (x: rows of
# the output, y: its columns). The dense path never transposes an [.., H]-wide pair tensor
# (the bulk of an evaluation's memory traffic): image-to-text products are [X, Y, N, H],
# with the images' linear parts broadcast by ``v_b``; text-to-image products are laid out
# ``t2i`` (grid: [Y, X, R, H], one batched matmul per image), the texts' linear parts
# broadcast by ``t_b``, and ``t2i_back`` brings the small [.., R] scores to [X, Y, R].
_LAYOUTS = {
    "grid": {"t": "xrh", "v": "ynh", "v_b": lambda v: v[None], "t2i": "yxrh",
             "t_b": lambda t: t[None], "t2i_back": lambda s: tf.transpose(s, [1, 0, 2])},
    "image_paired": {"t": "xrh", "v": "xynh", "v_b": lambda v: v, "t2i": "xyrh",
                     "t_b": lambda t: t[:, None], "t2i_back": lambda s: s},
    "text_paired": {"t": "xyrh", "v": "xnh", "v_b": lambda v: v[:, None], "t2i": "xyrh",
                    "t_b": lambda t: t, "t2i_back": lambda s: s},
}


@keras.utils.register_keras_serializable(package="hgan")
class LocalMatching(keras.layers.Layer):
    """Word- or phrase-level matching of HGAN (§3.3, Eqs. 2–8).

    Inputs: texts T [Bt, R, C'] with mask [Bt, R] (words or noun phrases) and images
    V [Bi, N, C'] (partition regions). Output: S(V, T) as a [Bt, Bi] matrix in (0, 1).

    * Eq. 2, γ = MLP(T, V): a two-tower MLP, γ_rn = φ_t(t_r)·φ_v(v_n)/√H, [Bt, Bi, R, N].
    * image-to-text: each region n selects k1 words, α = GumbelTopK(γ_:n) (Alg. 1 l. 6–12,
      Eq. 5); the selected words are fused, t^f_n = softmax(α ⊙ γ) T (Eqs. 6–7); then
      s_i2t = 1/N Σ_n σ(MLP(v_n + t^f_n)) (Eq. 8).
    * text-to-image: each word r selects k2 regions, β = GumbelTopK(γ_r:); symmetrically
      s_t2i = mean over valid words of σ(MLP(t_r + v^f_r)).
    * S = (s_i2t + s_t2i) / 2.

    ``attention="soft"`` is "HGAN w/o Gumbel" (Table 5): every key attended, Eqs. 3–4, with
    the same MLP scorer; k1 = k2 = 1 is "HGAN w Max Gumbel".

    The MLP of Eq. 8 is Dense(H)–ReLU–Dense(1) on v + t^f. Its first layer is linear, so
    W(v + t^f) = Wv + Σ_j w_j (W t_j): ``prepare_*`` computes Wv and Wt once per item.

    Images may also come as rows y [Bi, N, P] of a linear image of V, V = y·A (A [P, C'];
    a gallery's product-quantised tables decoded before their rotation R, A = R[:, :C']):
    both image-side layers start with a linear map, so V·W = y·(A·W), and ``fold(A)`` →
    (A·W_φ, A·W) [P, H] each lets ``call((text, mask, y, A·W_φ, A·W))`` score them without
    forming V, the same S(V, T) to float rounding.
    """

    def __init__(self, hidden: int, k1: int = 4, k2: int = 2, temperature: float = 1.0,
                 attention: str = "gumbel", gumbel_scale: float = 1.0,
                 gumbel_norm_epsilon: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        if attention not in ("gumbel", "soft"):
            raise ValueError(f"attention must be 'gumbel' or 'soft', got {attention!r}")
        self.hidden, self.k1, self.k2 = int(hidden), int(k1), int(k2)
        self.temperature, self.attention = float(temperature), attention
        self.gumbel_scale = float(gumbel_scale)
        self.gumbel_norm_epsilon = float(gumbel_norm_epsilon)
        self.text_tower = keras.Sequential(
            [keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(hidden)],
            name="gamma_text")
        self.image_tower = keras.Sequential(
            [keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(hidden)],
            name="gamma_image")
        self.fuse_in = keras.layers.Dense(hidden, use_bias=False, name="score_in")
        self.fuse_out = keras.layers.Dense(1, name="score_out")
        gumbel = dict(temperature=temperature, scale=gumbel_scale,
                      norm_epsilon=gumbel_norm_epsilon)
        self.select_words = GumbelTopK(k1, name="select_words", **gumbel)
        self.select_regions = GumbelTopK(k2, name="select_regions", **gumbel)

    def build(self, input_shape):
        dim = input_shape[0][-1]
        self.text_tower.build([None, None, dim])
        self.image_tower.build([None, None, dim])
        self.fuse_in.build([None, dim])
        self.fuse_out.build([None, self.hidden])
        self.fuse_bias = self.add_weight(name="score_in_bias", shape=[self.hidden],
                                         initializer="zeros")
        super().build(input_shape)

    def prepare_text(self, text):
        """[B, R, C'] → (φ_t(T), W·T), each [B, R, H]."""
        return self.text_tower(text), self.fuse_in(text)

    def prepare_image(self, image):
        """[B, N, C'] → (φ_v(V), W·V), each [B, N, H]."""
        return self.image_tower(image), self.fuse_in(image)

    def fold(self, linear):
        """The image side's first linear maps after ``linear`` A [P, C'] → (A·W_φ, A·W),
        each [P, H] float32: ``prepare_image`` of V = y·A is ``prepare_folded`` of y."""
        linear = tf.cast(linear, tf.float32)
        return tuple(tf.matmul(linear, tf.cast(kernel, tf.float32))
                     for kernel in (self.image_tower.layers[0].kernel, self.fuse_in.kernel))

    def prepare_folded(self, rows, gamma_kernel, fuse_kernel):
        """``prepare_image`` of V = y·A from y [B, N, P] and ``fold(A)``'s kernels:
        (φ_v(V), W·V), each [B, N, H]. Call it inside the layer's ``call`` (Keras casts
        the variables to the compute dtype there)."""
        first, second = self.image_tower.layers
        hidden = first.activation(tf.einsum("bnp,ph->bnh", rows, gamma_kernel) + first.bias)
        return second(hidden), tf.einsum("bnp,ph->bnh", rows, fuse_kernel)

    def call(self, inputs, training=None):
        """(T, mask, V) → S(V, T) [Bt, Bi]; (T, mask, y, A·W_φ, A·W) scores V = y·A
        (``fold``)."""
        text, text_mask, image, *folded = inputs
        text_prep = self.prepare_text(text)  # first: the graph's op order seeds the noise
        image_prep = (self.prepare_folded(image, *folded) if folded
                      else self.prepare_image(image))
        return self.score_prepared(text_prep, text_mask, image_prep, training=training)

    def score_prepared(self, text_prep, text_mask, image_prep, training=None,
                       layout: str = "grid"):
        """Scores from ``prepare_*`` outputs. ``layout`` says which pairs:

        * ``grid``: texts [X, R, H] × images [Y, N, H] → every pair, [X, Y];
        * ``image_paired``: texts [X, R, H], images [X, Y, N, H] (Y candidates per text);
        * ``text_paired``: texts [X, Y, R, H] with mask [X, Y, R], images [X, N, H] (Y
          candidate texts per image). Output [X, Y] in every layout.
        """
        spec = _LAYOUTS[layout]
        (t_gamma, t_lin), (v_gamma, v_lin) = text_prep, image_prep
        mask = _pair_mask(text_mask, layout)
        gamma = self.pair_gamma(t_gamma, v_gamma, layout)  # γ [X, Y, R, N] (Eq. 2)
        word_mask = tf.broadcast_to(mask[..., None], tf.shape(gamma))

        # Image-to-text: each region n selects k1 words (Alg. 1 l. 6–12, Eqs. 5–7).
        gamma_nr = tf.transpose(gamma, [0, 1, 3, 2])
        mask_nr = tf.transpose(word_mask, [0, 1, 3, 2])
        alpha = self._select(self.select_words, gamma_nr, mask_nr, training)
        w_words = _weights_over_selection(alpha, gamma_nr, mask_nr)
        fused_text = tf.einsum(f"xynr,{spec['t']}->xynh", w_words, t_lin)  # W t^f_n
        # The bias joins the smaller per-item operand, not the [X, Y, ., H] pair tensor.
        hidden = tf.nn.relu(spec["v_b"](v_lin + self.fuse_bias) + fused_text)
        per_region = tf.sigmoid(tf.squeeze(self.fuse_out(hidden), -1))  # [X, Y, N]
        s_i2t = tf.reduce_mean(per_region, axis=-1)  # Eq. 8

        # Text-to-image: each word r selects k2 regions.
        region_mask = tf.ones_like(word_mask)
        beta = self._select(self.select_regions, gamma, region_mask, training)
        w_regions = _weights_over_selection(beta, gamma, region_mask)
        fused_image = tf.einsum(f"xyrn,{spec['v']}->{spec['t2i']}", w_regions, v_lin)
        hidden = tf.nn.relu(spec["t_b"](t_lin + self.fuse_bias) + fused_image)
        per_word = spec["t2i_back"](tf.sigmoid(tf.squeeze(self.fuse_out(hidden), -1)))
        valid = tf.cast(mask, per_word.dtype)
        s_t2i = tf.reduce_sum(per_word * valid, -1) / tf.maximum(tf.reduce_sum(valid, -1), 1.0)
        return 0.5 * (s_i2t + s_t2i)

    def pair_gamma(self, t_gamma, v_gamma, layout: str = "grid"):
        """Eq. 2's γ [X, Y, R, N] of every pair of a layout, from ``prepare_*``'s φ parts."""
        spec = _LAYOUTS[layout]
        return tf.einsum(f"{spec['t']},{spec['v']}->xyrn", t_gamma, v_gamma) * (
            self.hidden ** -0.5)

    def score_selected(self, gamma, text_table, text_mask, text_index, image_table,
                       image_index):
        """Inference-only twin of ``score_prepared(..., training=False)``: the same S(V, T)
        (Gumbel attention only), for XLA: call it under ``tf.function(jit_compile=True)``
        (without XLA the dense path is faster) with γ computed outside by ``pair_gamma``
        (oneDNN's batched matmul is far faster on CPU than XLA's).

        Args:
          gamma: [X, Y, R, N], γ of pair (x, y) = text ``text_index[x, y]`` with image
            ``image_index[x, y]``.
          text_table: [T, R', H] the texts' W·t (``prepare_text``'s second part), R' ≥ R;
            text_mask [X, Y, R] the pairs' word masks.
          image_table: [I, N, H] the images' W·v.
          text_index, image_index: int [X, Y] (or broadcastable) rows of the tables.
        Returns [X, Y].

        Without Gumbel noise, α is the top-k of γ (Algorithm 1's l2 normalisation keeps each
        row's order) and Eq. 7 a softmax over the k selected γ, so each fused vector is a
        k-term sum of rows gathered straight from the tables: k1·N·H + k2·R·H multiply-adds
        per pair instead of two R·N·H products, and XLA fuses the gathers, the sum, the ReLU
        and Eq. 8's output layer into one loop, so no [.., H]-wide pair tensor is written.
        """
        if self.attention != "gumbel":
            raise ValueError("score_selected needs attention='gumbel'")
        t2i, i2t = self.top_k_selected(gamma, text_mask)
        return self.score_from_selected(t2i, i2t, text_table, text_mask, text_index,
                                        image_table, image_index)

    def score_from_selected(self, t2i, i2t, text_table, text_mask, text_index, image_table,
                            image_index):
        """``score_selected`` from selections made already (``top_k_selected``'s, or the
        same made elsewhere, e.g. by a hand-written kernel): ``t2i`` =
        (weights [X, Y, R, k2], a list of k2 region index tensors [X, Y, R]), ``i2t`` =
        (weights [X, Y, N, k1], k1 word index tensors [X, Y, N]); the other arguments as
        there."""
        (w_t2i, picks_t2i), (w_i2t, picks_i2t) = t2i, i2t
        pairs, words, regions = tf.shape(w_t2i)[:2], tf.shape(w_t2i)[2], tf.shape(w_i2t)[2]
        mask = tf.cast(text_mask, tf.bool)
        slots_t, slots_v = tf.shape(text_table)[1], tf.shape(image_table)[1]
        # Row offsets of each pair's words / regions in the tables flattened to [-1, H].
        t_base = (tf.broadcast_to(tf.cast(text_index, tf.int32), pairs) * slots_t)[..., None]
        v_base = (tf.broadcast_to(tf.cast(image_index, tf.int32), pairs) * slots_v)[..., None]
        t_rows = tf.reshape(text_table, [-1, tf.shape(text_table)[-1]])
        v_rows = tf.reshape(image_table, [-1, tf.shape(image_table)[-1]])
        w_out, b_out = self.fuse_out.kernel[:, 0], self.fuse_out.bias[0]
        # Text-to-image: word r (its W·t + b) with its k2 fused regions.
        own = tf.gather(t_rows, t_base + tf.range(words))
        fused = _fuse_rows(w_t2i, picks_t2i, v_rows, v_base)
        hidden = tf.nn.relu(own + fused + self.fuse_bias)
        per_word = tf.sigmoid(tf.einsum("xyrh,h->xyr", hidden, w_out) + b_out)
        valid = tf.cast(mask, per_word.dtype)
        s_t2i = tf.reduce_sum(per_word * valid, -1) / tf.maximum(tf.reduce_sum(valid, -1), 1.0)
        # Image-to-text: region n with its k1 fused words (Eqs. 5–7), scored by Eq. 8.
        own = tf.gather(v_rows, v_base + tf.range(regions))
        fused = _fuse_rows(w_i2t, picks_i2t, t_rows, t_base)
        hidden = tf.nn.relu(own + fused + self.fuse_bias)
        per_region = tf.sigmoid(tf.einsum("xynh,h->xyn", hidden, w_out) + b_out)
        return 0.5 * (tf.reduce_mean(per_region, axis=-1) + s_t2i)

    def top_k_selected(self, gamma, text_mask):
        """Inference-time Eqs. 5 and 7 on γ [X, Y, R, N] with the word mask [X, Y, R] →
        ((weights [X, Y, R, k2], k2 region indices [X, Y, R]) of text-to-image, (weights
        [X, Y, N, k1], k1 word indices [X, Y, N]) of image-to-text): each row's top-k keys
        and the softmax of their γ (padded words never picked; a region of a text without
        words weighs nothing)."""
        words = _words_by_region(gamma, tf.cast(text_mask, tf.bool))
        return _top_k_softmax(gamma, self.k2), _top_k_softmax(words, self.k1)

    def _select(self, layer, scores, mask, training):
        if self.attention == "soft":
            return tf.cast(mask, scores.dtype)
        return layer(scores, mask=mask, training=training)

    def selections(self, text, text_mask, image, paired: bool = False):
        """Inference-time image-to-text selections α [Bt, Bi, N, R] and their Eq. 7
        weights, for the Fig. 4 visualisation. ``paired``: text i with image i only (Bt =
        Bi = B), α [B, 1, N, R]."""
        t_gamma, _ = self.prepare_text(text)
        v_gamma, _ = self.prepare_image(image)
        if paired:
            gamma = tf.einsum("trh,tnh->trn", t_gamma, v_gamma)[:, None]
        else:
            gamma = tf.einsum("trh,inh->tirn", t_gamma, v_gamma)
        gamma = gamma * (self.hidden ** -0.5)
        gamma_nr = tf.transpose(gamma, [0, 1, 3, 2])
        mask_nr = tf.broadcast_to(tf.cast(text_mask, tf.bool)[:, None, None, :],
                                  tf.shape(gamma_nr))
        alpha = self._select(self.select_words, gamma_nr, mask_nr, False)
        return alpha, _weights_over_selection(alpha, gamma_nr, mask_nr)

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden, "k1": self.k1, "k2": self.k2,
                "temperature": self.temperature, "attention": self.attention,
                "gumbel_scale": self.gumbel_scale,
                "gumbel_norm_epsilon": self.gumbel_norm_epsilon}


_MASKED = -1e9  # score of a padded key; below any real γ


def _pair_mask(text_mask, layout: str):
    """The word mask broadcastable to [X, Y, R]."""
    mask = tf.cast(text_mask, tf.bool)
    return mask if layout == "text_paired" else mask[:, None, :]


def _words_by_region(gamma, mask):
    """γ [X, Y, R, N] as each region's scores of the words, [X, Y, N, R], padded words
    (``mask`` [X, Y, R] false) at ``_MASKED``."""
    return tf.transpose(tf.where(mask[..., None], gamma, _MASKED), [0, 1, 3, 2])


def _top_k_softmax(scores, k: int):
    """Each row's top-k of ``scores`` [X, Y, A, n] (padded keys at ``_MASKED``) → (softmax
    of the k values [X, Y, A, k], k index tensors [X, Y, A]). Ties pick the lower index,
    as ``tf.math.top_k``; a row with fewer than k real keys weighs only those, one with
    none weighs nothing."""
    values, picks = top_k_rounds(scores, min(k, scores.shape[-1] or k))
    values = tf.stack(values, axis=-1)
    real = values > _MASKED / 2
    weights = tf.nn.softmax(tf.where(real, values, _MASKED), axis=-1)
    return weights * tf.cast(real, weights.dtype), picks


def _fuse_rows(weights, picks, rows, base):
    """Σ_j weights[..., j] · rows[base + picks[j]]: ``rows`` [-1, H] holds the keys,
    ``base`` [X, Y, 1] the offset of each pair's first key → [X, Y, A, H] (Eq. 7);
    ``picks``: k index tensors [X, Y, A]."""
    fused = 0.0
    for j, index in enumerate(picks):
        fused += weights[..., j:j + 1] * tf.gather(rows, base + index)
    return fused


def cosine_scores(text, image):
    """Sentence level: cosine similarity of every text [Bt, D] with every image [Bi, D]."""
    return tf.matmul(tf.math.l2_normalize(text, -1), tf.math.l2_normalize(image, -1),
                     transpose_b=True)
