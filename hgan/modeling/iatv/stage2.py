"""IATV stage 2 (§3.2, Fig. 3): a tightly coupled CNN–LSTM with latent co-attention.

It scores a batch of (text, image) **pairs** — not all pairs — from the CNN's region
features and the description's tokens:

* encoder word-LSTM over word embeddings, hidden states H = {h_1 … h_T} (§3.2.1);
* spatial attention of each word over the image regions, x_t = [ĩ_t, h_t] (Eqs. 6–8);
* an M-step decoder LSTM whose step m attends over the x_t with latent semantic attention
  (Eqs. 9–11); the attended x̃_m pass two FC layers into the decoder (§3.2.2);
* the matching confidence C = σ(w·c_M + b) from the decoder's last hidden state, trained
  with binary cross-entropy (Eq. 12).

Ablations (Table 2): ``spatial_attention=False`` ("w/o SPA") gives every word the mean of
the regions, i.e. uniform a_t,k = 1/L in Eq. 8; ``semantic_attention=False`` ("w/o SMA")
drops the decoder: the joint feature of the last valid word, x_T = [ĩ_T, h_T], goes through
the two FC layers to the confidence (with SPA off too this is §4.4's "simple concatenation
of the visual and textual features ... followed by two fully-connected layers").
"""
from __future__ import annotations

from hgan.config import Config
from hgan.tf_compat import keras, tf

_NEG = -1e9
# What the matcher does to the CNN's region features first: "none" (§4.2: pool5 as is) or
# "l2": each region l2-normalised (demo; docs/design.md "IATV stage 2 on the demo").
REGION_NORMS = ("none", "l2")


def masked_softmax(logits, mask, axis: int = -1):
    """Softmax over the positions where ``mask`` is true; exactly 0 elsewhere."""
    mask = tf.cast(mask, tf.bool)
    weights = tf.nn.softmax(tf.where(mask, logits, _NEG), axis=axis)
    return weights * tf.cast(mask, weights.dtype)


