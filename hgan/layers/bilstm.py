"""The sentence-level bi-LSTM of HGAN (§3.2, §4: "bi-LSTM 512"), with its input projection
hoisted out of the recurrence."""
from __future__ import annotations

from hgan.tf_compat import keras, tf


@keras.utils.register_keras_serializable(package="hgan")
class BiLSTM(keras.layers.Layer):
    """A bidirectional LSTM over right-padded sequences → concat(forward h at each sequence's
    last real step, backward h after its first) [B, 2U]: what
    ``Bidirectional(LSTM(U))(x, mask=mask)`` computes, with the same gates (Hochreiter &
    Schmidhuber; Keras's i, f, c, o order, sigmoid gates, tanh cell, forget bias 1 at init).

    Keras's LSTM multiplies each step's input by the [D, 4U] kernel inside the recurrence;
    with BERT's concatenated last four layers (D = 3072) that re-reads a 25 MB matrix at
    every step, forward and backward, and dominates the text tower's cost on a CPU. Here the
    input part of every gate is one [B·T, D] × [D, 2·4U] product for both directions before
    the recurrence, which then only carries the [U, 4U] recurrent products of both
    directions together.

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

    def call(self, inputs, mask=None):
        batch, steps = tf.shape(inputs)[0], tf.shape(inputs)[1]
        if mask is None:
            lengths = tf.fill([batch], steps)
        else:
            lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
        backward = tf.reverse_sequence(inputs, lengths, seq_axis=1, batch_axis=0)
        kernel = tf.cast(self.kernel, inputs.dtype)
        # The hoisted input projections of both directions, time-major: [T, 2, B, 4U].
        projected = tf.stack([tf.einsum("btd,dg->tbg", inputs, kernel[0]),
                              tf.einsum("btd,dg->tbg", backward, kernel[1])], axis=1)
        projected += tf.cast(self.bias, inputs.dtype)[None, :, None, :]
        recurrent = tf.cast(self.recurrent_kernel, inputs.dtype)

        def step(state, z):
            h, c = state
            gates = z + tf.matmul(h, recurrent)  # [2, B, 4U]
            i, f, g, o = tf.split(gates, 4, axis=-1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            return tf.sigmoid(o) * tf.tanh(c), c

        zeros = tf.zeros(tf.stack([2, batch, self.units]), inputs.dtype)
        hidden, _ = tf.scan(step, projected, initializer=(zeros, zeros))  # [T, 2, B, U]
        # Each direction's state after the sequence's last real step.
        last = tf.stack([tf.maximum(lengths - 1, 0), tf.range(batch)], axis=1)
        final = tf.gather_nd(tf.transpose(hidden, [0, 2, 1, 3]), last)  # [B, 2, U]
        return tf.reshape(final, [batch, 2 * self.units])

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class _PerDirection(keras.initializers.Initializer):
    """A fresh ``initializer_class()`` for each [U, 4U] slice of a [2, U, 4U] weight (one
    unseeded instance would repeat its values)."""

    def __init__(self, initializer_class):
        self.initializer_class = initializer_class

    def __call__(self, shape, dtype=None, **kwargs):
        return tf.stack([self.initializer_class()(shape[1:], dtype=dtype)
                         for _ in range(shape[0])])
