"""What every family's SavedModel shares: request images decoded and checked in-graph, and
an atomic save with the config and checkpoint it came from beside it."""
from __future__ import annotations

import os
import shutil

from hgan.data import pipeline
from hgan.tf_compat import tf

STRINGS = tf.TensorSpec([None], tf.string)


def request_pixels(images, config) -> tf.Tensor:
    """string[N] of JPEG/PNG bytes → [N, H, W, 3] model input; other bytes fail the request
    with a clear message (checked in-graph, before decoding)."""
    def one(encoded):
        known = (tf.equal(tf.strings.substr(encoded, 0, 3), b"\xff\xd8\xff")
                 | tf.equal(tf.strings.substr(encoded, 0, 8), b"\x89PNG\r\n\x1a\n"))
        with tf.control_dependencies([tf.debugging.Assert(
                known, ["encode_image: the bytes are not a JPEG or PNG image"])]):
            return pipeline.preprocess_image(pipeline.decode_image(encoded), config)

    return tf.map_fn(one, images, fn_output_signature=tf.TensorSpec(
        [config.data.image_height, config.data.image_width, 3], tf.float32))


def save_servable(module: tf.Module, signatures: dict, output_dir: str, config,
                  checkpoint_path: str) -> str:
    """Saves ``module`` with ``signatures`` atomically (a temp dir renamed into place), with
    the config and the checkpoint it came from beside it; returns ``output_dir``."""
    tmp = output_dir.rstrip("/") + ".tmp"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    tf.saved_model.save(module, tmp, signatures=signatures)
    with tf.io.gfile.GFile(os.path.join(tmp, "assets.extra_config.json"), "w") as f:
        f.write(config.to_json())
    with tf.io.gfile.GFile(os.path.join(tmp, "checkpoint.txt"), "w") as f:
        f.write(checkpoint_path + "\n")
    if tf.io.gfile.exists(output_dir):
        shutil.rmtree(output_dir)
    os.replace(tmp, output_dir)
    return output_dir
