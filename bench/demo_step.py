"""Benchmark: the demo preset's HGAN training step on the demo's own batches, with and
without TensorFlow's oneDNN kernels.

  python bench/demo_step.py --data_dir=demo_out/tfrecords --bert=demo_out/bert
                            [--steps=10] [--set=name=value ...] [--onednn=both|on|off]

What ``train.py --config=demo`` runs: ``HGANTask`` (its compiled step, the token cache of
the frozen BERT, the identity-aware input pipeline). Batches are drawn before timing, so
the pipeline is not in the step time. Prints the seconds to build the model, to fill the
token cache and for the first (tracing) step, and the median of the timed steps.
``--onednn=both`` runs itself twice in child processes, ``TF_ENABLE_ONEDNN_OPTS=0`` then
``=1`` (the variable is read when TensorFlow is imported; ``hgan.tf_compat`` sets 1 unless
it is set). About 2 minutes on 2 CPU cores. Prints its figures; asserts nothing.
"""
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "demo_out/tfrecords", "The demo's TFRecords.")
flags.DEFINE_string("bert", "demo_out/bert", "The converted BERT (scripts/demo.sh step 3).")
flags.DEFINE_integer("steps", 10, "Timed steps (after 2 untimed ones).")
flags.DEFINE_multi_string("set", [], "Config overrides on the demo preset, name=value.")
flags.DEFINE_enum("onednn", "both", ["both", "on", "off"],
                  "oneDNN kernels: both (two child processes), on or off (this process).")


def measure() -> str:
    from hgan.config import parse_overrides, preset
    from hgan.tf_compat import tf
    from hgan.training.hgan_task import HGANTask

    config = parse_overrides(preset("demo"), [f"bert={FLAGS.bert}", *FLAGS.set])
    tf.random.set_seed(0)
    t0 = time.perf_counter()
    task = HGANTask(config, FLAGS.data_dir)
    t1 = time.perf_counter()
    task.begin(0, log=lambda _: None)
    t2 = time.perf_counter()
    batches = task.batches("train", 0)
    batches = [next(batches) for _ in range(FLAGS.steps + 2)]
    times = []
    for batch in batches:
        start = time.perf_counter()
        float(task.train_step("train", batch)["total"])
        times.append(time.perf_counter() - start)
    median = statistics.median(times[2:])
    return (f"build {t1 - t0:.1f} s, token cache {t2 - t1:.1f} s, first step {times[0]:.1f} s, "
            f"step median {1000 * median:.0f} ms over {FLAGS.steps} "
            f"(300 demo steps: {300 * median / 60:.1f} min)")


def main(argv):
    del argv
    if FLAGS.onednn != "both":
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if FLAGS.onednn == "on" else "0"
        print(f"oneDNN {FLAGS.onednn}: {measure()}", flush=True)
        return
    args = [a for a in sys.argv[1:] if not a.startswith("--onednn")]
    for value in ("off", "on"):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), *args,
                              f"--onednn={value}"], env=env, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("oneDNN")]
        print(lines[0] if lines else f"oneDNN {value}: failed\n{out.stderr[-2000:]}", flush=True)


if __name__ == "__main__":
    app.run(main)
