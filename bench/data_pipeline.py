"""Benchmark: TFRecord write rate and tf.data read rate at the paper's image size, against
the rate of the training step the pipeline feeds.

  python bench/data_pipeline.py [--identities=300] [--batches=40] [--identities_per_batch=8]
                                [--train_steps=2 | --train_images_per_s=RATE]
                                [--backbone=resnet50] [--bert=scratch:12x768] [--batch_size=32]
  python bench/data_pipeline.py --small

Write: the demo generator's raw CUHK-PEDES-layout set through `hgan-prep`'s writer
(validation, noun phrases, sharding). Read: ``hgan.data.pipeline.train_dataset`` at 384×192 — parse,
decode, resize, flip (with the captions' left / right swap; off in the paper preset, on
here), normalise, WordPiece-tokenise and phrase masks — in image-caption
pairs per second, along both of its batching paths: the plain shuffle
(``identities_per_batch=0``, the paper preset) and the identity-aware P×K batches
(``--identities_per_batch=P``, default 8 as in the demo preset: ``group_by_window`` +
``rebatch``; pairs of an identity that cannot fill a group of K are decoded, then dropped).
Each path reports its first batch (graph building, the shuffle buffer's first fill, for P×K
the first full groups) apart from the steady rate over ``--batches`` more.

For scale, the training step's rate: measured here (``--train_steps`` timed steps of
``hgan.training.hgan_task.HGANTask.train_step``, after one untimed tracing step, on a batch of this
pipeline: ``--backbone`` at the same image size, ``--bert`` frozen and run every step as in
``bench/train_step.py``'s "full" step — a few minutes at the defaults on 2 CPU cores), or
given with ``--train_images_per_s`` (e.g. batch / median step time from
``bench/train_step.py``), or skipped with ``--train_steps=0``. The printout says which.
Prints its figures; asserts nothing.

``--small`` (tests/test_benches.py): 12 identities, batches of 8 at 64×32 (P×K: P=2),
2 batches per path, one timed step of ``small_cnn`` + a 4x16 scratch BERT; every line of
the full run in about 30 s, figures that only show it runs.
"""
import os
import shutil
import statistics
import tempfile
import time

from absl import app, flags
import numpy as np

import _small
from hgan.config import preset
from hgan.data import pipeline

FLAGS = flags.FLAGS
SMALL = {"identities": 12, "batches": 2, "batch_size": 8, "image_size": ["64", "32"],
         "identities_per_batch": 2, "train_steps": 1, "backbone": "small_cnn",
         "bert": "scratch:4x16"}  # 4 layers: the paper's concat4


def define_flags():
    flags.DEFINE_integer("identities", 300, "Synthetic identities (4 images each).")
    flags.DEFINE_integer("batches", 40, "Training batches to read per path, after the first.")
    flags.DEFINE_integer("batch_size", 32, "config.data.batch_size (the paper: 32).")
    flags.DEFINE_string("vocab", "", "vocab.txt for the tokenizer (default: one made of the "
                        "captions' words).")
    flags.DEFINE_list("image_size", ["384", "192"], "Image height,width (the paper: 384,192).")
    flags.DEFINE_integer("identities_per_batch", 8, "P of the P×K path (the demo preset: 8); "
                         "0 times the plain shuffle only.")
    flags.DEFINE_float("train_images_per_s", 0.0, "A measured training rate (images/s) to "
                       "compare with instead of measuring one here (bench/train_step.py: "
                       "batch / median step time of 'full').")
    flags.DEFINE_integer("train_steps", 2, "Without --train_images_per_s: timed training "
                         "steps to measure the rate with (after one untimed); 0 = no "
                         "comparison.")
    flags.DEFINE_string("backbone", "resnet50",
                        "config.model.backbone of the measured training step.")
    flags.DEFINE_string("bert", "scratch:12x768", "config.model.bert of the measured training "
                        "step (scratch:LxH, as bench/train_step.py; or a BERT SavedModel dir).")
    _small.define_flag()


def time_reads(out: str, config, tokenizer, batches: int) -> tuple[float, float, dict]:
    """(first batch s, steady pairs/s over ``batches`` more, the first batch)."""
    it = iter(pipeline.train_dataset(out, config, tokenizer))
    t0 = time.perf_counter()
    first = next(it)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * config.data.batch_size / (time.perf_counter() - t0)
    return first_s, rate, first


