"""Benchmark: where one (text, image) pair's time goes in the local heads' C kernel.

  python bench/local_head_parts.py [--images=3074] [--texts=6156] [--regions=15]
                                   [--hidden=512] [--word_slots=32] [--real_words=28]
                                   [--phrase_slots=5] [--real_phrases=4] [--k1=4] [--k2=2]
                                   [--pairs=4000] [--seed=1]
  python bench/local_head_parts.py --small

Compiles ``bench/native/local_head_parts.c`` (which includes the package's
``hgan/evaluation/native/local_head.c`` whole) with the system's C compiler for this CPU
and runs it on one thread: each pair's γ product (``product``: the side the pairs share
turned [H, W] once, the other side's rows streamed), its transposed copy, the selections
of Eqs. 5 and 7, and Eq. 8 on the picks (``score_selected``), in microseconds a pair, and
the product's GFLOP/s (counting the vector lanes it fills, padding included). For each
level (word: ``--word_slots``, phrase: ``--phrase_slots``) and each side kept (the text,
as a text query's candidates stream their images; the image, as an image query's stream
their texts), with the streamed rows drawn from a CUHK-PEDES-sized table (``cold``: from
memory) or the same item every pair (``warm``: from cache). These are the figures behind
the scorer's choice of the side to keep (``hgan_scoring._native_pairs``). Asserts
nothing. Without a C compiler it says so and prints nothing else.

``--small`` (tests/test_benches.py): tiny tables, every line of the full run.
"""
import os
import shlex
import shutil
import subprocess
import tempfile

from absl import app, flags

import _heads
import _small

FLAGS = flags.FLAGS
SMALL = {"images": 20, "texts": 20, "hidden": 32, "pairs": 50}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "bench", "native", "local_head_parts.c")
KERNEL = os.path.join(ROOT, "hgan", "evaluation", "native")


def define_flags():
    flags.DEFINE_integer("images", 3074, "Images of the table a text query's candidates "
                         "come from (CUHK-PEDES test).")
    flags.DEFINE_integer("texts", 6156, "Texts of the table an image query's candidates "
                         "come from.")
    flags.DEFINE_integer("word_slots", 32, "Word slots R of the word level.")
    flags.DEFINE_integer("real_words", 28, "Real words among them.")
    flags.DEFINE_integer("phrase_slots", 5, "Phrase slots R of the phrase level.")
    flags.DEFINE_integer("real_phrases", 4, "Real phrases among them.")
    flags.DEFINE_integer("pairs", 4000, "Pairs timed per line.")
    flags.DEFINE_integer("seed", 1, "Seed of the random tables and candidates.")
    _heads.define_shape_flags()
    _small.define_flag()


def main(argv):
    del argv
    _small.apply(SMALL)
    command = shlex.split(os.environ.get("CC") or "cc")
    if shutil.which(command[0]) is None:
        print(f"no C compiler ({command[0]}): nothing to measure")
        return
    with tempfile.TemporaryDirectory(prefix="local_head_parts_") as folder:
        binary = os.path.join(folder, "parts")
        subprocess.run([*command, "-O3", "-march=native", "-fopenmp-simd", "-std=c99",
                        "-D_POSIX_C_SOURCE=200809L", "-I", KERNEL, "-o", binary, SOURCE,
                        "-lm"], check=True)
        print(f"one thread, {FLAGS.pairs:,} pairs a line, H = {FLAGS.hidden}, "
              f"{FLAGS.regions} regions, k1 = {FLAGS.k1}, k2 = {FLAGS.k2}; microseconds a "
              "pair")
        for level, slots, real in (("word", FLAGS.word_slots, FLAGS.real_words),
                                   ("phrase", FLAGS.phrase_slots, FLAGS.real_phrases)):
            for kept, items in (("text", FLAGS.images), ("image", FLAGS.texts)):
                for warm in (0, 1):
                    out = subprocess.run(
                        [binary, str(items), str(FLAGS.regions), str(FLAGS.hidden),
                         str(slots), str(real), str(FLAGS.k1), str(FLAGS.k2),
                         str(FLAGS.pairs), str(int(kept == "image")), str(warm),
                         str(FLAGS.seed)], check=True, capture_output=True,
                        text=True).stdout.split()
                    part = dict(zip(out[::2], map(float, out[1::2])))
                    total = sum(part[k] for k in ("product", "transpose", "select", "score"))
                    streamed = "its images" if kept == "text" else "its texts"
                    print(f"{level} ({slots} slots), {kept} kept, {streamed} "
                          f"{'warm' if warm else 'cold'}: {total:.2f} = product "
                          f"{part['product']:.2f} ({part['gflops']:.0f} GFLOP/s) + transpose "
                          f"{part['transpose']:.2f} + select {part['select']:.2f} + Eq. 8 "
                          f"{part['score']:.2f}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
