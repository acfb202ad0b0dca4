"""Writes one dataset as sharded TFRecords (``hgan.data.records`` schema) and ``manifest.json``.

Output folder ``OUT``::

    OUT/train-00000-of-00035.tfrecord ...   one tf.train.Example per image
    OUT/manifest.json                       counts, shard names, label maps, skipped records,
                                            caption lengths (hgan.data.caption_stats)

The copy is checked first (``data_prep.check``): one that cannot be imported at all stops
the import before ``OUT`` is touched. Guarantees, so that a reader can trust any manifest it finds:

* a shard only ever appears under its final name complete (written to a hidden temporary
  file in ``OUT``, fsync'ed, then ``os.replace``'d);
* the previous manifest is deleted before anything else and the new one is written last
  (atomically too), so an interrupted run leaves no manifest at all;
* shards of an earlier run that are not part of this one are deleted;
* the same input gives byte-identical shards: file order, sorted label maps, deterministic
  proto serialisation, no timestamps.
"""
from __future__ import annotations

import collections
import contextlib
import glob
import json
import math
import os
from typing import Callable, Iterator, Sequence

from data_prep import check, importers
from hgan.data import caption_stats
from hgan.data import phrases
from hgan.data import records
from hgan.data import word_vocab
from hgan.tf_compat import tf

DEFAULT_IMAGES_PER_SHARD = 1000
MANIFEST = "manifest.json"
PROGRESS_EVERY = 1000

Log = Callable[[str], None]


def write_dataset(dataset: str, data_dir: str, output_dir: str,
                  images_per_shard: int = DEFAULT_IMAGES_PER_SHARD,
                  log: Log = print, tagger: str = "auto", vocab_file: str = "") -> dict:
    """Imports ``data_dir`` (layout ``dataset``) and writes it to ``output_dir``.

    Args:
      tagger: the noun-phrase tagger (``hgan.phrases.resolve_tagger``): "auto" (by what is
        installed), "perceptron" or "fallback". A tagger that is not installed fails here,
        before ``output_dir`` is touched. The manifest records the request
        (``phrase_tagger_requested``) and the tagger used (``phrase_tagger``).
      vocab_file: the WordPiece vocabulary the caption lengths are counted with (the one
        training will use); "" counts words only.

    Returns:
      the manifest, as written to ``output_dir/manifest.json``.

    Raises:
      check.CopyError: the copy cannot be imported at all (``check.check`` says why; its
        report is logged first). Nothing is written then.
    """
    if images_per_shard < 1:
        raise ValueError(f"images_per_shard must be >= 1, got {images_per_shard}")
    requested, tagger = tagger, phrases.resolve_tagger(tagger)
    report = check.check(dataset, data_dir)
    log(report.text())
    if not report.importable:
        raise check.CopyError(report)
    os.makedirs(output_dir, exist_ok=True)
    _remove_unfinished(output_dir)
    kept, skipped = _read(dataset, data_dir, log)
    root = importers.image_root(dataset, data_dir)
    splits, label_maps, lengths = {}, {}, {}
    for split in importers.SPLITS[dataset]:
        split_records = [r for r in kept if r.split == split]
        if not split_records:
            continue
        labels = {identity: label for label, identity
                  in enumerate(sorted({r.identity for r in split_records}))}
        shards, phrase_counts = _write_split(output_dir, split, split_records, labels, root,
                                             tagger, images_per_shard, log)
        lengths[split] = {**caption_stats.count([c for r in split_records for c in r.captions],
                                                vocab_file),
                          "phrases": phrase_counts}
        splits[split] = {
            "images": len(split_records),
            "captions": sum(len(r.captions) for r in split_records),
            "identities": len(labels),
            "shards": shards,
        }
        label_maps[split] = {str(label): identity for identity, label in labels.items()}
    _remove_stale_shards(output_dir, {name for s in splits.values() for name in s["shards"]})
    # IATV §3.2.1's word vocabulary, from the training captions only (data.text_vocab=words).
    vocab = word_vocab.build(c for r in kept if r.split == "train" for c in r.captions)
    vocab_path = os.path.join(output_dir, word_vocab.FILE)
    word_vocab.write(vocab_path, vocab)
    words_sha256 = caption_stats.fingerprint(vocab_path)["sha256"]
    counted_with = ({"source": vocab_file, **caption_stats.fingerprint(vocab_file)}
                    if vocab_file else None)
    manifest = {
        "schema_version": records.SCHEMA_VERSION,
        "dataset": dataset,
        "splits": splits,
        "skipped": [skip._asdict() for skip in skipped],
        "label_maps": label_maps,
        "phrase_tagger": tagger,
        "phrase_tagger_requested": requested,
        "word_vocab": {"file": word_vocab.FILE, "tokens": len(vocab), "sha256": words_sha256},
        "caption_lengths": caption_stats.summarize(lengths, counted_with, words_sha256),
    }
    differences = importers.size_differences(dataset, splits)
    if dataset in importers.EXPECTED_SIZES:
        manifest["official_sizes"] = {"matches": not differences, "differences": differences}
    with _atomic(os.path.join(output_dir, MANIFEST)) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
            f.write("\n")
    _log_summary(manifest, log)
    return manifest


def _read(dataset: str, data_dir: str, log: Log
          ) -> tuple[list[importers.Record], list[importers.Skip]]:
    kept, skipped = [], []
    for count, item in enumerate(importers.iter_records(dataset, data_dir), 1):
        (skipped if isinstance(item, importers.Skip) else kept).append(item)
        if count % PROGRESS_EVERY == 0:
            log(f"{count} records read ({len(skipped)} skipped)")
    log(f"{len(kept) + len(skipped)} records read: {len(kept)} kept, {len(skipped)} skipped")
    return kept, skipped


