"""Matching heads: local (word / phrase) Gumbel attention matching and sentence matching.

Every head scores all (text, image) pairs of its inputs at once: texts [Bt, ...] against
images [Bi, ...] give a score matrix [Bt, Bi]; there is no Python loop over pairs. The
linear parts of the MLPs of Eqs. 2 and 8 are applied once per text and once per image
(``prepare_text`` / ``prepare_image``), outside the pair dimension, so a gallery can be
prepared once and scored in chunks.
"""
from __future__ import annotations

from hgan.layers.gumbel_topk import GumbelTopK
from hgan.tf_compat import keras, tf


def _weights_over_selection(selection, scores, mask):
    """Eq. 7's softmax(α ⊙ γ) restricted to the selected positions.

    w_j = α_j e^{γ_j} / Σ_l α_l e^{γ_l}: a softmax over the k selected keys. Written with α as
    a factor (not as a mask) so the straight-through gradient of α reaches the scores.
    """
    scores = tf.where(mask, scores, -1e9)
    shifted = scores - tf.stop_gradient(tf.reduce_max(scores, axis=-1, keepdims=True))
    numerator = selection * tf.exp(shifted) * tf.cast(mask, scores.dtype)
    return numerator / (tf.reduce_sum(numerator, axis=-1, keepdims=True) + 1e-9)


