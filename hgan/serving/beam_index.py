"""``hgan-search index`` as an Apache Beam pipeline (``hgan-beam-index``): the same gallery,
encoded by as many workers as the runner gives (worker processes on this machine, or
Dataflow, Flink, Spark workers).

Three steps, each resumable:

1. **Plan** (the launching process). The images not yet in the gallery are cut into work
   units in gallery order: runs of ``unit_size`` images of a folder or file list, or one
   TFRecord file each. The plan goes to the work folder (``plan.json`` and one
   ``units/unit-NNNNNN.json`` per unit) once; a re-run reuses it.
2. **Encode** (the Beam pipeline, over the units without a shard): read each unit's images
   (a file that cannot be read is reported and skipped), ``RunInference`` with a keyed
   model handler (``EncodeImageHandler``) that loads the SavedModel once per worker
   process and calls its ``encode_image`` signature by name (a file the model refuses is
   found and skipped as ``index`` does, not failing its batch), then group the results
   by unit and write one shard per unit (``shards/unit-NNNNNN.npz``: paths, every
   ``encode_image`` output in the gallery's dtype, or in float32 for an int8 or pq
   gallery, which the gallery codes as it appends them; the skipped files), under a temporary
   name renamed when complete. With a trained quantizer (``--quantizer``, e.g. from
   ``hgan-search quantizer``), each shard also holds its unit's IVF lists.
3. **Assemble** (the launching process). The shards are appended to the gallery in unit
   order, one commit per unit, so a stop half-way leaves a prefix that the next run skips.
   A new pq gallery's codebooks are ``--codebook``'s, or trained on the tables of the first
   shards' ``searcher.CODEBOOK_SAMPLE`` images.
   The IVF over the global embeddings is then made with FAISS's tools: the shards' IVF
   lists joined by ``merge_from`` (a given quantizer), or, without one, trained on a
   sample of the gallery and filled from it exactly as ``index`` does. The work folder is
   deleted once the gallery holds every shard.

A stopped run (any step) is resumed by running the same command: finished units are not
encoded again, and a path enters the gallery once. The work folder is read and written
through Beam's ``FileSystems`` (a local folder, or ``gs://`` on Dataflow), the gallery is
written by the launching process (``hgan.serving.gallery``).

Beam's own TensorFlow handlers are not used: they import ``tensorflow_hub`` (which needs
``pkg_resources``) and load through Keras; ``EncodeImageHandler`` calls
``tf.saved_model.load`` and the contract's signature only. This module imports ``hgan``
first, which sets ``TF_USE_LEGACY_KERAS=1`` in every worker that unpickles the handler.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import uuid
from typing import Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import (KeyedModelHandler, ModelHandler, PredictionResult,
                                           RunInference)
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from hgan.data import pipeline as data_pipeline
from hgan.serving import ann, codec, gallery, searcher
from hgan.serving.savedmodel import ENCODE_IMAGE, GLOBAL, check_contract

PLAN = "plan.json"
QUANTIZER = "quantizer.faiss"  # the workers' copy of --quantizer, in the work folder
DEFAULT_RUNNER = "FnApiRunner"  # runs here without a download (DirectRunner fetches Prism)
DEFAULT_UNIT_SIZE = 500


class NothingIndexed(ValueError):
    """Every image of the run was skipped (and the gallery holds none)."""


def _join(*parts: str) -> str:
    return FileSystems.join(*parts)


def _unit_file(work_dir: str, unit: int) -> str:
    return _join(work_dir, "units", f"unit-{unit:06d}.json")


def _shard_file(work_dir: str, unit: int) -> str:
    return _join(work_dir, "shards", f"unit-{unit:06d}.npz")


def _open(path: str):
    """A file for reading, local or ``gs://``; a missing one is FileNotFoundError."""
    if not FileSystems.exists(path):
        raise FileNotFoundError(f"{path} not found")
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _read(path: str) -> bytes:
    with _open(path) as f:
        return f.read()


