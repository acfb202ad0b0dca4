"""Mixed precision against float32 on the same seeds: does every ``mixed_float16`` run
finish, through its validations, and how close are its validation figures?

  python bench/mixed_precision.py [--seeds=10] [--steps=40] [--eval_every=20]
  python bench/mixed_precision.py --small
  python bench/mixed_precision.py --data_dir=TFRECORDS --vocab_file=VOCAB

For each seed, the ``tiny`` HGAN preset (a 2-layer scratch BERT over the captions' words)
trains on a generated demo set (``--identities``; or ``--data_dir``'s TFRecords with a
``--vocab_file`` that covers their captions) twice, in float32 and under
``mixed_float16``, validating every ``--eval_every`` steps. Prints one line per seed and
precision (finished or the error, last val t2i R1, the loss scale's skipped steps) and the
mean |R1 difference| between the two precisions. On a CPU float16 is emulated: the tiny
preset keeps it quick. Asserts nothing.
"""
import os
import re
import shutil
import tempfile
import time

from absl import app, flags

import _small

FLAGS = flags.FLAGS
SMALL = {"seeds": 1, "steps": 2, "eval_every": 2, "identities": 10}


def define_flags():
    flags.DEFINE_integer("seeds", 10, "Seeds 0..N-1 (train.seed: weights and batch order).")
    flags.DEFINE_integer("steps", 40, "Training steps per run.")
    flags.DEFINE_integer("eval_every", 20, "Steps between validations.")
    flags.DEFINE_integer("identities", 30, "Identities of the generated demo set.")
    flags.DEFINE_string("data_dir", None, "TFRecords with train and val splits to train on "
                        "instead of a generated demo set (with --vocab_file).")
    flags.DEFINE_string("vocab_file", None, "The scratch BERT's WordPiece vocabulary for "
                        "--data_dir's captions.")
    _small.define_flag()


def one_run(config, data_dir, model_dir):
    """(finished, last val t2i R1 or None, loss-scale skips, error or '') of one run."""
    from hgan import families
    from hgan.tf_compat import keras
    from hgan.training import run_dir
    lines = []
    try:
        run_dir.reconcile_config(config, model_dir)
        families.train(config, data_dir, model_dir, log=lines.append)
        ok, error = True, ""
    except Exception as e:  # a run that stops is what this bench reports
        ok, error = False, f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    vals = [float(m.group(1)) for ln in lines for m in [re.search(r"val step \d+: R1=([\d.]+)", ln)]
            if m]
    skips = sum(int(m.group(1)) for ln in lines
                for m in [re.search(r"loss scale skipped (\d+) step", ln)] if m)
    return ok, (vals[-1] if vals else None), skips, error


def main(argv):
    del argv
    _small.apply(SMALL)
    if (FLAGS.data_dir is None) != (FLAGS.vocab_file is None):
        raise app.UsageError("--data_dir and --vocab_file go together")
    root = tempfile.mkdtemp(prefix="bench_mixed_")
    try:
        if FLAGS.data_dir is None:
            raw, data_dir, _ = _small.demo_data(root, identities=FLAGS.identities)
            vocab = _small.caption_vocab(raw, os.path.join(root, "vocab.txt"))
        else:
            data_dir, vocab = FLAGS.data_dir, FLAGS.vocab_file
        base = _small.tiny_config(vocab)
        base = base.replace(max_steps=FLAGS.steps, eval_every=FLAGS.eval_every,
                            checkpoint_every=FLAGS.eval_every, batch_size=8,
                            identities_per_batch=2, learning_rate=1e-3)
        diffs, finished = [], {"float32": 0, "mixed_float16": 0}
        for seed in range(FLAGS.seeds):
            r1 = {}
            for precision, mixed in (("float32", False), ("mixed_float16", True)):
                t0 = time.time()
                config = base.replace(seed=seed, mixed_precision=mixed)
                ok, r1[precision], skips, error = one_run(
                    config, data_dir, os.path.join(root, f"{precision}_{seed}"))
                finished[precision] += ok
                print(f"seed {seed} {precision:13s} "
                      + ("finished" if ok else f"STOPPED ({error})")
                      + f", last val t2i R1 {r1[precision]}, loss-scale skips {skips}, "
                      f"{time.time() - t0:.0f} s", flush=True)
            if None not in r1.values():
                diffs.append(abs(r1["float32"] - r1["mixed_float16"]))
        mean = sum(diffs) / len(diffs) if diffs else float("nan")
        print(f"{FLAGS.seeds} seeds: float32 finished {finished['float32']}, mixed_float16 "
              f"finished {finished['mixed_float16']}; mean |val t2i R1 difference| "
              f"{mean:.2f} points over {len(diffs)} seeds", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
