"""The one TFRecord schema of the project: what a shard holds and how it is written and read.

One ``tf.train.Example`` per **image**, carrying all of that image's captions:

==========================  ==========  =====================================================
key                         type        meaning
==========================  ==========  =====================================================
``image/encoded``           bytes       the original image file, JPEG or PNG, unchanged
``image/path``              bytes       path relative to the dataset's image root (UTF-8)
``image/label``             int64       contiguous identity label within the split, 0..N-1
``image/identity``          bytes       the dataset's own identity id (str of it), UTF-8
``caption/text``            bytes[C]    the C >= 1 captions of the image (UTF-8, NFC)
``caption/phrase_count``    int64[C]    number of noun phrases of each caption
``caption/phrases``         bytes[P]    all noun phrases, caption after caption (P = sum)
``caption/phrase_spans``    int64[2P]   [start, end) UTF-8 byte offsets of each phrase
                                        inside its caption, flattened
==========================  ==========  =====================================================

Phrases are stored as byte spans of their caption rather than as separate strings to be
re-tokenised, so the pipeline can pool the caption's own contextual BERT token embeddings
over each phrase (HGAN §3.2) whatever tokenizer is used later.

``SCHEMA_VERSION`` is written to every ``manifest.json``; bump it when this table or the
manifest's fields change.
"""
from __future__ import annotations

from typing import Sequence

from hgan.tf_compat import tf

SCHEMA_VERSION = 2

FEATURE_SPEC = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/path": tf.io.FixedLenFeature([], tf.string),
    "image/label": tf.io.FixedLenFeature([], tf.int64),
    "image/identity": tf.io.FixedLenFeature([], tf.string),
    "caption/text": tf.io.VarLenFeature(tf.string),
    "caption/phrase_count": tf.io.VarLenFeature(tf.int64),
    "caption/phrases": tf.io.VarLenFeature(tf.string),
    "caption/phrase_spans": tf.io.VarLenFeature(tf.int64),
}


def _bytes(values: Sequence[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(values: Sequence[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def make_example(
    image_bytes: bytes,
    path: str,
    label: int,
    identity: str,
    captions: Sequence[str],
    phrases: Sequence[Sequence[tuple[str, int, int]]],
) -> tf.train.Example:
    """Builds the Example of one image.

    Args:
      image_bytes: the encoded image file.
      path: relative image path (for humans and the search tool).
      label: contiguous identity label within the split.
      identity: the dataset's original identity id.
      captions: C captions.
      phrases: for each caption, its noun phrases as ``(text, start, end)`` with UTF-8 byte
        offsets into that caption.
    """
    if not captions:
        raise ValueError("an image needs at least one caption")
    if len(phrases) != len(captions):
        raise ValueError(f"{len(captions)} captions but phrases for {len(phrases)}")
    flat_text, flat_spans, counts = [], [], []
    for caption, caption_phrases in zip(captions, phrases):
        size = len(caption.encode("utf-8"))
        counts.append(len(caption_phrases))
        for text, start, end in caption_phrases:
            if not 0 <= start < end <= size:
                raise ValueError(f"phrase span {(start, end)} outside caption of {size} bytes")
            flat_text.append(text.encode("utf-8"))
            flat_spans.extend([start, end])
    feature = {
        "image/encoded": _bytes([image_bytes]),
        "image/path": _bytes([path.encode("utf-8")]),
        "image/label": _ints([label]),
        "image/identity": _bytes([str(identity).encode("utf-8")]),
        "caption/text": _bytes([c.encode("utf-8") for c in captions]),
        "caption/phrase_count": _ints(counts),
        "caption/phrases": _bytes(flat_text),
        "caption/phrase_spans": _ints(flat_spans),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one serialized Example into dense / ragged tensors (no image decoding).

    Returns:
      ``encoded`` [] string, ``path`` [] string, ``label`` [] int32, ``identity`` [] string,
      ``captions`` [C] string, ``phrase_spans`` ragged [C, (P_c), 2] int32 and
      ``phrases`` ragged [C, (P_c)] string.
    """
    f = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    counts = tf.sparse.to_dense(f["caption/phrase_count"])
    spans = tf.reshape(tf.cast(tf.sparse.to_dense(f["caption/phrase_spans"]), tf.int32), [-1, 2])
    return {
        "encoded": f["image/encoded"],
        "path": f["image/path"],
        "label": tf.cast(f["image/label"], tf.int32),
        "identity": f["image/identity"],
        "captions": tf.sparse.to_dense(f["caption/text"]),
        "phrase_spans": tf.RaggedTensor.from_row_lengths(spans, counts),
        "phrases": tf.RaggedTensor.from_row_lengths(
            tf.sparse.to_dense(f["caption/phrases"]), counts),
    }


def shard_pattern(data_dir: str, split: str) -> str:
    """Glob of a split's shards: ``{data_dir}/{split}-?????-of-?????.tfrecord``."""
    return f"{data_dir}/{split}-?????-of-?????.tfrecord"


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"