def _fuse_top_k(scores, mask, keys, k, keys_of):
    """Inference form of Eqs. 5–7: Σ over the k best keys of softmax(γ_selected)·key.

    Equal to the dense form with a noise-free k-hot selection (GumbelTopK's l2 normalisation
    rescales a row, which keeps its top k), but gathers k keys instead of weighting all K.

    Args:
      scores: [Bt, Bi, Q, K] γ of each query position over the K keys; mask: same, bool.
      keys: the keys' linear parts, [Bt, K, H] (keys_of="text") or [Bi, K, H] ("image").
    Returns: [Bt, Bi, Q, H].
    """
    masked = tf.where(mask, scores, -1e9)
    top, index = tf.math.top_k(masked, k=tf.minimum(k, tf.shape(scores)[-1]))
    weights = tf.nn.softmax(top, axis=-1)  # padded picks (k > valid) get exp(-1e9) = 0
    bt, bi, q, kk = tf.unstack(tf.shape(index))
    if keys_of == "text":
        flat = tf.reshape(index, [bt, bi * q * kk])
        picked = tf.reshape(tf.gather(keys, flat, batch_dims=1), [bt, bi, q, kk, -1])
    else:
        flat = tf.reshape(tf.transpose(index, [1, 0, 2, 3]), [bi, bt * q * kk])
        picked = tf.reshape(tf.gather(keys, flat, batch_dims=1), [bi, bt, q, kk, -1])
        picked = tf.transpose(picked, [1, 0, 2, 3, 4])
    return tf.einsum("tiqk,tiqkh->tiqh", weights, picked)


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
    """

    def __init__(self, hidden: int, k1: int = 4, k2: int = 2, temperature: float = 1.0,
                 attention: str = "gumbel", **kwargs):
        super().__init__(**kwargs)
        if attention not in ("gumbel", "soft"):
            raise ValueError(f"attention must be 'gumbel' or 'soft', got {attention!r}")
        self.hidden, self.k1, self.k2 = int(hidden), int(k1), int(k2)
        self.temperature, self.attention = float(temperature), attention
        self.text_tower = keras.Sequential(
            [keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(hidden)],
            name="gamma_text")
        self.image_tower = keras.Sequential(
            [keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(hidden)],
            name="gamma_image")
        self.fuse_in = keras.layers.Dense(hidden, use_bias=False, name="score_in")
        self.fuse_out = keras.layers.Dense(1, name="score_out")
        self.select_words = GumbelTopK(k1, temperature, name="select_words")
        self.select_regions = GumbelTopK(k2, temperature, name="select_regions")

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

    def call(self, inputs, training=None):
        text, text_mask, image = inputs
        return self.score_prepared(self.prepare_text(text), text_mask,
                                   self.prepare_image(image), training=training)

    def score_prepared(self, text_prep, text_mask, image_prep, training=None):
        """Scores every text with every image from ``prepare_*`` outputs → [Bt, Bi]."""
        t_gamma, t_lin = text_prep
        v_gamma, v_lin = image_prep
        text_mask = tf.cast(text_mask, tf.bool)
        # γ [Bt, Bi, R, N] (Eq. 2).
        gamma = tf.einsum("trh,inh->tirn", t_gamma, v_gamma) * (self.hidden ** -0.5)
        word_mask = tf.broadcast_to(text_mask[:, None, :, None], tf.shape(gamma))
        region_mask = tf.ones_like(word_mask)

        # Image-to-text: per region, choose words. [Bt, Bi, N, R]
        gamma_nr = tf.transpose(gamma, [0, 1, 3, 2])
        mask_nr = tf.transpose(word_mask, [0, 1, 3, 2])
        sparse = self.attention == "gumbel" and not training
        if sparse:  # inference: no noise, so gather the k selected keys (same values)
            fused_text = _fuse_top_k(gamma_nr, mask_nr, t_lin, self.k1, keys_of="text")
        else:
            alpha = self._select(self.select_words, gamma_nr, mask_nr, training)
            w_words = _weights_over_selection(alpha, gamma_nr, mask_nr)
            fused_text = tf.einsum("tinr,trh->tinh", w_words, t_lin)  # W t^f_n (Eq. 7)
        hidden = tf.nn.relu(v_lin[None] + fused_text + self.fuse_bias)
        per_region = tf.sigmoid(tf.squeeze(self.fuse_out(hidden), -1))  # [Bt, Bi, N]
        s_i2t = tf.reduce_mean(per_region, axis=-1)  # Eq. 8

        # Text-to-image: per word, choose regions. [Bt, Bi, R, N]
        if sparse:
            fused_image = _fuse_top_k(gamma, region_mask, v_lin, self.k2, keys_of="image")
        else:
            beta = self._select(self.select_regions, gamma, region_mask, training)
            w_regions = _weights_over_selection(beta, gamma, region_mask)
            fused_image = tf.einsum("tirn,inh->tirh", w_regions, v_lin)
        hidden = tf.nn.relu(t_lin[:, None] + fused_image + self.fuse_bias)
        per_word = tf.sigmoid(tf.squeeze(self.fuse_out(hidden), -1))  # [Bt, Bi, R]
        valid = tf.cast(text_mask, per_word.dtype)[:, None, :]
        s_t2i = tf.reduce_sum(per_word * valid, -1) / tf.maximum(tf.reduce_sum(valid, -1), 1.0)
        return 0.5 * (s_i2t + s_t2i)

    def _select(self, layer, scores, mask, training):
        if self.attention == "soft":
            return tf.cast(mask, scores.dtype)
        return layer(scores, mask=mask, training=training)

    def selections(self, text, text_mask, image):
        """Inference-time image-to-text selections α [Bt, Bi, N, R] and their Eq. 7
        weights, for the Fig. 4 visualisation."""
        t_gamma, _ = self.prepare_text(text)
        v_gamma, _ = self.prepare_image(image)
        gamma = tf.einsum("trh,inh->tirn", t_gamma, v_gamma) * (self.hidden ** -0.5)
        gamma_nr = tf.transpose(gamma, [0, 1, 3, 2])
        mask_nr = tf.broadcast_to(tf.cast(text_mask, tf.bool)[:, None, None, :],
                                  tf.shape(gamma_nr))
        alpha = self._select(self.select_words, gamma_nr, mask_nr, False)
        return alpha, _weights_over_selection(alpha, gamma_nr, mask_nr)

    def get_config(self):
        return {**super().get_config(), "hidden": self.hidden, "k1": self.k1, "k2": self.k2,
                "temperature": self.temperature, "attention": self.attention}


def cosine_scores(text, image):
    """Sentence level: cosine similarity of every text [Bt, D] with every image [Bi, D]."""
    return tf.matmul(tf.math.l2_normalize(text, -1), tf.math.l2_normalize(image, -1),
                     transpose_b=True)