@keras.utils.register_keras_serializable(package="hgan")
class SpatialAttention(keras.layers.Layer):
    """Eqs. 6–8: each word attends over the image regions.

    e_t,k = W_P tanh(W_I i_k + W_H h_t + b_H) + b_P   (Eq. 6, K = ``units``)
    a_t,k = softmax_k(e_t,k)                           (Eq. 7)
    ĩ_t = Σ_k a_t,k i_k                                (Eq. 8), x_t = [ĩ_t, h_t]

    Inputs: words H [B, T, D_H], word_mask [B, T], regions I [B, L, D_I].
    Outputs: x [B, T, D_I + D_H] (zero at padded words) and a [B, T, L] (rows of valid
    words sum to 1, padded rows are 0). ``enabled=False`` ("w/o SPA") uses a_t,k = 1/L.
    """

    def __init__(self, units: int, enabled: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.units, self.enabled = int(units), bool(enabled)
        if self.enabled:
            self.image_proj = keras.layers.Dense(self.units, use_bias=False, name="w_i")
            self.word_proj = keras.layers.Dense(self.units, name="w_h")  # b_H
            self.score = keras.layers.Dense(1, name="w_p")  # b_P

    def call(self, inputs):
        words, word_mask, regions = inputs
        valid = tf.cast(word_mask, words.dtype)[:, :, None]
        if self.enabled:
            joint = tf.tanh(self.image_proj(regions)[:, None, :, :]
                            + self.word_proj(words)[:, :, None, :])  # [B, T, L, K]
            attention = tf.nn.softmax(tf.squeeze(self.score(joint), -1), axis=-1)
        else:
            shape = tf.stack([tf.shape(words)[0], tf.shape(words)[1], tf.shape(regions)[1]])
            attention = tf.ones(shape, regions.dtype) / tf.cast(shape[2], regions.dtype)
        attention = attention * valid
        attended = tf.einsum("btl,bld->btd", attention, regions)
        return tf.concat([attended, words * valid], axis=-1), attention

    def get_config(self):
        return {**super().get_config(), "units": self.units, "enabled": self.enabled}


@keras.utils.register_keras_serializable(package="hgan")
class LatentSemanticDecoder(keras.layers.Layer):
    """Eqs. 9–11 and the M-step decoder LSTM of §3.2.2.

    For m = 1 … M, with c_{m-1} the decoder's hidden state (c_0: the given initial state):
      e_m,t = f(c_{m-1}, x_t)              (Eq. 9)
      a_m,t = softmax over valid t         (Eq. 10)
      x̃_m = Σ_t a_m,t x_t                  (Eq. 11)
      c_m = LSTM(FC(FC(x̃_m)), c_{m-1})     (the two FC layers, ReLU)

    The importance function f is "a two-layer CNN": two 1-D convolutions along the words
    over [x_t, c_{m-1}] (first ``importance_hidden`` channels, tanh; then 1 channel),
    kernel ``importance_kernel`` (1, the default, makes e_m,t depend on word t alone, as
    Eq. 9 writes it). Padded positions are zeroed before f and get a_m,t = 0.

    Inputs: x [B, T, D_x], word_mask [B, T], initial_state [h [B, U], c [B, U]].
    Outputs: hidden states [B, M, U] and attention [B, M, T].
    """

    def __init__(self, steps: int, units: int, importance_hidden: int,
                 importance_kernel: int = 1, fc_hidden: int = 512, **kwargs):
        super().__init__(**kwargs)
        if steps < 1:
            raise ValueError(f"the decoder needs M >= 1 steps, got {steps}")
        self.steps, self.units = int(steps), int(units)
        self.importance_hidden = int(importance_hidden)
        self.importance_kernel = int(importance_kernel)
        self.fc_hidden = int(fc_hidden)
        self.importance_1 = keras.layers.Conv1D(self.importance_hidden, self.importance_kernel,
                                                padding="same", activation="tanh",
                                                name="importance_conv1")
        self.importance_2 = keras.layers.Conv1D(1, 1, name="importance_conv2")
        self.fc1 = keras.layers.Dense(self.fc_hidden, activation="relu", name="fc1")
        self.fc2 = keras.layers.Dense(self.fc_hidden, activation="relu", name="fc2")
        self.cell = keras.layers.LSTMCell(self.units, name="decoder_lstm")

    def call(self, inputs, training=None):
        x, word_mask, initial_state = inputs
        valid = tf.cast(word_mask, x.dtype)[:, :, None]
        x = x * valid
        state = list(initial_state)
        length = tf.shape(x)[1]
        outputs, attentions = [], []
        for _ in range(self.steps):
            previous = tf.tile(state[0][:, None, :], tf.stack([1, length, 1]))
            features = tf.concat([x, previous], axis=-1) * valid
            energy = tf.squeeze(self.importance_2(self.importance_1(features)), -1)
            attention = masked_softmax(energy, word_mask)
            aligned = tf.einsum("bt,btd->bd", attention, x)
            output, state = self.cell(self.fc2(self.fc1(aligned)), state, training=training)
            outputs.append(output)
            attentions.append(attention)
        return tf.stack(outputs, axis=1), tf.stack(attentions, axis=1)

    def get_config(self):
        return {**super().get_config(), "steps": self.steps, "units": self.units,
                "importance_hidden": self.importance_hidden,
                "importance_kernel": self.importance_kernel, "fc_hidden": self.fc_hidden}


@keras.utils.register_keras_serializable(package="hgan")
class CoAttentionMatcher(keras.Model):
    """The stage-2 network on region features: a batch of pairs → matching confidence.

    ``call({"regions": [B, N, C], "input_word_ids": [B, T], "input_mask": [B, T]})`` →
    {"logits": [B], "confidence": [B] = σ(logits), "spatial_attention": [B, T, N],
    "semantic_attention": [B, M, T] (only with semantic attention)}. Other keys of the
    input dict are ignored. ``region_norm="l2"`` l2-normalises each region first, so the
    regions' half of x_t = [ĩ_t, h_t] is on the scale of the LSTM's half (a BatchNorm–ReLU
    map's regions have norms ~10× h_t's). The decoder starts from the encoder's final (h, c), "given the
    final features encoded by the encoder LSTM" (§3.2.2), so both LSTMs have
    ``lstm_units``.
    """

    def __init__(self, vocab_size: int, word_dim: int = 512, lstm_units: int = 512,
                 attention_dim: int = 512, decoder_steps: int = 5,
                 importance_hidden: int = 512, importance_kernel: int = 1,
                 fc_hidden: int = 512, spatial_attention: bool = True,
                 semantic_attention: bool = True, region_norm: str = "none", **kwargs):
        super().__init__(name=kwargs.pop("name", "iatv_stage2"), **kwargs)
        self.settings = dict(
            vocab_size=int(vocab_size), word_dim=int(word_dim), lstm_units=int(lstm_units),
            attention_dim=int(attention_dim), decoder_steps=int(decoder_steps),
            importance_hidden=int(importance_hidden), importance_kernel=int(importance_kernel),
            fc_hidden=int(fc_hidden), spatial_attention=bool(spatial_attention),
            semantic_attention=bool(semantic_attention), region_norm=str(region_norm))
        if region_norm not in REGION_NORMS:
            raise ValueError(f"unknown region_norm {region_norm!r}; choose from {REGION_NORMS}")
        # Same layer names as stage 1's text tower: stage 1 initialises stage 2 (§3.2).
        self.embedding = keras.layers.Embedding(vocab_size, word_dim, name="word_embedding")
        self.encoder = keras.layers.LSTM(lstm_units, return_sequences=True,
                                         return_state=True, name="word_lstm")
        self.spatial = SpatialAttention(attention_dim, enabled=spatial_attention,
                                        name="spatial_attention")
        if semantic_attention:
            self.decoder = LatentSemanticDecoder(decoder_steps, lstm_units, importance_hidden,
                                                 importance_kernel, fc_hidden,
                                                 name="semantic_decoder")
        else:
            self.decoder = None
            self.fc1 = keras.layers.Dense(fc_hidden, activation="relu", name="fc1")
            self.fc2 = keras.layers.Dense(fc_hidden, activation="relu", name="fc2")
        self.classifier = keras.layers.Dense(1, name="match_logit")

    def get_config(self):
        return dict(self.settings)

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def call(self, inputs, training=None):
        regions = tf.convert_to_tensor(inputs["regions"])
        if self.settings["region_norm"] == "l2":
            regions = tf.math.l2_normalize(regions, axis=-1)
        word_ids = tf.convert_to_tensor(inputs["input_word_ids"])
        mask = tf.cast(inputs["input_mask"], tf.bool)
        words = self.embedding(word_ids)
        hidden, last_h, last_c = self.encoder(words, mask=mask, training=training)
        x, spatial = self.spatial((hidden, mask, regions))
        out = {"spatial_attention": spatial}
        if self.decoder is not None:
            states, semantic = self.decoder((x, mask, [last_h, last_c]), training=training)
            feature = states[:, -1]
            out["semantic_attention"] = semantic
        else:
            last = tf.maximum(tf.reduce_sum(tf.cast(mask, tf.int32), axis=1) - 1, 0)
            feature = self.fc2(self.fc1(tf.gather(x, last, batch_dims=1)))
        logits = tf.squeeze(self.classifier(feature), -1)
        out.update(logits=logits, confidence=tf.sigmoid(logits))
        return out

    def initialize_from_stage1(self, stage1) -> None:
        """Copies stage 1's word embedding and word-LSTM (§3.2: stage 1 is stage 2's initial
        point; the CNN is shared through the region features the caller feeds in)."""
        for name in ("word_embedding", "word_lstm"):
            self.get_layer(name).set_weights(stage1.text_tower.get_layer(name).get_weights())


def build_matcher(config: Config, vocab_size: int, region_dim: int) -> CoAttentionMatcher:
    """A ``CoAttentionMatcher`` from the ``iatv_*`` config fields, its weights created with
    a dummy batch. ``region_dim`` is the CNN's channels C (512 for VGG-16 pool5); the
    weights do not depend on the number of regions."""
    matcher = CoAttentionMatcher(
        vocab_size, word_dim=config.model.word_dim, lstm_units=config.model.lstm_units,
        attention_dim=config.model.attention_dim, decoder_steps=config.model.decoder_steps,
        importance_hidden=config.model.importance_hidden,
        importance_kernel=config.model.importance_kernel, fc_hidden=config.model.fc_hidden,
        spatial_attention=config.model.spatial_attention,
        semantic_attention=config.model.semantic_attention, region_norm=config.model.region_norm)
    matcher({"regions": tf.zeros([1, 1, region_dim]),
             "input_word_ids": tf.zeros([1, config.data.max_len], tf.int32),
             "input_mask": tf.ones([1, config.data.max_len], tf.int32)}, training=False)
    return matcher


def matching_loss(labels, logits):
    """Eq. 12: E = −1/N Σ [y log C + (1 − y) log(1 − C)] with C = σ(logits).

    Computed from the logits (``sigmoid_cross_entropy_with_logits``) for stability.
    Args: labels [N] in {0, 1} (1: same identity); logits [N].
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.float32)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels,
                                                                  logits=logits))
