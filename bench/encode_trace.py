"""Benchmark: where an export's ``encode_text`` spends a one-caption call, part by part.

  python bench/encode_trace.py --savedmodel=DIR [--caption="a woman in ..."] [--runs=20]
  python bench/encode_trace.py --small

Loads the SavedModel into a graph session (``tf.compat.v1``: its per-node step statistics
are what TensorFlow records of a signature's inside) and calls ``encode_text`` on one
caption: first ``--runs`` plain calls (their p50 is the call's own time), then ``--runs``
traced ones. Prints the traced call's wall time, the number of nodes a call runs, and the
node times summed per part of the model, heaviest first: the text head's layers (the
bi-LSTM's loop and input product, the attention blocks, the FCs), the token embedder
(BERT), and the tokenizer's and chunker's ragged ops together. Node times run in parallel
on several cores, so the parts add up to more than the wall time; tracing slows each node
too. Asserts nothing.

``--small`` (tests/test_benches.py): the random tiny export of ``bench/_small.py`` (or the
one ``--savedmodel`` names), 2 runs; every line of the full run.
"""
import collections
import os
import statistics
import tempfile
import time

from absl import app, flags

import _small

FLAGS = flags.FLAGS
SMALL = {"runs": 2}
TOP = 12


def define_flags():
    flags.DEFINE_string("savedmodel", None, "An HGAN export (hgan-export).")
    flags.DEFINE_string("data_dir", None, "Unused but by --small (the tiny demo set).")
    flags.DEFINE_string("caption", "a woman in a black baseball cap with a red shoulder bag "
                        "and blue jeans walking", "The one caption encoded.")
    flags.DEFINE_integer("runs", 20, "Plain calls, then traced calls.")
    _small.define_flag()


def part(node: str) -> str:
    """The model part a node of the signature belongs to: the layer under ``text_head`` or
    ``token_embeddings`` (two name levels), else "tokenizer and chunker" for the ragged
    and string ops around them, else the node's own first name."""
    names = node.split("/")
    for scope in ("text_head", "token_embeddings"):
        if scope in names:
            at = names.index(scope)
            return "/".join(names[at:at + (3 if scope == "text_head" else 1)])
    inner = [n for n in names if not n.startswith(("StatefulPartitionedCall", "Func"))]
    if inner and inner[0].startswith(("Ragged", "Regex", "Unicode", "Wordpiece", "CaseFold",
                                      "String", "StaticRegex", "Pad", "hash_table")):
        return "tokenizer and chunker"
    return inner[0] if inner else names[0]


def main(argv):
    del argv
    if FLAGS.savedmodel is None and not FLAGS.small:
        raise app.UsageError("--savedmodel is required (or --small)")
    with tempfile.TemporaryDirectory(prefix="encode_trace_small_") as root:
        if _small.apply(SMALL):
            _small.data_and_export(root)
        trace()


def trace():
    import numpy as np
    import tensorflow_text  # noqa: F401  (the tokenizer's ops)
    from hgan.tf_compat import tf

    tf.compat.v1.disable_eager_execution()
    session = tf.compat.v1.Session()
    meta = tf.compat.v1.saved_model.load(session, ["serve"], FLAGS.savedmodel)
    signature = meta.signature_def["encode_text"]
    feed = {signature.inputs["sentences"].name: np.array([FLAGS.caption.encode()])}
    fetch = {k: v.name for k, v in signature.outputs.items()}
    for _ in range(3):
        session.run(fetch, feed)
    plain = []
    for _ in range(FLAGS.runs):
        t0 = time.perf_counter()
        session.run(fetch, feed)
        plain.append(time.perf_counter() - t0)
    options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
    summed, nodes, traced = collections.Counter(), collections.Counter(), []
    for _ in range(FLAGS.runs):
        metadata = tf.compat.v1.RunMetadata()
        t0 = time.perf_counter()
        session.run(fetch, feed, options=options, run_metadata=metadata)
        traced.append(time.perf_counter() - t0)
        for device in metadata.step_stats.dev_stats:
            for node in device.node_stats:
                if node.node_name.endswith("StatefulPartitionedCall"):
                    continue  # a function call's own time is the time of its nodes
                summed[part(node.node_name)] += node.all_end_rel_micros
                nodes[part(node.node_name)] += 1
    runs = FLAGS.runs
    print(f"{os.path.basename(os.path.normpath(FLAGS.savedmodel))}: encode_text of one "
          f"caption ({len(FLAGS.caption.split())} words)")
    print(f"  plain call p50 {statistics.median(plain) * 1e3:.2f} ms; traced call p50 "
          f"{statistics.median(traced) * 1e3:.2f} ms, {sum(nodes.values()) / runs:,.0f} "
          f"nodes, node times summed {sum(summed.values()) / runs / 1e3:.2f} ms")
    for name, micros in summed.most_common(TOP):
        print(f"  {micros / runs / 1e3:7.3f} ms  {nodes[name] / runs:6.0f} nodes  {name}")
    print(f"node times summed over the {min(TOP, len(summed))} heaviest parts: "
          f"{sum(m for _, m in summed.most_common(TOP)) / runs / 1e3:.2f} ms")


if __name__ == "__main__":
    define_flags()
    app.run(main)
