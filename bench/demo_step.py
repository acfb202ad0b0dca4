"""Benchmark: the demo preset's HGAN training step on the demo's own batches, with and
without TensorFlow's oneDNN kernels.

  python bench/demo_step.py --data_dir=demo_out/tfrecords --bert=demo_out/bert
                            [--steps=10] [--set=name=value ...] [--onednn=both|on|off]
  python bench/demo_step.py --small

What ``hgan-train --config=demo`` runs: ``HGANTask`` (its compiled step, the token cache of
the frozen BERT, the identity-aware input pipeline). Batches are drawn before timing, so
the pipeline is not in the step time. Prints the seconds to build the model, to fill the
token cache and for the first (tracing) step, the median of the timed steps, and what
that median makes of the run's ``train.steps`` (the demo preset's, unless ``--set``
changes it). ``--onednn=both`` runs itself twice in child processes,
``TF_ENABLE_ONEDNN_OPTS=0`` then ``=1`` (the variable is read when TensorFlow is imported;
``hgan.tf_compat`` sets 1 unless it is set). About 2 minutes on 2 CPU cores. Prints its
figures; asserts nothing.

``--small`` (tests/test_benches.py): each child writes a 12-identity demo set and trains
the demo preset shrunk by ``SMALL_SET`` (64×32 images, batch 8 as 2 identities × 4, 16-d
towers, a 4x16 scratch BERT over the captions' words) for 2 timed steps; both lines are
printed as at full size, in about 50 s (two TensorFlow processes).
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

import _small

FLAGS = flags.FLAGS
SMALL = {"steps": 2}
SMALL_SET = ["image_height=64", "image_width=32", "batch_size=8", "identities_per_batch=2",
             "max_len=16", "max_phrases=3", "shuffle_buffer=64", "lstm_units=16",
             "attention_heads=2", "local_dim=16", "embed_dim=16", "mlp_hidden=16"]


def define_flags():
    flags.DEFINE_string("data_dir", "demo_out/tfrecords", "The demo's TFRecords.")
    flags.DEFINE_string("bert", "demo_out/bert",
                        "The converted BERT (scripts/demo.sh's BERT step).")
    flags.DEFINE_integer("steps", 10, "Timed steps (after 2 untimed ones).")
    flags.DEFINE_multi_string("set", [], "Config overrides on the demo preset, name=value.")
    flags.DEFINE_enum("onednn", "both", ["both", "on", "off"],
                      "oneDNN kernels: both (two child processes), on or off (this process).")
    _small.define_flag()


def _small_setup(root: str) -> list[str]:
    """--small: a tiny demo set in ``root`` and a scratch BERT over its words → the
    overrides."""
    raw, FLAGS.data_dir, _ = _small.demo_data(root, identities=12, shots=4)
    vocab = _small.caption_vocab(raw, os.path.join(root, "vocab.txt"))
    return [*SMALL_SET, "bert=scratch:4x16", f"vocab_file={vocab}"]


def measure() -> str:
    from hgan.config import parse_overrides, preset
    from hgan.tf_compat import tf
    from hgan.training.hgan_task import HGANTask

    root = tempfile.mkdtemp(prefix="bench_demo_step_")
    small = _small_setup(root) if FLAGS.small else []
    bert = [] if FLAGS.small and not FLAGS["bert"].present else [f"bert={FLAGS.bert}"]
    config = parse_overrides(preset("demo"), [*small, *bert, *FLAGS.set])
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
    shutil.rmtree(root, ignore_errors=True)
    steps = config.train.steps  # the demo preset's run length (hgan-train --config=demo)
    return (f"build {t1 - t0:.1f} s, token cache {t2 - t1:.1f} s, first step {times[0]:.1f} s, "
            f"step median {1000 * median:.0f} ms over {FLAGS.steps} "
            f"({steps} demo steps: {steps * median / 60:.1f} min)")


def main(argv):
    del argv
    _small.apply(SMALL)
    if FLAGS.onednn != "both":
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if FLAGS.onednn == "on" else "0"
        print(f"oneDNN {FLAGS.onednn}: {measure()}", flush=True)
        return
    args = [a for a in sys.argv[1:] if not a.startswith("--onednn")]
    failed = []
    for value in ("off", "on"):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), *args,
                              f"--onednn={value}"], env=env, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("oneDNN")]
        if not lines:
            failed.append(value)
        print(lines[0] if lines else f"oneDNN {value}: failed\n{out.stderr[-2000:]}", flush=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