def _write_split(output_dir: str, split: str, split_records: Sequence[importers.Record],
                 labels: dict[str, int], root: str, tagger: str, images_per_shard: int,
                 log: Log) -> tuple[list[str], list[int]]:
    """Writes a split's shards of about ``images_per_shard`` images; returns their names
    and the number of noun phrases of each caption, in record order."""
    count = math.ceil(len(split_records) / images_per_shard)
    names, phrase_counts = [], []
    for index in range(count):
        # Equal-sized shards (sizes differ by at most one) rather than a small last one.
        shard = split_records[index * len(split_records) // count:
                              (index + 1) * len(split_records) // count]
        name = records.shard_name(split, index, count)
        with _atomic(os.path.join(output_dir, name)) as tmp:
            with tf.io.TFRecordWriter(tmp) as shard_writer:
                for record in shard:
                    found = [phrases.extract_noun_phrases(c, tagger) for c in record.captions]
                    shard_writer.write(_serialize(record, labels[record.identity], root, found))
                    phrase_counts += map(len, found)
        log(f"wrote {name} ({len(shard)} images)")
        names.append(name)
    return names, phrase_counts


def _serialize(record: importers.Record, label: int, root: str,
               found: list[list[tuple[str, int, int]]]) -> bytes:
    try:
        image = importers.load_image(root, record.path)
    except importers.SkipError as e:
        # It passed the same check while being read: the data changed during the run.
        raise RuntimeError(f"{record.path} changed while being converted: {e}") from e
    example = records.make_example(image, record.path, label, record.identity,
                                   record.captions, found)
    # Features is a proto map, whose default serialisation order is unspecified.
    return example.SerializeToString(deterministic=True)


@contextlib.contextmanager
def _atomic(path: str) -> Iterator[str]:
    """Yields a hidden temporary path beside ``path``; it becomes ``path`` only on success."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fsync_dir(folder: str) -> None:
    """Makes a rename durable: it is an update of the folder, not of the file."""
    fd = os.open(folder or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_unfinished(output_dir: str) -> None:
    """Deletes the old manifest (it is rewritten last) and temporary files of a killed run."""
    temporary = glob.glob(os.path.join(glob.escape(output_dir), ".*.tfrecord.tmp"))
    for path in [os.path.join(output_dir, MANIFEST),
                 os.path.join(output_dir, f".{MANIFEST}.tmp"), *temporary]:
        if os.path.exists(path):
            os.remove(path)


def _remove_stale_shards(output_dir: str, keep: set[str]) -> None:
    for path in glob.glob(records.shard_pattern(glob.escape(output_dir), "*")):
        if os.path.basename(path) not in keep:
            os.remove(path)


def _log_summary(manifest: dict, log: Log) -> None:
    for split, info in manifest["splits"].items():
        log(f"{split}: {info['images']} images, {info['captions']} captions, "
            f"{info['identities']} identities, {len(info['shards'])} shards")
    sizes = manifest.get("official_sizes")
    if sizes and not sizes["matches"]:
        missing = sum(s["reason"] == importers.MISSING_IMAGE for s in manifest["skipped"])
        log(f"WARNING: this is not the official {manifest['dataset']} split; results will "
            "not be comparable with the papers':")
        for line in sizes["differences"]:
            log(f"  {line}")
        if missing:
            log(f"  ({missing} records name an image that is not in the image folder: is the "
                "folder the one the annotation file was made for?)")
    elif sizes:
        log(f"sizes match the official {manifest['dataset']} split")
    reasons = collections.Counter(skip["reason"] for skip in manifest["skipped"])
    log(f"skipped {len(manifest['skipped'])} records" + (":" if reasons else ""))
    for reason, count in reasons.most_common():
        log(f"  {count:6d}  {reason}")
    _log_lengths(manifest["caption_lengths"], log)


def _log_lengths(lengths: dict, log: Log) -> None:
    """Per split: each count's percentiles and short histogram, and the presets' cuts."""
    vocab = lengths["wordpiece_vocab"]
    units = {"wordpieces": f"WordPieces ({vocab['source']})" if vocab else None,
             "words": "words", "phrases": "noun phrases"}
    for split, stats in lengths["splits"].items():
        log(f"{split}: length of its {stats['captions']:,} captions")
        for kind, unit in units.items():
            dist = stats[kind]
            if dist is None:
                continue
            log(f"  {unit}: " + "  ".join(f"p{p} {v}" if p != "max" else f"max {v}"
                                          for p, v in dist["percentiles"].items())
                + f"  mean {dist['mean']}")
            log("    " + " | ".join(f"{a}-{b}: {n:,}" if a != b else f"{a}: {n:,}"
                                    for a, b, n in caption_stats.histogram(dist)))
        for name, cut in stats["cut_by_presets"].items():
            tokens, phrases = cut["tokens"], cut.get("phrases")
            line = (f"  {name} caps would cut {'at least ' if not tokens['exact'] else ''}"
                    f"{tokens['cut']:,} ({tokens['share']:.3f} %) over "
                    f"{tokens['max_len'] - caption_stats.FRAME} "
                    f"{caption_stats.UNITS[tokens['counted_in']]}")
            if phrases:
                line += (f", {phrases['cut']:,} ({phrases['share']:.3f} %) over "
                         f"{phrases['max_phrases']} noun phrases")
            log(line)
