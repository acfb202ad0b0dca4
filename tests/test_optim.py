"""hgan.training.optim: the fused AdamW against Keras's Adam, and the finite-only step (skipped whole,
on one replica and on two)."""
import numpy as np
import pytest

from hgan.training import optim
from hgan.tf_compat import keras, tf


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    dense = tf.Variable(rng.normal(size=(5, 3)).astype(np.float32), name="dense")
    table = tf.Variable(rng.normal(size=(6, 2)).astype(np.float32), name="table")
    x = tf.constant(rng.normal(size=(4, 5)).astype(np.float32))
    ids = tf.constant([0, 3, 3])

    def grads():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.tanh(x @ dense) ** 2) + tf.reduce_sum(
                tf.gather(table, ids) ** 3)
        return tape.gradient(loss, [dense, table])  # dense and IndexedSlices
    return [dense, table], grads


@pytest.mark.parametrize("weight_decay", [None, 5e-2])
def test_adamw_equals_keras_adam_and_shares_its_variables(weight_decay):
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2], [0.1, 0.03])
    results = []
    for cls in (keras.optimizers.Adam, optim.AdamW):
        variables, grads = _problem()
        opt = cls(learning_rate=schedule, weight_decay=weight_decay)
        for _ in range(5):
            g = grads()
            assert isinstance(g[1], tf.IndexedSlices)
            opt.apply_gradients(zip(g, variables))
        results.append(([v.numpy() for v in variables], [v.numpy() for v in opt.variables()],
                        [v.name for v in opt.variables()]))
    (want, want_slots, want_names), (got, got_slots, got_names) = results
    assert got_names == want_names  # a checkpoint of either restores into the other
    # Equal up to float32 rounding, which m / √v amplifies where a gradient is near zero
    # (against steps of size ~lr = 0.1).
    for a, b in zip(got + got_slots, want + want_slots):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got[0], _problem()[0][0].numpy())  # it did train


def _state(variables, opt):
    return [v.numpy().copy() for v in variables] + [v.numpy().copy() for v in opt.variables()]


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_a_non_finite_gradient_skips_the_whole_step(poison):
    variables, grads = _problem()
    opt = optim.AdamW(learning_rate=0.1, weight_decay=0.1)
    opt.build(variables)
    g = grads()
    assert bool(optim.apply_if_finite(opt, zip(g, variables)))
    before = _state(variables, opt)
    bad = [g[0] * tf.where(tf.range(3) == 1, poison, 1.0), g[1]]
    assert not bool(optim.apply_if_finite(opt, zip(bad, variables)))
    after = _state(variables, opt)
    assert int(opt.iterations) == 2  # counted, as the loss-scale optimizer counts a skip
    for i, (a, b) in enumerate(zip(before, after)):
        if i != len(variables):  # index len(variables) is the iteration counter
            np.testing.assert_array_equal(a, b)
    # A non-finite loss with finite gradients is skipped too.
    assert not bool(optim.apply_if_finite(opt, zip(g, variables), finite=False))
    np.testing.assert_array_equal(variables[0].numpy(), before[0])
    # And a finite step applies exactly what an unguarded step would.
    twin_vars, _ = _problem()
    for t, v in zip(twin_vars, variables):
        t.assign(v)
    twin = optim.AdamW(learning_rate=0.1, weight_decay=0.1)
    twin.build(twin_vars)
    for t, v in zip(twin.variables(), opt.variables()):
        t.assign(v)
    assert bool(optim.apply_if_finite(opt, zip(g, variables)))
    twin.apply_gradients(zip(g, twin_vars))
    for a, b in zip(variables, twin_vars):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


def test_groups_apply_together_or_not_at_all():
    """Two optimizers over two parts (IATV's CNN and LSTM): a NaN in one part's gradient
    skips both."""
    (dense, table), grads = _problem()
    first, second = optim.AdamW(learning_rate=0.1), keras.optimizers.SGD(0.1, momentum=0.9)
    first.build([dense])
    second.build([table])
    g_dense, g_table = grads()
    before = [dense.numpy().copy(), table.numpy().copy()]
    bad_table = tf.IndexedSlices(g_table.values * float("nan"), g_table.indices,
                                 g_table.dense_shape)
    assert not bool(optim.apply_groups_if_finite(
        [(first, [(g_dense, dense)]), (second, [(bad_table, table)])]))
    np.testing.assert_array_equal(dense.numpy(), before[0])
    np.testing.assert_array_equal(table.numpy(), before[1])
    assert int(first.iterations) == int(second.iterations) == 1
    assert bool(optim.apply_groups_if_finite(
        [(first, [(g_dense, dense)]), (second, [(g_table, table)])]))
    assert not np.array_equal(dense.numpy(), before[0])
    assert not np.array_equal(table.numpy(), before[1])


def test_all_finite_sums_once_per_tensor():
    assert bool(optim.all_finite([tf.ones([3]), tf.IndexedSlices(tf.ones([2, 2]), [0, 1])]))
    assert not bool(optim.all_finite([tf.ones([3]), tf.constant([1.0, float("-inf")])]))
    assert not bool(optim.all_finite([tf.constant([float("inf"), float("-inf")])]))
    assert bool(optim.all_finite([]))




