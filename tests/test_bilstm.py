"""hgan.layers.bilstm.BiLSTM against Keras's Bidirectional(LSTM) with a mask."""
import numpy as np

from hgan.layers.bilstm import BiLSTM
from hgan.tf_compat import keras, tf


def test_equals_keras_bidirectional_lstm_with_a_mask_and_its_gradients():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(4, 7, 5)).astype(np.float32))
    lengths = np.array([7, 3, 1, 5])
    mask = tf.constant(np.arange(7)[None] < lengths[:, None])
    reference = keras.layers.Bidirectional(keras.layers.LSTM(6))
    reference(x, mask=mask)
    layer = BiLSTM(6)
    layer(x, mask=mask)
    fk, fr, fb = reference.forward_layer.get_weights()
    bk, br, bb = reference.backward_layer.get_weights()
    layer.set_weights([np.stack([fk, bk]), np.stack([fr, br]), np.stack([fb, bb])])

    def run(model):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = model(x, mask=mask)
            loss = tf.reduce_sum(out * tf.range(12, dtype=tf.float32))
        return out.numpy(), tape.gradient(loss, [x] + model.trainable_variables)

    (want, want_grads), (got, got_grads) = run(reference), run(layer)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got_grads[0], want_grads[0], atol=1e-5)  # d/dx
    for mine, (forward, backward) in zip(got_grads[1:], zip(want_grads[1:4], want_grads[4:])):
        np.testing.assert_allclose(mine, np.stack([forward, backward]), atol=1e-5)
    # Steps after a row's end change nothing.
    noisy = tf.where(mask[..., None], x, 100.0)
    np.testing.assert_allclose(layer(noisy, mask=mask).numpy(), got, atol=1e-6)


def test_outside_training_one_sequence_gives_the_batched_states(monkeypatch):
    """A served query (one sequence, outside training) runs its own loop (``_one_sequence``):
    the states of the training path's batched recurrence, whatever the padding after it."""
    rng = np.random.default_rng(1)
    layer = BiLSTM(8)
    x = tf.constant(rng.normal(size=(4, 9, 5)).astype(np.float32))
    lengths = np.array([9, 4, 1, 0])
    mask = tf.constant(np.arange(9)[None] < lengths[:, None])
    batched = layer(x, mask=mask, training=True).numpy()
    # Several sequences outside training: the batched path itself.
    np.testing.assert_array_equal(layer(x, mask=mask, training=False).numpy(), batched)
    loop = tf.function(lambda a, m: layer(a, mask=m, training=False))
    for row, length in enumerate(lengths):
        for steps in (length, 9):  # trimmed to the sequence, or padded to T
            one = loop(x[row:row + 1, :max(steps, 1)], mask[row:row + 1, :max(steps, 1)])
            np.testing.assert_allclose(one.numpy()[0], batched[row], rtol=1e-6, atol=1e-7)
    # It is that loop that answers one sequence: the batched recurrence is not called.
    from hgan.layers import bilstm
    monkeypatch.setattr(bilstm, "_recurrence", lambda z, r: tf.fill(
        tf.concat([tf.shape(z)[:-1], [8]], 0), float("nan")))
    assert np.isfinite(layer(x[:1], mask=mask[:1], training=False).numpy()).all()
    assert np.isnan(layer(x, mask=mask, training=False).numpy()).all()


def test_initial_forget_bias_is_one_and_the_layer_serialises():
    layer = BiLSTM(3)
    layer(tf.zeros([1, 2, 4]))
    np.testing.assert_array_equal(layer.bias.numpy()[:, 3:6], 1.0)
    np.testing.assert_array_equal(layer.bias.numpy()[:, :3], 0.0)
    forward, backward = layer.recurrent_kernel.numpy()
    assert not np.allclose(forward, backward)  # each direction drawn on its own
    clone = BiLSTM.from_config(layer.get_config())
    assert clone.units == 3
