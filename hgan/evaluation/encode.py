"""One feature encoder for every family: a split's gallery images and query captions through
a model's two encoders, in the orders of ``hgan.data.pipeline.gallery_dataset`` /
``query_dataset`` (the split's records in shard order, each record's captions in turn)."""
from __future__ import annotations

import time
import weakref
from typing import Callable, Optional, Sequence

import numpy as np

from hgan.config import Config
from hgan.data import pipeline
from hgan.progress import eta


# One set of compiled functions per model, reused by every evaluation of a training run:
# fresh tf.functions per validation re-traced (and XLA re-compiled) every encoder and head
# each time. A tf.Module attribute would be tracked, and exported with the model.
_COMPILED = weakref.WeakKeyDictionary()


def compiled(model, name: str, make: Callable[[Callable], Callable]) -> Callable:
    """The function ``name`` of ``model``, ``make(ref)`` on first use (``ref()`` gives the
    model; a strong reference in the function would keep the cache's key alive)."""
    try:
        fns = _COMPILED.setdefault(model, {})
    except TypeError:  # not weakly referenceable or hashable (a stand-in): not kept
        return make(lambda: model)
    if name not in fns:
        fns[name] = make(weakref.ref(model))
    return fns[name]


def concat(chunks: list[dict]) -> dict:
    """Per-batch dicts of arrays → one dict of arrays concatenated along axis 0."""
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


# Seconds between two progress lines of a long job.
PROGRESS_EVERY = 10.0


class Progress:
    """``log`` a line at most every ``PROGRESS_EVERY`` seconds while a job of ``total``
    items runs (``{what}: {done}/{total}, {rate}/s, ETA``) and one when it ends; nothing
    without a ``log``."""

    def __init__(self, log: Optional[Callable[[str], None]], what: str, total: int,
                 unit: str = ""):
        self.log, self.what, self.total, self.unit = log, what, total, unit
        self.every = PROGRESS_EVERY
        self.done, self.start = 0, time.perf_counter()
        self.last = self.start

    def add(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.log is None or now - self.last < self.every or self.done >= self.total:
            return
        self.last = now
        rate = self.done / (now - self.start)
        self.log(f"{self.what}: {self.done:,}/{self.total:,}{self.unit}, {rate:,.1f}/s, "
                 f"{eta(self.total - self.done, rate)}")

    def end(self) -> None:
        if self.log is not None:
            self.log(f"{self.what}: {self.done:,}{self.unit} in "
                     f"{time.perf_counter() - self.start:.1f} s")


def encode_split(encode_image: Callable, encode_text: Callable, data_dir: str, config: Config,
                 split: str, tokenizer, text_keys: Sequence[str],
                 keep: Optional[Sequence[str]] = None,
                 keep_inputs: Sequence[str] = (),
                 log: Optional[Callable[[str], None]] = None) -> tuple[dict, dict]:
    """Runs both encoders over a split → (texts, images), dicts of numpy arrays.

    ``encode_image(images [B, H, W, 3]) -> {name: [B, ...]}``; ``encode_text(inputs)`` with
    the tokenizer outputs ``text_keys`` → {name: [B, ...]}. texts: the text features plus
    ``label``, ``caption``, ``image_index`` and the tokenizer outputs ``keep_inputs``;
    images: the image features plus ``label``, ``path``. ``keep``: the feature names to hold
    on to (e.g. ``("global",)``: a training set's local features would not fit in memory);
    all if None. ``log``: progress lines (``Progress``), against the manifest's counts.
    """
    wanted = (lambda k: True) if keep is None else (lambda k: k in keep)  # noqa: E731
    counts = pipeline.load_manifest(data_dir)["splits"].get(split, {})
    images = []
    progress = Progress(log, f"encoding the {split} split's images",
                        counts.get("images", 0))
    for batch in pipeline.gallery_dataset(data_dir, config, split):
        feats = {k: v.numpy() for k, v in encode_image(batch["image"]).items() if wanted(k)}
        feats.update(label=batch["label"].numpy(), path=batch["path"].numpy())
        images.append(feats)
        progress.add(len(feats["label"]))
    progress.end()
    texts = []
    progress = Progress(log, f"encoding the {split} split's captions",
                        counts.get("captions", 0))
    for batch in pipeline.query_dataset(data_dir, config, tokenizer, split):
        feats = {k: v.numpy() for k, v in encode_text({k: batch[k] for k in text_keys}).items()
                 if wanted(k)}
        feats.update({k: batch[k].numpy() for k in keep_inputs})
        feats.update(label=batch["label"].numpy(), caption=batch["caption"].numpy(),
                     image_index=batch["image_index"].numpy())
        texts.append(feats)
        progress.add(len(feats["label"]))
    progress.end()
    return concat(texts), concat(images)