@pytest.mark.slow
def test_two_replicas_skip_together_and_apply_like_one(two_replica_results):
    out = two_replica_results["optim"]  # tests/two_replicas.py: optim_steps
    one, two = out["one"], out["two"]
    assert one["applied"] == [True] and two["applied"] == [True, True]
    assert one["skipped"] == [False] * 2 and two["skipped"] == [False] * 4
    np.testing.assert_allclose(two["after_good"], one["after_good"], rtol=1e-6)
    assert one["after_good"] != [[1.0, -2.0], [0.5, 3.0]]
    for copy in two["after_bad"]:  # every mirror kept the good step's weights
        np.testing.assert_array_equal(copy, two["after_good"])
    np.testing.assert_allclose(two["slots"], one["slots"], rtol=1e-6)
    assert one["iterations"] == two["iterations"] == 3


def test_step_schedule_warms_up_linearly_then_steps_down_tenfold():
    from hgan.training.schedules import StepSchedule
    schedule = StepSchedule(1e-3, [100.0], warmup_steps=50)
    values = [float(schedule(tf.constant(s))) for s in (0, 24, 49, 99, 100, 150)]
    np.testing.assert_allclose(values, [1e-3 / 50, 25e-3 / 50, 1e-3, 1e-3, 1e-4, 1e-4],
                               rtol=1e-5)
    assert float(StepSchedule(2e-4, [])(tf.constant(0))) == pytest.approx(2e-4)


def test_a_boundary_inside_the_warmup_scales_the_warmup_ramp():
    from hgan.training.schedules import StepSchedule
    schedule = StepSchedule(1.0, [2.0], warmup_steps=4)
    values = [float(schedule(tf.constant(s))) for s in range(5)]
    # ramp (s + 1) / 4, times 0.1 from step 2 on
    np.testing.assert_allclose(values, [0.25, 0.5, 0.075, 0.1, 0.1], rtol=1e-6)


def test_lr_decay_epochs_become_boundaries_in_steps_of_the_training_split():
    from hgan.config import Config
    from hgan.training.run_dir import steps_per_epoch
    from hgan.training.schedules import learning_rate_schedule
    manifest = {"splits": {"train": {"captions": 71}, "val": {"captions": 3}}}
    batch32 = Config().replace(batch_size=32)
    assert steps_per_epoch(manifest, batch32) == 2  # 71 // 32, remainder dropped
    assert steps_per_epoch(manifest, batch32, "val") == 1  # never 0
    assert learning_rate_schedule(Config().replace(lr_decay_epochs=(40,)), 7).boundaries == [280.0]
    assert learning_rate_schedule(Config().replace(lr_decay_epochs=(1.5, 3)),
                                  10).boundaries == [15.0, 30.0]
    constant = learning_rate_schedule(Config().replace(learning_rate=2e-4, lr_decay_epochs=()),
                                      10)
    assert constant.boundaries == [] and float(constant(tf.constant(10**6))) == pytest.approx(2e-4)


def test_a_fixed_step_budget_sets_the_run_length_and_keeps_the_decay_fractions():
    from hgan.config import Config
    from hgan.training.run_dir import run_length
    from hgan.training.schedules import learning_rate_schedule
    small = {"splits": {"train": {"captions": 480}}}  # 15 steps an epoch at batch 32
    large = {"splits": {"train": {"captions": 1440}}}  # 45
    by_epochs = Config().replace(batch_size=32, epochs=20, lr_decay_epochs=(15,))
    assert run_length(small, by_epochs) == (300, 15.0)
    assert run_length(large, by_epochs) == (900, 45.0)
    budget = by_epochs.replace(steps=360)
    for manifest in (small, large):  # 360 steps and the decay at 3/4 of them, either size
        steps, epoch = run_length(manifest, budget)
        assert (steps, epoch) == (360, 18.0)
        assert learning_rate_schedule(budget, epoch).boundaries == [270.0]


def test_the_optimizer_of_a_config_applies_warmup_then_tenfold_steps_per_epoch():
    """Config → optimizer, step by step: 5 captions at batch 2 are 2 steps an epoch, so
    lr_decay_epochs (2, 3) step down at steps 4 and 6, after a 2-step warmup."""
    from hgan.config import Config
    from hgan.training import optim as optim_lib
    from hgan.training.run_dir import steps_per_epoch
    config = Config().replace(learning_rate=1e-3, lr_decay_epochs=(2, 3), warmup_steps=2,
                              batch_size=2, weight_decay_mode="l2")
    per_epoch = steps_per_epoch({"splits": {"train": {"captions": 5}}}, config)
    opt = optim_lib.make_optimizer(config, per_epoch)
    w = tf.Variable([1.0, 2.0])
    used = []
    for _ in range(8):
        opt.apply_gradients([(tf.constant([0.0, 0.0]), w)])
        used.append(float(opt.learning_rate.numpy()))  # the rate this step applied
    np.testing.assert_allclose(used, [5e-4, 1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5],
                               rtol=1e-5)


def test_guarded_apply_reports_the_global_norm_and_clips_the_summed_gradients():
    w = tf.Variable([3.0, 4.0])
    opt = keras.optimizers.SGD(learning_rate=1.0)
    grads = [tf.constant([3.0, 4.0])]  # norm 5
    finite, norm = optim.guarded_apply([(opt, zip(grads, [w]))], clip_norm=1.0)
    assert bool(finite) and float(norm) == pytest.approx(5.0)
    np.testing.assert_allclose(w.numpy(), [3.0 - 0.6, 4.0 - 0.8], rtol=1e-6)  # step of norm 1
    _, norm = optim.guarded_apply([(opt, zip([tf.constant([0.3, 0.4])], [w]))], clip_norm=1.0)
    np.testing.assert_allclose(w.numpy(), [2.1, 2.8], rtol=1e-6)  # under the clip: as is
    assert float(norm) == pytest.approx(0.5)