def measure_train_rate(out: str, config, batch: dict, steps: int) -> tuple[float, str]:
    """Images/s of ``HGANTask.train_step`` on ``batch`` (median of ``steps`` after one)."""
    from hgan.tf_compat import tf
    from hgan.training.hgan_task import HGANTask
    step_config = config.replace(backbone=FLAGS.backbone, backbone_weights="none",
                                 bert=FLAGS.bert, max_steps=10 ** 6)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    trainer = HGANTask(step_config, out, strategy=strategy)
    float(trainer.train_step("train", batch)["total"])  # traces
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        float(trainer.train_step("train", batch)["total"])
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    source = (f"measured here: median of {steps} HGANTask.train_step after one untimed, "
              f"{step_config.model.backbone} at {config.data.image_height}x{config.data.image_width}, "
              f"bert={step_config.model.bert} frozen and run every step, batch {config.data.batch_size}, "
              f"{median * 1e3:.0f} ms/step")
    return config.data.batch_size / median, source


def main(argv):
    del argv
    if _small.apply(SMALL):
        print(f"--small: {FLAGS.identities} identities, batches of {FLAGS.batch_size} at "
              f"{'x'.join(FLAGS.image_size)}, {FLAGS.backbone} + bert={FLAGS.bert}: a check "
              "that the bench runs, its figures say nothing about speed")
    from data_prep import demo, writer
    root = tempfile.mkdtemp(prefix="bench_data_")
    raw, out = os.path.join(root, "raw"), os.path.join(root, "tfr")
    demo.generate(raw, identities=FLAGS.identities, shots=4, seed=0)
    t0 = time.perf_counter()
    manifest = writer.write_dataset("demo", raw, out, log=lambda *_: None)
    write_s = time.perf_counter() - t0
    images = sum(s["images"] for s in manifest["splits"].values())
    print(f"write: {images} images in {write_s:.1f} s = {images / write_s:.0f} images/s "
          f"(validate + noun phrases ({manifest['phrase_tagger']}) + serialise + shard)")

    height, width = (int(x) for x in FLAGS.image_size)
    vocab = FLAGS.vocab or _small.caption_vocab(raw, os.path.join(root, "vocab.txt"))
    # The flip (with its caption swap) on, though the paper preset has none: the heavier path.
    config = preset("paper").replace(vocab_file=vocab, image_height=height, image_width=width,
                                     batch_size=FLAGS.batch_size, random_flip=True)
    tokenizer = pipeline.make_tokenizer(config)
    paths = [("shuffle", config)]
    if FLAGS.identities_per_batch:
        paths.append(("P×K", config.replace(identities_per_batch=FLAGS.identities_per_batch)))
    rates, batch = {}, None
    for name, path_config in paths:
        first_s, rate, first = time_reads(out, path_config, tokenizer, FLAGS.batches)
        batch = batch if batch is not None else first
        rates[name] = rate
        labels = np.unique(first["label"].numpy(), return_counts=True)[1]
        p = path_config.data.identities_per_batch
        shape = (f"{len(labels)} identities x {sorted(set(labels.tolist()))} pairs"
                 if p else f"{len(labels)} identities")
        label = f"P×K, P={p} K={path_config.data.batch_size // p}" if p else "plain shuffle"
        print(f"read ({label}): {FLAGS.batches * config.data.batch_size} pairs at {height}x{width} "
              f"= {rate:.0f} pairs/s (decode + resize + flip + tokenise + phrase masks); "
              f"first batch {first_s:.1f} s; first batch holds {shape}")

    if FLAGS.train_images_per_s > 0:
        train_rate = FLAGS.train_images_per_s
        source = "given with --train_images_per_s"
    elif FLAGS.train_steps > 0:
        batch = {k: v for k, v in batch.items() if k != "caption"}
        train_rate, source = measure_train_rate(out, config, batch, FLAGS.train_steps)
    else:
        print("training rate: not compared (--train_steps=0, no --train_images_per_s)")
        shutil.rmtree(root, ignore_errors=True)
        return
    print(f"for scale: training runs at {train_rate:.2f} images/s ({source}), so the pipeline "
          "is " + ", ".join(f"{rate / train_rate:.0f}x ({name})" for name, rate in rates.items())
          + " faster than the model it feeds")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
