"""The Beam pipeline's overhead on one machine: the same gallery built by ``hgan-search
index`` (``hgan.serving.searcher.build_index``, one process) and by ``hgan-beam-index``
(``hgan.serving.beam_index.build_index``: plan, Beam ``RunInference`` through the
project's handler, assemble), from the same folder of images with the same export.

  python bench/beam_overhead.py --savedmodel=demo_out/savedmodel \\
      --data_dir=demo_out/tfrecords [--images=2000] [--pairs=2] [--workers=2]
  python bench/beam_overhead.py --small

The folder holds --images JPEG/PNG files: the --data_dir test split's images, written again
under new names until there are as many (the tower's cost per image does not depend on
which image it is). Both builds run in this process, alternately (index, pipeline, index,
pipeline, ...: a machine whose speed drifts moves both), each into a new gallery, with the
files in the page cache after an untimed read. Each is timed whole: reading and decoding
the images, the image tower, writing the gallery and its IVF (below ``ann.EXACT_BELOW``
images: none for either), and for the pipeline its planning, Beam's runner and the
assembly of its shards. The export is loaded once, untimed, before (with a 4-image
gallery): both load it through the same cached loader, once per process, so a process of
either pays the same load. The pipeline runs on Beam's default local runner here
(``FnApiRunner``, one worker in this process).
Prints each pair's times and their ratio (pipeline / index), and the median ratio.
``--workers=N`` (N > 1) also times the pipeline once with N worker processes
(``--direct_num_workers=N --direct_running_mode=multi_processing``): each process starts
Python, imports TensorFlow and loads the export, which on a 2-core machine is most of
what they cost at these sizes. Nothing here is asserted.

``--small`` (tests/test_benches.py, with the test run's tiny export and data): 24 images,
one pair, no run with worker processes (tests/test_beam_index.py runs two).
"""
import os
import shutil
import statistics
import tempfile
import time

from absl import app, flags

import _small

FLAGS = flags.FLAGS
SMALL = {"images": 24, "pairs": 1, "workers": 1}


def define_flags():
    flags.DEFINE_string("savedmodel", None, "An hgan-export SavedModel.")
    flags.DEFINE_string("data_dir", None, "TFRecords whose split's images fill the folder.")
    flags.DEFINE_string("split", "test", "The split.")
    flags.DEFINE_integer("images", 2000, "Images in the folder indexed.")
    flags.DEFINE_integer("pairs", 2, "Timed (index, pipeline) pairs.")
    flags.DEFINE_integer("workers", 2, "Also time the pipeline once with this many worker "
                         "processes (1: not).")
    _small.define_flag()


def image_folder(data_dir: str, split: str, count: int, folder: str) -> int:
    """``count`` image files in ``folder``: the split's images, cycled → their bytes."""
    from hgan.data import pipeline
    images = [e["encoded"].numpy() for e in pipeline.split_examples(data_dir, split)]
    os.makedirs(folder)
    total = 0
    for i in range(count):
        data = images[i % len(images)]
        ext = "png" if data[:4] == b"\x89PNG" else "jpg"
        with open(os.path.join(folder, f"{i:07d}.{ext}"), "wb") as f:
            f.write(data)
        total += len(data)
    return total


def timed(build, index: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    report = build(index)
    return time.perf_counter() - t0, report


def main(argv):
    del argv
    _small.apply(SMALL)
    if FLAGS.savedmodel is None or FLAGS.data_dir is None:
        raise app.UsageError("--savedmodel and --data_dir are required (--small too: the "
                             "test run gives its tiny export and data)")
    from hgan.serving import beam_index, searcher

    root = tempfile.mkdtemp(prefix="bench_beam_")
    try:
        folder = os.path.join(root, "images")
        size = image_folder(FLAGS.data_dir, FLAGS.split, FLAGS.images, folder)
        for name in os.listdir(folder):  # into the page cache, untimed
            with open(os.path.join(folder, name), "rb") as f:
                f.read()
        print(f"{FLAGS.images:,} images ({size / 2**20:.1f} MiB) of the {FLAGS.split} split "
              f"in a folder; export {FLAGS.savedmodel}", flush=True)

        def index(path):
            return searcher.build_index(FLAGS.savedmodel, path, images=folder,
                                        log=lambda *_: None)

        def pipeline(path, beam_args=()):
            return beam_index.build_index(FLAGS.savedmodel, path, images=folder,
                                          beam_args=list(beam_args), log=lambda *_: None)

        # Untimed: the export loaded once in this process (index and the pipeline's
        # in-process worker share the loader's cache) and its signature's first call.
        warm = os.path.join(root, "warm")
        image_folder(FLAGS.data_dir, FLAGS.split, 4, warm)
        searcher.build_index(FLAGS.savedmodel, os.path.join(root, "warm_index"), images=warm,
                             log=lambda *_: None)
        ratios = []
        for p in range(FLAGS.pairs):
            t_index, a = timed(index, os.path.join(root, f"index{p}"))
            t_beam, b = timed(pipeline, os.path.join(root, f"beam{p}"))
            assert a["images"] == b["images"] == FLAGS.images, (a["images"], b["images"])
            ratios.append(t_beam / t_index)
            print(f"pair {p + 1}: index {t_index:.1f} s ({FLAGS.images / t_index:.1f} images/s),"
                  f" pipeline (1 worker) {t_beam:.1f} s ({FLAGS.images / t_beam:.1f} "
                  f"images/s): ratio {ratios[-1]:.2f}", flush=True)
        if FLAGS.workers > 1:
            args = [f"--direct_num_workers={FLAGS.workers}",
                    "--direct_running_mode=multi_processing"]
            t_many, c = timed(lambda path: pipeline(path, args), os.path.join(root, "many"))
            assert c["images"] == FLAGS.images, c["images"]
            print(f"pipeline with {FLAGS.workers} worker processes: {t_many:.1f} s "
                  f"({FLAGS.images / t_many:.1f} images/s; each process imports TensorFlow "
                  f"and loads the export)", flush=True)
        print(f"pipeline overhead on one machine, one worker: {statistics.median(ratios):.2f}x "
              f"index's time (median of {len(ratios)} pairs; target <= 1.3)", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
