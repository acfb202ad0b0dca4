"""The sentence-level bi-LSTM of HGAN (§3.2; §4: "the embedding size of Bi-LSTM is set to
512"), with its input projection hoisted out of the recurrence and a hand-written backward
pass."""
from __future__ import annotations

from hgan.tf_compat import keras, tf


@keras.utils.register_keras_serializable(package="hgan")
class BiLSTM(keras.layers.Layer):
    """A bidirectional LSTM over right-padded sequences → concat(forward h at each sequence's
    last real step, backward h after its first) [B, 2U]: what
    ``Bidirectional(LSTM(U))(x, mask=mask)`` computes, with the same gates (Hochreiter &
    Schmidhuber; Keras's i, f, c, o order, sigmoid gates, tanh cell, forget bias 1 at init).

    Four things make it cheaper than Keras's layer, none of which changes the function
    (the last, to float rounding):

    * The input part of every gate is one product of the sequences' real tokens with the
      [D, 2·4U] kernels of both directions, before the recurrence (Keras multiplies each
      step's input inside it; with BERT's concatenated last four layers, D = 3072, that
      re-reads a 25 MB matrix at every step). Padding is never projected: both directions
      read the same real tokens, only in opposite orders.
    * The recurrence carries both directions together ([2, B, U] states).
    * Its gradient is written out (``_recurrence``): TensorFlow's automatic gradient of a
      loop accumulates the recurrent kernel's gradient as T separate rank-B updates; here
      it is one [U, T·B] × [T·B, 4U] product after the backward loop.
    * Outside training, one sequence (a served query) runs ``_one_sequence``: each
      direction's recurrent product is a [1, U] × [U, 4U] matmul of its own, which
      TensorFlow runs side by side, and only the last states are kept; a step reads the
      recurrent kernels (8 MiB at U = 512) once, so this is what bounds it. The same
      values as the batched product to float rounding (``tests/test_bilstm.py``; bit for
      bit on the machines measured).

    Call args:
      inputs: [B, T, D]; mask: [B, T] bool/0-1, a prefix of each row (right padding).
    Returns: [B, 2U] (forward half first).
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shape):
        dim, units = int(input_shape[-1]), self.units
        # [direction, ...]: index 0 forward, 1 backward.
        self.kernel = self.add_weight(
            name="kernel", shape=[2, dim, 4 * units],
            initializer=keras.initializers.VarianceScaling(1.0, "fan_avg", "uniform"))
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel", shape=[2, units, 4 * units],
            initializer=_PerDirection(keras.initializers.Orthogonal))
        forget_one = tf.concat([tf.zeros([units]), tf.ones([units]), tf.zeros([2 * units])], 0)
        self.bias = self.add_weight(
            name="bias", shape=[2, 4 * units],
            initializer=lambda shape, dtype=None: tf.tile(forget_one[None], [2, 1]))
        super().build(input_shape)

    def call(self, inputs, mask=None, training=None):
        batch, steps = tf.shape(inputs)[0], tf.shape(inputs)[1]
        if mask is None:
            lengths = tf.fill([batch], steps)
        else:
            lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
        real = tf.sequence_mask(lengths, steps)  # [B, T]
        tokens = tf.boolean_mask(inputs, real)  # [N, D], row by row
        kernel = tf.cast(self.kernel, inputs.dtype)
        # [2, N, 4U]: every real token's input part of both directions' gates, and a zero
        # row (index N) that padded steps read.
        projected = tf.matmul(tokens[None], kernel) + tf.cast(self.bias, inputs.dtype)[:, None]
        projected = tf.pad(projected, [[0, 0], [0, 1], [0, 0]])
        # Time-major gather: step t of row b reads token t (forward) or token len-1-t
        # (backward) of that row; row b's tokens start at offset_b in the packed rows.
        total = tf.shape(tokens)[0]
        offset = tf.cumsum(lengths, exclusive=True)[None]  # [1, B]
        t = tf.range(steps)[:, None]  # [T, 1]
        inside = t < lengths[None]
        forward_index = tf.where(inside, offset + t, total)
        backward_index = tf.where(inside, offset + lengths[None] - 1 - t, total) + total + 1
        z = tf.gather(tf.reshape(projected, [-1, 4 * self.units]),
                      tf.stack([forward_index, backward_index], axis=1))  # [T, 2, B, 4U]
        recurrent = tf.cast(self.recurrent_kernel, inputs.dtype)
        # Each direction's state after the sequence's last real step.
        last = tf.maximum(lengths - 1, 0)

        def batched():
            hidden = _recurrence(z, recurrent)  # [T, 2, B, U]
            index = tf.stack([last, tf.range(batch)], axis=1)
            return tf.gather_nd(tf.transpose(hidden, [0, 2, 1, 3]), index)  # [B, 2, U]

        if training:
            final = batched()
        else:
            final = tf.cond(batch == 1, lambda: _one_sequence(z, recurrent, last[0]),
                            batched)
        return tf.reshape(final, [batch, 2 * self.units])

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@tf.custom_gradient
def _recurrence(z, recurrent):
    """LSTM states from gate pre-activations.

    z: [T, E, B, 4U], the input part (plus bias) of the gates of E directions;
    recurrent: [E, U, 4U]. Returns h [T, E, B, U], with h_0 = c_0 = 0 and
    gates_t = z_t + h_{t-1} R; i, f, o = σ(·), g = tanh(·); c_t = f c_{t-1} + i g;
    h_t = o tanh(c_t).
    """
    units = recurrent.shape[1] or tf.shape(recurrent)[1]
    zeros = tf.zeros_like(z[0][..., :units])

    def step(state, z_t):
        h, c, _ = state
        h, c, gates = _cell(z_t + tf.matmul(h, recurrent), c)
        return h, c, tf.concat(gates, axis=-1)

    h, c, gates = tf.scan(step, z, initializer=(zeros, zeros, tf.zeros_like(z[0])))

    def grad(dh_seq):
        c_prev = tf.concat([zeros[None], c[:-1]], axis=0)
        h_prev = tf.concat([zeros[None], h[:-1]], axis=0)

        def back(state, inputs):
            dh_next, dc_next, _ = state
            dh_t, gates_t, c_t, c_prev_t = inputs
            i, f, g, o = tf.split(gates_t, 4, axis=-1)
            tanh_c = tf.tanh(c_t)
            dh = dh_t + dh_next
            dc = dc_next + dh * o * (1 - tanh_c * tanh_c)
            dz = tf.concat([dc * g * i * (1 - i), dc * c_prev_t * f * (1 - f),
                            dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)], axis=-1)
            return tf.matmul(dz, recurrent, transpose_b=True), dc * f, dz

        _, _, dz = tf.scan(back, (dh_seq, gates, c, c_prev),
                           initializer=(zeros, zeros, tf.zeros_like(z[0])), reverse=True)
        d_recurrent = tf.einsum("tebu,tebg->eug", h_prev, dz)
        return dz, d_recurrent

    return h, grad


def _cell(preactivation, c):
    """One LSTM step from its gates' pre-activations [..., 4U] (i, f, g, o) and c_{t-1}
    → (h_t, c_t, (i, f, g, o))."""
    i, f, g, o = tf.split(preactivation, 4, axis=-1)
    i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
    c = f * c + i * g
    return o * tf.tanh(c), c, (i, f, g, o)


def _one_sequence(z, recurrent, last):
    """``_recurrence`` of one sequence (B = 1), its two directions' states after step
    ``last`` → [1, 2, U]: the same operations, each direction's recurrent product a 2-D
    matmul of its own, and no per-step states written (nothing reads them without a
    gradient)."""
    units = recurrent.shape[1] or tf.shape(recurrent)[1]
    zeros = tf.zeros_like(z[0][..., :units])  # [2, 1, U]

    def step(t, h, c):
        product = tf.stack([tf.matmul(h[0], recurrent[0]), tf.matmul(h[1], recurrent[1])])
        h, c, _ = _cell(z[t] + product, c)
        return t + 1, h, c

    _, h, _ = tf.while_loop(lambda t, h, c: t <= last, step, (0, zeros, zeros))
    return tf.transpose(h, [1, 0, 2])


class _PerDirection(keras.initializers.Initializer):
    """A fresh ``initializer_class()`` for each [U, 4U] slice of a [2, U, 4U] weight (one
    unseeded instance would repeat its values)."""

    def __init__(self, initializer_class):
        self.initializer_class = initializer_class

    def __call__(self, shape, dtype=None, **kwargs):
        return tf.stack([self.initializer_class()(shape[1:], dtype=dtype)
                         for _ in range(shape[0])])
