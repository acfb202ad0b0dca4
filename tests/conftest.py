"""Shared fixtures: a tiny TFRecord dataset and vocab written straight through the schema.

They do not go through ``data_prep`` on purpose: model and pipeline tests should not break
when an importer changes, and importer tests build their own raw-layout fixtures.
"""
import io
import json
import os

import numpy as np
import pytest

from hgan.data import records
from hgan.config import preset
from hgan.tf_compat import tf

COLOURS = ["red", "blue", "green", "black", "white", "yellow"]
GARMENTS = ["shirt", "jacket", "coat"]
WORDS = ["a", "man", "woman", "in", "with", "and", "wearing", "bag", "pants", "shoes", "."]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_vocab(path: str) -> str:
    with open(path, "w") as f:
        f.write("\n".join(SPECIAL + COLOURS + GARMENTS + WORDS) + "\n")
    return path


def _phrase(caption: str, text: str):
    start = caption.encode().index(text.encode())
    return (text, start, start + len(text.encode()))


def _png(colour_index: int, shade: int, size=(24, 12)) -> bytes:
    from PIL import Image
    rng = np.random.default_rng(colour_index * 10 + shade)
    base = np.zeros((*size, 3), np.uint8)
    base[: size[0] // 2, :, colour_index % 3] = 200  # "upper garment" colour per identity
    base[size[0] // 2:, :, (colour_index + 1) % 3] = 120 + 20 * shade
    base = np.clip(base + rng.integers(0, 20, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(base).save(buf, format="PNG")
    return buf.getvalue()


def write_tiny_dataset(root: str, identities: dict | None = None, shots: int = 2) -> str:
    """Writes ``{split}-00000-of-00001.tfrecord`` + manifest for train/val/test."""
    identities = identities or {"train": 6, "val": 3, "test": 3}
    os.makedirs(root, exist_ok=True)
    manifest = {"schema_version": records.SCHEMA_VERSION, "dataset": "tiny", "splits": {},
                "skipped": []}
    offset = 0
    for split, count in identities.items():
        name = records.shard_name(split, 0, 1)
        n_images = n_captions = 0
        with tf.io.TFRecordWriter(os.path.join(root, name)) as w:
            for label in range(count):
                colour = COLOURS[(label + offset) % len(COLOURS)]
                garment = GARMENTS[(label + offset) % len(GARMENTS)]
                for shot in range(shots):
                    c1 = f"a man in a {colour} {garment} with a bag."
                    c2 = f"a man wearing {colour} {garment} and pants."
                    phrases = [[_phrase(c1, f"a {colour} {garment}"), _phrase(c1, "a bag")],
                               [_phrase(c2, f"{colour} {garment}"), _phrase(c2, "pants")]]
                    ex = records.make_example(_png(label + offset, shot), f"{split}/{label}_{shot}.png",
                                              label, str(label + offset), [c1, c2], phrases)
                    w.write(ex.SerializeToString())
                    n_images += 1
                    n_captions += 2
        manifest["splits"][split] = {"images": n_images, "captions": n_captions,
                                     "identities": count, "shards": [name]}
        offset += count
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    return write_tiny_dataset(str(tmp_path_factory.mktemp("tiny_data")))


@pytest.fixture(scope="session")
def tiny_vocab(tmp_path_factory):
    return write_vocab(str(tmp_path_factory.mktemp("vocab") / "vocab.txt"))


@pytest.fixture()
def tiny_config(tiny_vocab):
    return preset("tiny").replace(vocab_file=tiny_vocab, image_height=32, image_width=16)
