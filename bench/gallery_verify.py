"""What a gallery's checksums cost (``hgan.serving.checksums``): at writing, and for a full
``hgan-search verify``, from the page cache and from disk.

  python bench/gallery_verify.py [--n=50000] [--dir=/tmp/gallery_verify_bench]
  python bench/gallery_verify.py --small

Writes a gallery of --n images at the paper's feature sizes (global 512 + word and phrase
tables of 15 × 512 each, float16: 31.7 kB an image) through ``Gallery.append`` in blocks of
1,000 rows, as ``hgan-search index`` does, and prints: the CRC-32 speed of the bytes
appended (the writer's added work, in memory), then ``Gallery.verify`` over the whole
gallery twice: with its files in the page cache (just written), and after asking the
kernel to drop them (``posix_fadvise(DONTNEED)``; what a service starting on a gallery
it has not read sees, at this disk's speed), with a plain read of the same files for
comparison; and what a verify of a 1 M gallery would take at the cold speed. Nothing
here is asserted.

``--small`` (tests/test_benches.py): 500 images; every line of the full run.
"""
import os
import shutil
import time
import zlib

from absl import app, flags
import numpy as np

import _small
from hgan.serving import gallery

FLAGS = flags.FLAGS
SMALL = {"n": 500, "dir": "/tmp/gallery_verify_bench_small"}
FEATURES = {"global": (512,), "word": (15, 512), "phrase": (15, 512)}  # the paper's sizes
BLOCK = 1000


def define_flags():
    flags.DEFINE_integer("n", 50_000, "Images in the gallery.")
    flags.DEFINE_string("dir", "/tmp/gallery_verify_bench", "Scratch folder (deleted at the "
                        "end).")
    _small.define_flag()


def drop_from_cache(folder: str) -> None:
    """Asks the kernel to forget the folder's file pages (clean pages only: written and
    fsynced), so the next read comes from disk."""
    for name in os.listdir(folder):
        fd = os.open(os.path.join(folder, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def plain_read(folder: str) -> tuple[int, float]:
    """Reads every file of the folder once (4 MiB blocks) → (bytes, seconds)."""
    total, began = 0, time.perf_counter()
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                total += len(block)
    return total, time.perf_counter() - began


def main(argv):
    del argv
    _small.apply(SMALL)
    shutil.rmtree(FLAGS.dir, ignore_errors=True)
    rng = np.random.default_rng(0)
    block = {k: rng.normal(size=(BLOCK, *s)).astype(np.float16) for k, s in FEATURES.items()}
    store = gallery.Gallery.create(FLAGS.dir, "bench", FEATURES, dtype="float16")
    began = time.perf_counter()
    for a in range(0, FLAGS.n, BLOCK):
        n = min(BLOCK, FLAGS.n - a)
        store.append([f"img/{a + i:08d}.jpg" for i in range(n)],
                     {k: v[:n] for k, v in block.items()})
    written = time.perf_counter() - began
    store.close()
    size = sum(os.path.getsize(os.path.join(FLAGS.dir, f)) for f in os.listdir(FLAGS.dir))
    print(f"gallery: {FLAGS.n:,} images × {store.bytes_per_item():,} B (float16, paper sizes) "
          f"= {size / 1e6:,.1f} MB on disk, written in {written:.1f} s "
          f"({size / 1e6 / written:,.0f} MB/s, fsync per block of {BLOCK:,})")

    data = b"".join(v.tobytes() for v in block.values())
    began, rounds = time.perf_counter(), 0
    while time.perf_counter() - began < 1.0:
        zlib.crc32(data)
        rounds += 1
    crc_speed = len(data) * rounds / 1e6 / (time.perf_counter() - began)
    print(f"CRC-32 of appended bytes (the writer's added work, in memory): "
          f"{crc_speed:,.0f} MB/s")

    opened = gallery.Gallery.open(FLAGS.dir)
    warm = opened.verify()
    print(f"verify, files in the page cache: {warm.checked_bytes / 1e6:,.1f} MB in "
          f"{warm.seconds:.2f} s = {warm.mb_per_s:,.0f} MB/s ({'clean' if warm.ok else 'DAMAGED'})")
    drop_from_cache(FLAGS.dir)
    cold = opened.verify()
    drop_from_cache(FLAGS.dir)
    read_bytes, read_s = plain_read(FLAGS.dir)
    print(f"verify, files dropped from the cache first: {cold.mb_per_s:,.0f} MB/s; a plain "
          f"read of the same files: {read_bytes / 1e6 / read_s:,.0f} MB/s")
    million = 1_000_000 * store.bytes_per_item() / 1e6
    print(f"a 1 M-image gallery ({million / 1e3:,.1f} GB): verify {million / cold.mb_per_s:,.0f} s "
          f"from disk, {million / warm.mb_per_s:,.0f} s from the page cache")
    shutil.rmtree(FLAGS.dir, ignore_errors=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