def _write(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` under a temporary name, then renames it: ``path`` exists
    only complete (a stopped worker leaves a temporary file that nothing reads)."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(tmp) as f:
        f.write(data)
    FileSystems.rename([tmp], [path])


def _read_image(file: str) -> bytes:
    """An image's bytes: a local path as ``index`` reads it, a ``scheme://`` path through
    Beam's file systems (``gs://`` on Dataflow)."""
    if "://" in file:
        return _read(file)
    return searcher.read_file(file)


# --- 1. plan --------------------------------------------------------------------------------
def make_plan(savedmodel: str, index: str, work_dir: str, images=None, data_dir=None,
              split="test", unit_size: int = DEFAULT_UNIT_SIZE, dtype: str = "float16",
              quantizer: Optional[str] = None, log=print) -> dict:
    """The work units of the images not yet in the gallery ``index``, written to
    ``work_dir``, with a copy of the ``quantizer`` file for the workers
    (``QUANTIZER``); an existing plan there is reused (a resumed run) if it was made for
    the same model, dtype, images and quantizer. Returns the plan ({"model", "dtype",
    "source", "quantizer" (sha256 or None), "units", "images"})."""
    if unit_size < 1:
        raise ValueError(f"unit_size must be >= 1, got {unit_size}")
    fingerprint = gallery.model_fingerprint(savedmodel, open_file=_open)
    staged = None
    if quantizer:
        if not os.path.isfile(quantizer):
            raise FileNotFoundError(f"--quantizer {quantizer} is not a file (an ann.faiss)")
        staged = searcher.read_file(quantizer)
    store = (gallery.Gallery.open(index, model=fingerprint)
             if os.path.exists(os.path.join(index, gallery.MANIFEST)) else None)
    if store is not None and store.manifest["dtype"] != dtype:
        raise ValueError(f"{index} stores {store.manifest['dtype']}, not --dtype={dtype}: "
                         "give its dtype to extend it")
    if images:
        files, source = searcher.image_files(images)
    else:
        source = searcher.tfrecords_source(data_dir, split)
    plan_file = _join(work_dir, PLAN)
    if FileSystems.exists(plan_file):
        plan = json.loads(_read(plan_file))
        mine = {"model": fingerprint, "dtype": dtype, "source": source,
                "quantizer": staged and hashlib.sha256(staged).hexdigest()}
        other = {k: plan.get(k) for k in mine}
        if other != mine:
            raise ValueError(f"{work_dir} holds the plan of another run ({other}, this one "
                             f"{mine}): finish that run, or delete {work_dir} to start anew")
        log(f"resuming the plan in {work_dir}: {plan['units']} units")
        return plan
    if images:
        todo = [[p, f] for p, f in files if store is None or p not in store]
        specs = [{"kind": "files", "items": todo[a:a + unit_size]}
                 for a in range(0, len(todo), unit_size)]
        count = len(todo)
    else:
        specs, count = [], None
        for file in data_pipeline.split_files(data_dir, split):
            if store is not None and all(p in store for p, _ in searcher.read_records([file])):
                continue  # every image of this file is in the gallery
            specs.append({"kind": "tfrecord", "file": file})
    for unit, spec in enumerate(specs):
        _write(_unit_file(work_dir, unit), json.dumps(spec).encode("utf-8"))
    if staged:
        _write(_join(work_dir, QUANTIZER), staged)
    plan = {"model": fingerprint, "dtype": dtype, "source": source,
            "quantizer": staged and hashlib.sha256(staged).hexdigest(), "units": len(specs),
            "images": count}
    _write(plan_file, json.dumps(plan).encode("utf-8"))  # last: the plan is complete
    return plan


# --- 2. encode ------------------------------------------------------------------------------
class EncodeImageHandler(ModelHandler):
    """Image bytes → {``encode_image`` output: row}, or the reason a file is skipped (str):
    the SavedModel is loaded once per worker process (``load_model``; a loaded SavedModel
    cannot be pickled) and called through its contract signature by name."""

    def __init__(self, savedmodel: str, batch_size: int = 32):
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self.savedmodel = savedmodel

    def load_model(self):
        # tf.saved_model.load after ``import tensorflow_text``, once per process (the
        # loader and cache ``index`` and the service use).
        served = searcher._load(self.savedmodel)
        check_contract(served.signatures)
        return served

    def run_inference(self, batch: Sequence[bytes], model, inference_args=None):
        outs = searcher.encode_images(model.signatures[ENCODE_IMAGE], list(batch))
        # The example (the image's bytes) is not carried further than the model.
        return [PredictionResult(None, out) for out in outs]

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(b) for b in batch)


class _ReadUnit(beam.DoFn):
    """unit → ((unit, position, path), image bytes) for each of its images; a file that
    cannot be read → the ``skipped`` output (unit, (position, path, reason))."""

    def __init__(self, work_dir: str):
        self.work_dir = work_dir

    def process(self, unit: int):
        spec = json.loads(_read(_unit_file(self.work_dir, unit)))
        if spec["kind"] == "files":
            for pos, (path, file) in enumerate(spec["items"]):
                try:
                    blob = _read_image(file)
                except OSError as e:
                    yield beam.pvalue.TaggedOutput(
                        "skipped", (unit, (pos, path, searcher.read_error(e))))
                    continue
                yield (unit, pos, path), blob
        else:
            for pos, (path, blob) in enumerate(searcher.read_records([spec["file"]])):
                yield (unit, pos, path), blob


def _by_unit(element, dtype: str):
    """((unit, position, path), PredictionResult) → (unit, (position, path, rows or
    reason)), rows cast to the gallery's dtype (what the shard stores; float32 for a
    coded dtype, which the gallery codes)."""
    (unit, pos, path), result = element
    out = result.inference
    if not isinstance(out, str):
        cast = dtype if dtype in codec.PLAIN else np.float32
        out = {k: np.asarray(v).astype(cast) for k, v in out.items()}
    return unit, (pos, path, out)


class _WriteShard(beam.DoFn):
    """(unit, its results) → the unit's shard file, rows in the unit's order; with a
    quantizer, the unit's global embeddings added to an empty copy of it (ids from 0)."""

    def __init__(self, work_dir: str, quantizer: Optional[str]):
        self.work_dir, self.quantizer = work_dir, quantizer

    def setup(self):
        self._trained = None
        if self.quantizer:
            import faiss
            self._trained = faiss.deserialize_index(
                np.frombuffer(_read(self.quantizer), np.uint8))

    def process(self, element):
        unit, results = element
        results = sorted(results, key=lambda r: r[0])
        kept = [(path, out) for _, path, out in results if not isinstance(out, str)]
        # Which worker process wrote it, and the Keras its TensorFlow was set to use.
        meta = {"paths": [p for p, _ in kept], "worker": f"{socket.gethostname()}:{os.getpid()}",
                "TF_USE_LEGACY_KERAS": os.environ.get("TF_USE_LEGACY_KERAS"),
                "skipped": [{"path": path, "reason": out} for _, path, out in results
                            if isinstance(out, str)]}
        arrays = {}
        if kept:
            arrays = {f"f.{k}": np.stack([out[k] for _, out in kept]) for k in kept[0][1]}
        if kept and self._trained is not None:
            import faiss
            vectors = arrays[f"f.{GLOBAL}"]
            if vectors.shape[1] != self._trained.d:
                raise ValueError(f"the quantizer ({self.quantizer}) is an IVF of "
                                 f"{self._trained.d}-d vectors; the model's global embeddings "
                                 f"are {vectors.shape[1]}-d")
            part = ann.add(ann.empty_copy(self._trained), vectors)
            arrays["ivf"] = faiss.serialize_index(part)
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
        _write(_shard_file(self.work_dir, unit), buffer.getvalue())
        yield unit


def encode_units(savedmodel: str, work_dir: str, units: list[int], options: PipelineOptions,
                 batch_size: int = 32, dtype: str = "float16",
                 quantizer: Optional[str] = None) -> None:
    """Runs the pipeline over ``units`` (step 2) and waits for it."""
    handler = KeyedModelHandler(EncodeImageHandler(savedmodel, batch_size))
    with beam.Pipeline(options=options) as p:
        read = (p | "Units" >> beam.Create(units)
                | "Spread" >> beam.Reshuffle()
                | "Read" >> beam.ParDo(_ReadUnit(work_dir)).with_outputs("skipped",
                                                                           main="images"))
        encoded = (read.images | "Encode" >> RunInference(handler)
                   | "ByUnit" >> beam.Map(_by_unit, dtype))
        _ = ((encoded, read.skipped) | beam.Flatten() | "ByUnitAll" >> beam.GroupByKey()
             | "Shards" >> beam.ParDo(_WriteShard(work_dir, quantizer)))


# --- 3. assemble ----------------------------------------------------------------------------
def _codebook_sample(work_dir: str, plan: dict) -> dict:
    """The features of the first shards' ``searcher.CODEBOOK_SAMPLE`` images (what a new
    pq gallery's codebooks are trained on, as ``index`` trains them)."""
    parts: dict = {}
    count = 0
    for unit in range(plan["units"]):
        shard = np.load(io.BytesIO(_read(_shard_file(work_dir, unit))))
        for name in shard.files:
            if name.startswith("f."):
                parts.setdefault(name[2:], []).append(shard[name])
        count += len(json.loads(str(shard["meta"]))["paths"])
        if count >= searcher.CODEBOOK_SAMPLE:
            break
    return {k: np.concatenate(v)[:searcher.CODEBOOK_SAMPLE] for k, v in parts.items()}


def assemble(index: str, work_dir: str, plan: dict, quantizer: Optional[str] = None,
             ann_threshold: int = ann.EXACT_BELOW, log=print,
             codebook: Optional[str] = None, pq_subdim: Optional[int] = None,
             pq_rotation: bool = True) -> dict:
    """Appends every shard to the gallery ``index`` in unit order (a path already there is
    not added again), then its IVF (module docstring). Returns {"images", "added",
    "skipped", "workers": {worker process: its TF_USE_LEGACY_KERAS}}."""
    store = (gallery.Gallery.open(index, model=plan["model"], writable=True)
             if os.path.exists(os.path.join(index, gallery.MANIFEST)) else None)
    before = len(store) if store is not None else 0
    books = searcher.codebooks_for(plan["dtype"], codebook, store)
    added, skipped, ivf, workers = 0, [], None, {}
    for unit in range(plan["units"]):
        shard = np.load(io.BytesIO(_read(_shard_file(work_dir, unit))))
        meta = json.loads(str(shard["meta"]))
        skipped.extend(meta["skipped"])
        workers[meta["worker"]] = meta["TF_USE_LEGACY_KERAS"]
        paths = meta["paths"]
        keep = [i for i, p in enumerate(paths) if store is None or p not in store]
        if not keep:
            continue  # appended by an earlier run that stopped while assembling
        feats = {name[2:]: shard[name][keep] for name in shard.files if name.startswith("f.")}
        if store is None:
            if plan["dtype"] == "pq" and books is None:
                books = gallery.train_codebooks("pq", _codebook_sample(work_dir, plan),
                                                subdim=pq_subdim, rotate=pq_rotation)
            store = gallery.Gallery.create(index, plan["model"],
                                           {k: v.shape[1:] for k, v in feats.items()},
                                           plan["dtype"], source=plan["source"],
                                           codebooks=books)
        first = len(store)
        store.append([paths[i] for i in keep], feats)
        added += len(keep)
        if quantizer:
            ivf = ivf or _QuantizedIVF(store, quantizer, first)
            ivf.extend(first, len(keep), shard["ivf"] if "ivf" in shard.files
                       and len(keep) == len(paths) else None)
    if store is None or not len(store):
        raise NothingIndexed("no image could be indexed"
                         + (f"; skipped: {skipped[:3]}" if skipped else ""))
    if quantizer:
        (ivf or _QuantizedIVF(store, quantizer, len(store))).save(log)
    else:  # as index: extends, repairs or trains the IVF (nothing to do if it is whole)
        searcher.build_ann(store, ann_threshold, log)
    log(f"gallery of {len(store)} images in {index} (+{added}, {before} before; "
        f"{store.bytes_per_item()} B/image; encoded by {len(workers)} worker processes); "
        f"skipped {len(skipped)}")
    for s in skipped:
        log(f"  skipped {s['path']}: {s['reason']}")
    return {"images": len(store), "added": added, "skipped": skipped, "workers": workers}


class _QuantizedIVF:
    """The gallery's IVF on a trained ``quantizer``, filled in row order while the shards
    are appended: a worker's IVF of its unit is joined by FAISS's ``merge_from`` (ids
    shifted to the unit's first row); rows without one (the gallery's rows from before,
    a unit some of whose paths were already there) are added. The same index as ``index
    --quantizer`` builds, without holding every unit's lists at once."""

    def __init__(self, store, quantizer: str, rows_before: int):
        self.store, self.quantizer = store, quantizer
        vectors = store.array(GLOBAL)
        trained, self.trained_on = searcher.load_quantizer(quantizer, vectors.shape[1])
        self.index, self.joined = ann.empty_copy(trained), 0
        if rows_before:
            ann.add(self.index, vectors[:rows_before])

    def extend(self, first: int, count: int, part: Optional[np.ndarray]) -> None:
        if part is None:
            ann.add(self.index, self.store.array(GLOBAL)[first:first + count], start_id=first)
            return
        import faiss
        self.index.merge_from(faiss.deserialize_index(part), first)
        self.joined += 1

    def save(self, log) -> None:
        searcher.write_ann(os.path.join(self.store.path, searcher.ANN_FILE), self.index,
                           {"trained_on": self.trained_on or len(self.store),
                            "nlist": int(self.index.nlist)})
        log(f"IVF index of {self.index.ntotal} global embeddings ({self.index.nlist} lists) "
            f"on the quantizer of {self.quantizer}: {self.joined} workers' lists joined by "
            "FAISS merge_from")


# --- the command ----------------------------------------------------------------------------
def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Beam's standard options from ``beam_args``; the runner defaults to
    ``DEFAULT_RUNNER``. An argument no Beam option knows is refused (Beam itself would only
    warn and drop it)."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser
    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(beam_args))
    if unknown:
        raise ValueError(f"not an option of this command nor of Beam: {' '.join(unknown)}")
    options = PipelineOptions(list(beam_args))
    if not options.view_as(StandardOptions).runner:
        options.view_as(StandardOptions).runner = DEFAULT_RUNNER
    return options


def build_index(savedmodel: str, index: str, images=None, data_dir=None, split="test",
                work_dir: Optional[str] = None, unit_size: int = DEFAULT_UNIT_SIZE,
                batch_size: int = 32, dtype: str = "float16", quantizer: Optional[str] = None,
                ann_threshold: int = ann.EXACT_BELOW, beam_args: Sequence[str] = (),
                log=print, codebook: Optional[str] = None,
                pq_subdim: Optional[int] = None, pq_rotation: bool = True) -> dict:
    """``hgan-search index``'s gallery built by the Beam pipeline (plan, encode, assemble:
    the module docstring; ``dtype``, ``codebook``, ``pq_subdim`` and ``pq_rotation`` as
    ``index``'s); ``work_dir`` defaults to ``INDEX/.encoding`` and must be readable and
    writable by every worker (``gs://...`` on Dataflow). Returns {"images", "added",
    "skipped", "workers", "units", "encoded_units", "index"}."""
    if bool(images) == bool(data_dir):
        raise ValueError("give exactly one of images or data_dir")
    options = pipeline_options(beam_args)
    work_dir = work_dir or os.path.join(index, ".encoding")
    plan = make_plan(savedmodel, index, work_dir, images, data_dir, split, unit_size, dtype,
                     quantizer, log)
    todo = [u for u in range(plan["units"]) if not FileSystems.exists(_shard_file(work_dir, u))]
    images_note = f" of {plan['images']} images" if plan["images"] is not None else ""
    log(f"{plan['units']} units{images_note}: {plan['units'] - len(todo)} already encoded, "
        f"{len(todo)} to encode (runner {options.view_as(StandardOptions).runner})")
    if todo:
        encode_units(savedmodel, work_dir, todo, options, batch_size, dtype,
                     _join(work_dir, QUANTIZER) if quantizer else None)
    missing = [u for u in range(plan["units"]) if not FileSystems.exists(_shard_file(work_dir, u))]
    if missing:
        raise RuntimeError(f"the pipeline finished without the shards of units {missing[:5]} "
                           f"in {work_dir}: run the command again to encode them")
    if plan["units"] == 0:
        if not os.path.exists(os.path.join(index, gallery.MANIFEST)):
            raise ValueError("no image to index")
        report = {"images": len(gallery.Gallery.open(index)), "added": 0, "skipped": [],
                  "workers": {}}
        log(f"every image is already in {index}")
    else:
        try:
            report = assemble(index, work_dir, plan, quantizer, ann_threshold, log, codebook,
                              pq_subdim, pq_rotation)
        except NothingIndexed:
            FileSystems.delete([work_dir])  # every image was skipped: nothing to resume
            raise
    FileSystems.delete([work_dir])
    return {**report, "units": plan["units"], "encoded_units": len(todo), "index": index}
