"""Token embeddings of a frozen BERT, computed once for every training caption.

A frozen BERT (``bert_trainable=false``, HGAN §3.2's "pretrained BERT ... to extract the
sequence of textual embeddings") gives every caption the same token embeddings at every
step: ``hub.KerasLayer`` runs a non-trainable module in inference mode, so there is no
dropout to differ. Recomputing them was most of a demo step (about 400 of 700 ms at batch
32 on 2 CPU cores). ``TokenCache`` runs the token embedder once over the split's captions
and keeps the result in memory; the training step gathers a batch's rows by caption and
feeds ``text_head`` directly. Only when the whole cache fits ``config.train.token_cache_gib``
(CUHK-PEDES' 68k captions × 64 tokens × 3072 floats would not).

With ``data.random_flip`` a flipped pair's caption has its left and right swapped before it
reaches BERT, and a frozen BERT's contextual embeddings of the swapped caption are not a
rearrangement of the original's: the cache also holds, under its own text, every caption
that the swap changes, so a flipped pair finds its swapped caption's embeddings.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from hgan.data import mirror, pipeline, records
from hgan.config import Config
from hgan.tf_compat import tf
from hgan.modeling.hgan.text import BERT_INPUTS


def cache_bytes(captions: int, config: Config, width: int) -> int:
    return captions * config.data.max_len * width * 4


class TokenCache:
    """caption string → its token embeddings [L, D] (float32), for one split's captions."""

    def __init__(self, captions: list, values: np.ndarray):
        self.size = len(captions)
        self.values = tf.constant(values)
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(captions),
                                                tf.range(len(captions), dtype=tf.int64)), -1)

    def lookup(self, captions: tf.Tensor) -> tf.Tensor:
        """[B] strings → [B, L, D]; a caption outside the cache is an error."""
        rows = self.table.lookup(captions)
        with tf.control_dependencies([tf.debugging.assert_non_negative(
                rows, message="TokenCache: a caption is not in the cache")]):
            return tf.gather(self.values, rows)


def build(model, data_dir: str, config: Config, tokenizer, split: str = "train",
          batch_size: int = 64, log: Callable[[str], None] = print) -> Optional[TokenCache]:
    """The cache of ``split``'s captions, or None when BERT is trained (or absent) or the
    cache would exceed ``config.train.token_cache_gib`` (logged)."""
    if not (config.model.use_bert and not config.model.bert_trainable
            and config.train.token_cache_gib > 0):
        return None
    embedder = model.text_encoder.get_layer("token_embeddings")
    width = int(embedder.output.shape[-1])
    captions = sorted({c for e in tf.data.TFRecordDataset(pipeline.split_files(data_dir, split))
                       for c in records.parse_example(e)["captions"].numpy()})
    originals = len(captions)
    if config.data.random_flip:
        captions = sorted(set(captions) | set(mirrored_forms(captions)))
    need = cache_bytes(len(captions), config, width)
    if need > config.train.token_cache_gib * 2 ** 30:
        log(f"token cache off: {len(captions)} captions would take {need / 2 ** 30:.1f} GiB "
            f"(> token_cache_gib={config.train.token_cache_gib}); BERT runs every step")
        return None
    embed = tf.function(lambda x: embedder(x, training=False), reduce_retracing=True)
    values = np.empty((len(captions), config.data.max_len, width), np.float32)
    for a in range(0, len(captions), batch_size):
        inputs = tokenizer(tf.constant(captions[a:a + batch_size]))
        values[a:a + batch_size] = embed({k: inputs[k] for k in BERT_INPUTS}).numpy()
    extra = len(captions) - originals
    log(f"token cache: {originals} {split} captions"
        + (f" + {extra} with left and right swapped (random_flip)" if extra else "")
        + f", {need / 2 ** 20:.0f} MiB (frozen BERT computed once)")
    return TokenCache(captions, values)


def mirrored_forms(captions: list, batch_size: int = 1024) -> list:
    """The captions that a flip changes, as the flipped pipeline feeds them
    (``hgan.data.mirror``): the captions with "left" or "right" in them, swapped."""
    out = []
    for a in range(0, len(captions), batch_size):
        part = captions[a:a + batch_size]
        swapped = mirror.mirror_captions(tf.constant(part))[0].numpy()
        out += [m for c, m in zip(part, swapped) if m != c]
    return out
