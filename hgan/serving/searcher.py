"""Text → image search with an exported SavedModel over an on-disk gallery: the library
under ``hgan-search`` (``hgan.cli.search``, whose docstring gives the commands).

``index`` streams images through the model's ``encode_image`` signature in batches (with
progress and ETA) into a ``hgan.serving.gallery`` directory: every output, memory-mapped at
query time. Re-running it skips the images already there, so an interrupted (even killed)
run resumes, a gallery cut short is repaired, and a grown folder is extended;
``--shard=i/N`` indexes every N-th image (N machines), and ``merge`` joins the shards.
Above ``ann.EXACT_BELOW`` images, ``index`` also builds a FAISS IVF index over the global
embeddings (``ann.faiss`` beside the gallery), last, once the rows it covers are
committed; a run extends it by the rows past it, and its quantizer is trained again only
once the gallery has grown past ``RETRAIN_GROWTH`` times the size it was trained at (or
when it is not this gallery's IVF).

``query`` is the papers' two-stage search over the serving contract of
``hgan.serving.savedmodel``: stage 1 ranks the gallery by the cosine of the ``global``
embeddings (the sentence level of HGAN, IATV's stage 1), exactly or through the IVF; stage
2 re-scores each query's ``--rerank_k`` best with the export's ``rerank`` signature (HGAN's
fused score with the Gumbel heads; IATV's two-stage score), as hgan-eval's two_stage mode.
``--rerank_k`` defaults to the export's ``eval.rerank_k`` (its
``assets.extra/config.json``). A result has ``score`` (stage 1's cosine) and, when
re-ranked, ``rerank`` (stage 2's score).
A gallery indexed by another SavedModel is refused. Files in a folder that are not
JPEG/PNG images are skipped and reported. ``Searcher`` serves one checked state of the
gallery (``hgan.serving.snapshot``) until ``reload`` switches to the state on disk.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from typing import Optional

import numpy as np

from hgan.data import pipeline, records
from hgan.progress import eta
from hgan.serving import ann, checksums, codec, gallery, snapshot
from hgan.serving.gallery import ANN_FILE
from hgan.serving.savedmodel import (ENCODE_IMAGE, ENCODE_TEXT, EXPLAIN, FOLD_ROTATIONS,
                                     GLOBAL, RERANK, RERANK_ROTATED, check_contract,
                                     export_config)
from hgan.tf_compat import tf

_EXTENSIONS = (".jpg", ".jpeg", ".png")


@functools.lru_cache(maxsize=4)
def _load(savedmodel: str):
    import tensorflow_text  # noqa: F401  (registers the tokenizer ops the model uses)
    if not tf.io.gfile.exists(os.path.join(savedmodel, "saved_model.pb")):
        raise FileNotFoundError(f"{savedmodel} is not a SavedModel (hgan-export)")
    return tf.saved_model.load(savedmodel)


def _folder_paths(folder: str):
    """(relative path, file) of every JPEG/PNG under ``folder``, sorted."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder} not found")
    for dirpath, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            if name.lower().endswith(_EXTENSIONS):
                path = os.path.join(dirpath, name)
                yield os.path.relpath(path, folder), path


def _list_paths(list_file: str):
    """(path as listed, file) of every line of a file list: one image path a line,
    relative to the list's folder or absolute; blank lines and ``#`` comments skipped, a
    path listed twice taken once. A listed file that cannot be read is skipped and
    reported by ``build_index``, like a file that is not an image."""
    base = os.path.dirname(os.path.abspath(list_file))
    with open(list_file, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    for line in dict.fromkeys(ln for ln in lines if ln and not ln.startswith("#")):
        # A URL (gs://...) is read as it is by hgan-beam-index's workers.
        yield line, line if "://" in line else os.path.join(base, line)


def image_files(images: str) -> tuple[list, dict]:
    """``--images``: a folder (every JPEG/PNG under it) or a ``.txt`` file list → ([(path
    as the gallery stores it, file to read)] in gallery order, where the service finds
    them: the gallery's ``source``)."""
    if os.path.isfile(images):
        if not images.lower().endswith(".txt"):
            raise ValueError(f"--images={images} is a file but not a .txt file list (one image "
                             "path a line); give a folder or a list")
        return list(_list_paths(images)), {"kind": "list", "root": os.path.dirname(
            os.path.abspath(images))}
    return list(_folder_paths(images)), {"kind": "folder", "root": os.path.abspath(images)}


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_records(files: list[str]):
    """(path, image bytes) of every record of these TFRecord files, in order."""
    for ex in tf.data.TFRecordDataset(files).map(records.parse_example):
        yield ex["path"].numpy().decode(), ex["encoded"].numpy()


def tfrecords_source(data_dir: str, split: str) -> dict:
    """The gallery's ``source`` for a split of a data_prep output."""
    return {"kind": "tfrecords", "split": split,
            "data_dir": data_dir if "://" in data_dir else os.path.abspath(data_dir)}


def _sources(images, data_dir, split) -> tuple[list, dict]:
    """[(path, reader)] of ``--images`` or of a TFRecord split, and the gallery's source."""
    if images:
        files, info = image_files(images)
        return [(p, functools.partial(read_file, f)) for p, f in files], info
    return ([(p, (lambda b=blob: b)) for p, blob in
             read_records(pipeline.split_files(data_dir, split))],
            tfrecords_source(data_dir, split))


def encode_images(encode, blobs: list[bytes]) -> list:
    """``encode_image`` over ``blobs`` in one call → one entry per blob: {output: row} or,
    for a blob the model refuses, the reason (str). A bad file fails its whole call (the
    in-graph check), so a failed call is retried one blob at a time to find it."""
    if not blobs:
        return []
    try:
        out = encode(images=tf.constant(blobs))
    except tf.errors.InvalidArgumentError as e:
        if len(blobs) == 1:
            return [e.message.split("\n")[0][:200]]
        return [r for blob in blobs for r in encode_images(encode, [blob])]
    arrays = {k: v.numpy() for k, v in out.items()}
    return [{k: a[i] for k, a in arrays.items()} for i in range(len(blobs))]


def _shard(spec: str | None) -> tuple[int, int]:
    if not spec:
        return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard {spec!r} is not i/N (e.g. 0/4)") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {spec!r}: need 0 <= i < N")
    return i, n


def _progress(log, done: int, total: Optional[int], new: int, start: float) -> None:
    rate = new / max(time.time() - start, 1e-9)
    if total:
        log(f"indexed {done}/{total} images, {rate:.1f} images/s, "
            f"{eta(max(total - done, 0), rate)}")
    else:
        log(f"indexed {done} images, {rate:.1f} images/s")


CODEBOOK_SAMPLE = 4096  # images whose tables train a new pq gallery's codebooks


def codebooks_for(dtype: str, codebook: Optional[str], store=None) -> Optional[dict]:
    """The pq codebooks a gallery is coded with: ``codebook`` (another gallery, e.g. shard
    0's, read by ``gallery.codebooks_of``), checked against an existing ``store``'s own;
    None when they are to be trained (or ``dtype`` has none)."""
    if dtype != "pq" or not codebook:
        return store.codebooks if store is not None and store.codebooks else None
    books = gallery.codebooks_of(codebook)
    if not books:
        raise ValueError(f"--codebook {codebook} is a gallery without pq codebooks (its "
                         "dtype is not pq)")
    if store is not None and not gallery.same_codebooks(books, store.codebooks):
        raise ValueError(f"{store.path} is coded with other codebooks than --codebook "
                         f"{codebook}: extend it without --codebook")
    return books


def build_index(savedmodel: str, index_path: str, images=None, data_dir=None, split="test",
                batch_size: int = 32, log=print, shard: str | None = None,
                dtype: str = "float16", ann_threshold: int = ann.EXACT_BELOW,
                quantizer: Optional[str] = None, codebook: Optional[str] = None,
                ann_kind: str = "auto", pq_subdim: Optional[int] = None,
                pq_rotation: bool = True) -> dict:
    """Encodes every image not yet in the gallery ``index_path`` (created if absent) and
    appends it, batch by batch (each batch committed: an interrupted run resumes, and a
    gallery cut short is repaired to its whole rows and completed), then brings its IVF up
    to date. With ``shard`` "i/N", only every N-th image from the i-th (sorted order).
    ``quantizer``: an IVF file (another gallery's ``ann.faiss``, e.g. shard 0's) whose
    trained quantizer this gallery's IVF adds to, at any size, so shards indexed on N
    machines merge with FAISS's ``merge_from`` (``merge_index``) instead of a new training.
    ``dtype`` (``hgan.serving.codec``): how a new gallery stores the features (an existing
    one keeps its own). A new ``pq`` gallery's codebooks are those of the gallery
    ``codebook`` (shards that ``merge`` joins share them) or, without one, trained on the
    first ``CODEBOOK_SAMPLE`` images encoded, which are committed once they are, with
    ``pq_subdim`` values per one-byte code (``codec.PQ_SUBDIM`` unless given), its rows
    turned by a learnt rotation first unless ``pq_rotation`` is false
    (``gallery.train_codebooks``).
    ``ann_kind``: the IVF's kind (``ann.kinds``). Returns {"images" (in the gallery),
    "added", "skipped", "index"}."""
    served = _load(savedmodel)
    fingerprint = gallery.model_fingerprint(savedmodel)
    check_contract(served.signatures)
    encode = served.signatures[ENCODE_IMAGE]
    names = list(encode.structured_outputs)
    # Where the images live, for a service that shows them (hgan.serving.service).
    source, source_info = _sources(images, data_dir, split)
    i, n = _shard(shard)
    source = source[i::n]
    if os.path.exists(os.path.join(index_path, gallery.MANIFEST)):
        store = gallery.Gallery.open(index_path, model=fingerprint, writable=True)
        if store.repaired:
            # Its IVF may hold rows that were cut, under ids the rows encoded again take.
            _remove_ann(store)
            log(f"{store.repaired}; its IVF is built again")
    else:
        store = None
    books = None
    try:  # however the run ends, the writer lock is released
        books = codebooks_for(dtype, codebook, store)
        todo = [item for item in source if store is None or item[0] not in store]
        log(f"{len(source)} images{f' in shard {i}/{n}' if n > 1 else ''}, "
            f"{len(source) - len(todo)} already indexed, {len(todo)} to encode")
        skipped, batch, added, start = [], [], 0, time.time()
        pending: list = []  # (path, rows) encoded before a new pq gallery's codebooks

        def flush(last: bool = False):
            nonlocal store, added
            kept, rows, blobs = [], [], []
            for path, read in batch:
                try:
                    blobs.append((path, read()))
                except OSError as e:  # a listed file that is missing or unreadable
                    skipped.append({"path": path, "reason": read_error(e)})
            for (path, _), out in zip(blobs, encode_images(encode, [b for _, b in blobs])):
                if isinstance(out, str):
                    skipped.append({"path": path, "reason": out})
                else:
                    kept.append(path)
                    rows.append(out)
            if store is None:
                pending.extend(zip(kept, rows))
                if (dtype == "pq" and books is None and len(pending) < CODEBOOK_SAMPLE
                        and not last) or not pending:
                    return
                kept, rows = [p for p, _ in pending], [r for _, r in pending]
                pending.clear()
            if not kept:
                return
            feats = {k: np.stack([r[k] for r in rows]) for k in names}
            if store is None:
                if dtype == "pq" and books is None:
                    log(f"training pq codebooks on the tables of {len(kept)} images")
                store = gallery.Gallery.create(
                    index_path, fingerprint, {k: v.shape[1:] for k, v in feats.items()},
                    dtype, source=source_info,
                    codebooks=books or gallery.train_codebooks(dtype, feats,
                                                                 subdim=pq_subdim,
                                                                 rotate=pq_rotation))
            store.append(kept, feats)
            added += len(kept)

        for item in todo:
            batch.append(item)
            if len(batch) == batch_size:
                flush()
                batch = []
                _progress(log, len(source) - len(todo) + added + len(skipped), len(source),
                          added, start)
        flush(last=True)
        if store is None or not len(store):
            raise ValueError("no image could be indexed"
                             + (f"; skipped: {skipped[:3]}" if skipped else ""))
        if quantizer:
            _ann_from_quantizer(store, names, quantizer, log)
        else:
            build_ann(store, ann_threshold, log, kind=ann_kind)
        log(f"gallery of {len(store)} images in {index_path} (+{added}; "
            f"{store.bytes_per_item()} B/image); skipped {len(skipped)}")
        for s in skipped:
            log(f"  skipped {s['path']}: {s['reason']}")
        return {"images": len(store), "added": added, "skipped": skipped, "index": index_path}
    finally:
        if store is not None:
            store.close()


def read_error(e: OSError) -> str:
    """Why a file could not be read, as a skipped image's reason."""
    return f"{type(e).__name__}: {e.strerror or e}"


RETRAIN_GROWTH = 2.0  # an IVF is re-trained once the gallery is this many times the size
# its quantizer was trained at (FAISS's nlist ~ 4·sqrt(n) no longer fits); below, new
# images are only added to the inverted lists


def build_ann(store, threshold: int, log, kind: str = "auto") -> None:
    """The IVF over the global embeddings above ``threshold``; below it, removes a stale
    one (exact search). ``kind``: ``ann.KINDS`` or "auto" (``ann.kind_for`` the gallery's
    size); an IVF of another kind is trained anew.

    An IVF that holds the first m rows (checked: ``snapshot.load_ivf``; a killed run can
    leave one that lags) has the rows past them added (ids continue; the quantizer and
    every existing list stay as they are), as FAISS is meant to be extended, while the
    gallery is under ``RETRAIN_GROWTH`` times the size its quantizer was trained at.
    Otherwise (no IVF yet, one that is not this gallery's or cannot be read, a merge, or a
    gallery grown past that), one is trained anew on a sample and filled. It is saved
    whole, in place of the old one (``_save_ann``), after the rows it covers are
    committed, so a reader's IVF always covers a prefix of the rows it reads."""
    path = os.path.join(store.path, ANN_FILE)
    vectors = store.array(GLOBAL)
    n = len(vectors)
    if n < threshold:
        _remove_ann(store)
        return
    try:
        index = snapshot.load_ivf(store)  # memory-mapped: only checked here
    except snapshot.IVFError as e:
        log(f"{e.problem}: training another")
        index = None
    meta = _ann_meta(path) if index is not None else None
    if kind == "auto":
        kind = ann.kind_for(n, vectors.shape[1])
    if meta is None or meta.get("vectors") != index.ntotal or \
            n > RETRAIN_GROWTH * meta["trained_on"] or ann.kind_of(index) != kind:
        index = None  # a sidecar that is not this file's says nothing of its quantizer
    if index is not None and index.ntotal == n:
        return
    if index is not None:
        m = int(index.ntotal)
        index = ann.add(ann.load(path, mmap=False), vectors[m:], start_id=m)
        how = f"extended by {n - m} (quantizer trained at {meta['trained_on']} images kept)"
    else:
        index = ann.build(vectors, threshold=threshold, kind=kind)
        meta = {"trained_on": n, "nlist": int(index.nlist), "kind": kind}
        how = "trained and filled"
    _save_ann(store, index, meta)
    log(f"IVF-{ann.kind_of(index).upper()} index of {index.ntotal} global embeddings "
        f"({index.nlist} lists) in {path}: {how}")


def _remove_ann(store) -> None:
    """Removes the gallery's IVF and its sidecar (a reader that has it open keeps it)."""
    path = os.path.join(store.path, ANN_FILE)
    for stale in (path, path + ".json"):
        if os.path.exists(stale):
            os.remove(stale)


def _ann_meta(ann_path: str) -> Optional[dict]:
    """The sidecar of an IVF file (``{"trained_on", "nlist", "vectors"}``), None without
    one or with one that cannot be read."""
    try:
        with open(ann_path + ".json") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and "trained_on" in meta else None


def _save_ann(store, index, meta: dict) -> None:
    write_ann(os.path.join(store.path, ANN_FILE), index, meta)


def write_ann(path: str, index, meta: dict) -> None:
    """Writes an IVF and its sidecar (``meta`` + the IVF's ``vectors`` and CRC-32, which
    ``hgan-search verify`` checks) beside, then puts
    each in place (``os.replace``): a reader has the old file or the new one, never a
    part; a run killed between the two leaves a sidecar whose ``vectors`` is not the
    IVF's, which the next run trains anew."""
    ann.save(index, path + ".tmp")
    with open(path + ".json.tmp", "w") as f:
        json.dump({**meta, "vectors": int(index.ntotal),
                   "crc32": checksums.file_crc(path + ".tmp")}, f)
    os.replace(path + ".tmp", path)
    os.replace(path + ".json.tmp", path + ".json")


def _ann_from_quantizer(store, names, quantizer: str, log) -> None:
    """The gallery's IVF: every global embedding added to an empty copy of the trained
    IVF in the file ``quantizer`` (rebuilt whole: adding is cheap, training is what is
    shared)."""
    vectors = store.array(GLOBAL)
    trained, trained_on = load_quantizer(quantizer, vectors.shape[1])
    index = ann.add(ann.empty_copy(trained), vectors)
    _save_ann(store, index, {"trained_on": trained_on or len(store),
                             "nlist": int(index.nlist)})
    log(f"IVF index of {index.ntotal} global embeddings ({index.nlist} lists) on the "
        f"quantizer of {quantizer}")


def load_quantizer(quantizer: str, dim: int):
    """The trained IVF in the file ``quantizer`` (``--quantizer``: another gallery's
    ``ann.faiss`` or ``train_quantizer``'s output), checked against the gallery's ``dim``-d
    global embeddings → (IVF, the gallery size it was trained for or None)."""
    if not os.path.isfile(quantizer):
        raise FileNotFoundError(f"--quantizer {quantizer} is not a file (an ann.faiss)")
    try:
        trained = ann.load(quantizer, mmap=False)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"--quantizer {quantizer} cannot be read as an IVF index: "
                         f"{str(e).strip()[-200:]}") from None
    if trained.d != dim:
        raise ValueError(f"--quantizer {quantizer} is an IVF of {trained.d}-d vectors; this "
                         f"gallery's global embeddings are {dim}-d")
    return trained, (_ann_meta(quantizer) or {}).get("trained_on")


def train_quantizer(savedmodel: str, output: str, images=None, data_dir=None, split="test",
                    sample: int = 0, nlist: int = 0, batch_size: int = 32, seed: int = 0,
                    log=print, ann_kind: str = "auto") -> dict:
    """An empty IVF in ``output`` whose quantizer is trained on the global embeddings of a
    seeded random ``sample`` of the images (default: 39 per list, FAISS's minimum without
    a warning), with ``nlist`` lists (default: ``ann.default_nlist`` of all the images).
    Made before any shard is encoded, it lets every ``index --shard=i/N
    --quantizer=output`` (and hgan-beam-index's workers) start at once; their IVFs join
    with FAISS's ``merge_from``. ``ann_kind``: the IVF's kind (``ann.KINDS``; "auto":
    ``ann.kind_for`` all the images). Returns {"images", "sample", "encoded", "nlist",
    "skipped"}."""
    served = _load(savedmodel)
    check_contract(served.signatures)
    encode = served.signatures[ENCODE_IMAGE]
    source, _ = _sources(images, data_dir, split)
    if not source:
        raise ValueError("no image to sample from")
    nlist = int(nlist) or ann.default_nlist(len(source))
    size = min(len(source), int(sample) or 39 * nlist)
    rows = np.sort(np.random.default_rng(seed).choice(len(source), size, replace=False))
    vectors, skipped = [], []
    for a in range(0, size, batch_size):
        batch, blobs = [source[r] for r in rows[a:a + batch_size]], []
        for path, read in batch:
            try:
                blobs.append((path, read()))
            except OSError as e:
                skipped.append({"path": path, "reason": read_error(e)})
        for (path, _), out in zip(blobs, encode_images(encode, [b for _, b in blobs])):
            if isinstance(out, str):
                skipped.append({"path": path, "reason": out})
            else:
                vectors.append(out[GLOBAL])
    if len(vectors) < nlist:
        raise ValueError(f"{len(vectors)} sample images encoded for {nlist} lists: give a "
                         "larger --sample (FAISS needs at least one per list)")
    vectors = np.stack(vectors).astype(np.float32)
    if ann_kind == "auto":
        ann_kind = ann.kind_for(len(source), vectors.shape[1])
    index = ann.train(vectors, nlist, seed, ann_kind)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    write_ann(output, index, {"trained_on": len(source), "nlist": nlist, "kind": ann_kind})
    log(f"IVF-{ann_kind.upper()} quantizer of {nlist} lists trained on {len(vectors)} of {len(source)} images "
        f"(sample of {size}; skipped {len(skipped)}) in {output}")
    return {"images": len(source), "sample": size, "encoded": len(vectors), "nlist": nlist,
            "skipped": skipped}


def _centroid_digest(index) -> str:
    """A digest of an IVF's trained centroids: equal digests, one quantizer."""
    centroids = index.quantizer.reconstruct_n(0, index.nlist)
    return hashlib.sha256(np.ascontiguousarray(centroids, np.float32).tobytes()).hexdigest()


def _shard_ivfs(shards: list[str]):
    """The shards' IVF indexes when every shard has one that holds its rows (checked:
    ``snapshot.load_ivf``), all of them, on one quantizer (``index --quantizer``); else
    None."""
    indexes, digest = [], None
    for shard in shards:
        store = gallery.Gallery.open(shard)
        try:
            index = snapshot.load_ivf(store, mmap=False)
        except snapshot.IVFError:
            return None
        if index is None or index.ntotal != len(store):
            return None
        d = _centroid_digest(index)
        if digest not in (None, d):
            return None
        digest = d
        indexes.append(index)
    return indexes


def merge_index(output: str, shards: list[str], ann_threshold: int = ann.EXACT_BELOW,
                log=print) -> dict:
    """``gallery.merge`` of shard galleries into ``output``, then its IVF index: the shards'
    own IVFs joined by FAISS's ``merge_from`` (``ann.merge``) when they share one trained
    quantizer (``index --quantizer``), else one trained over the merged gallery."""
    store = gallery.merge(output, shards)
    try:  # the merged gallery's writer lock is released however this ends
        sizes = [len(gallery.Gallery.open(s)) for s in shards]
        ivfs = _shard_ivfs(shards)
        if ivfs is not None:
            merged = ann.merge(ivfs, np.cumsum([0] + sizes[:-1]).tolist())
            # The quantizer is the shards' one: the size it was trained at is theirs.
            trained_on = (_ann_meta(os.path.join(shards[0], ANN_FILE)) or {}).get(
                "trained_on")
            _save_ann(store, merged, {"trained_on": trained_on or len(store),
                                      "nlist": int(merged.nlist)})
            log(f"IVF index of {merged.ntotal} global embeddings: the {len(shards)} shards' "
                "IVFs joined by FAISS merge_from (one quantizer, no training)")
        else:
            build_ann(store, ann_threshold, log)
    finally:
        store.close()
    log(f"merged {len(shards)} shards: {len(store)} images in {output}")
    return {"images": len(store), "index": output}


def _text_inputs(signature, texts, encoded) -> dict:
    """The signature's sentence inputs: ``texts`` itself, or ``text_<name>`` from the
    ``encode_text`` output ``encoded``."""
    names = signature.structured_input_signature[1]
    if "texts" in names:
        return {"texts": texts}
    return {n: encoded[n[len("text_"):]] for n in names if n.startswith("text_")}


def _image_inputs(signature, store, rows, unturned=()) -> dict:
    """The signature's ``image_<feature>`` inputs, read from the gallery at ``rows``; the
    tables in ``unturned`` (pq with a rotation) as their rows before the rotation."""
    names = [n for n in signature.structured_input_signature[1] if n.startswith("image_")]
    missing = [n for n in names if n[len("image_"):] not in store.features]
    if missing:
        raise ValueError(f"the gallery lacks {missing}: was it built with this SavedModel?")
    out = {}
    for n in names:
        view = store.array(n[len("image_"):])
        out[n] = tf.constant(np.asarray(
            view.unturned(rows) if n[len("image_"):] in unturned else view[rows], np.float32))
    return out


def _rotations(fold, store) -> Optional[tuple]:
    """(the tables ``fold`` turns, the key of their rotations: the manifest's sha256 of
    each) when each table of ``fold``'s inputs ``rotation_<table>`` is stored with a pq
    rotation, else None."""
    tables = [n[len("rotation_"):] for n in fold.structured_input_signature[1]]
    books = store.manifest.get("codebooks") or {}
    keys = [books.get(codec.rotation_of(t), {}).get("sha256") for t in tables]
    if not all(keys):
        return None
    return tuple(tables), tuple(zip(tables, keys))


def default_rerank_k(savedmodel: str) -> int:
    """The stage-1 candidates evaluation re-ranks for this export: its config's
    ``eval.rerank_k``."""
    return export_config(savedmodel).eval.rerank_k


class Searcher:
    """A SavedModel and a gallery opened once, for many queries (``query``, the service):
    one checked state of the gallery (``snapshot.Snapshot``: memory-mapped, its IVF index
    loaded when it has one), served until ``reload`` replaces it with the state on disk.
    A query reads the state it started with to its end."""

    def __init__(self, savedmodel: str, index_path: str, nprobe: Optional[int] = None):
        if not os.path.isdir(index_path):
            raise FileNotFoundError(f"{index_path} is not a gallery folder (hgan-search index "
                                    "builds one)")
        self.served = _load(savedmodel)
        check_contract(self.served.signatures)
        self.index_path, self.nprobe = index_path, nprobe
        self.fingerprint = gallery.model_fingerprint(savedmodel)
        self.snapshot = snapshot.Snapshot.open(index_path, self.fingerprint, nprobe)
        self.second = self.served.signatures[RERANK]
        signatures = self.served.signatures
        self.rotated = ((signatures[RERANK_ROTATED], signatures[FOLD_ROTATIONS])
                        if RERANK_ROTATED in signatures and FOLD_ROTATIONS in signatures
                        else None)
        self._folds = {}  # the rotations' key → ``fold_rotations``'s output (the last two)
        self.default_rerank_k = default_rerank_k(savedmodel)

    @property
    def store(self) -> gallery.Gallery:
        return self.snapshot.store

    @property
    def stage1(self) -> ann.Searcher:
        return self.snapshot.stage1

    def __len__(self) -> int:
        return len(self.snapshot)

    def changed(self) -> bool:
        """Whether the gallery on disk differs from the state served (a cheap ``stat``)."""
        return snapshot.state_key(self.index_path) != self.snapshot.key

    def reload(self) -> dict:
        """Opens the gallery as it is on disk and, once it checks out, serves it in place of
        the current state, in one step; a state that does not check out raises (its
        file and what to do) and the current one stays. → {"images", "previous"}."""
        fresh = snapshot.Snapshot.open(self.index_path, self.fingerprint, self.nprobe,
                                       previous=self.snapshot)
        previous, self.snapshot = self.snapshot, fresh
        return {"images": len(fresh), "previous": len(previous)}

    def _folds_for(self, state) -> Optional[tuple]:
        """(the tables read before their rotation, the export's ``fold_rotations`` of
        them) for ``state``'s gallery when the export has the rotated re-rank and those
        tables are stored with pq rotations, else None (the plain ``rerank`` on decoded
        rows). Folded once per set of rotations (by their sha256 in the manifest), so a
        reload that keeps them, e.g. after the gallery grew, folds nothing again."""
        found = self.rotated and _rotations(self.rotated[1], state.store)
        if not found:
            return None
        tables, key = found
        folded = self._folds.get(key)
        if folded is None:
            turns = {f"rotation_{t}": tf.constant(state.store.array(t).codec.rotation)
                     for t in tables}
            folded = (tables, self.rotated[1](**turns))
            # A dict replaced whole: queries on other threads read one or the other.
            self._folds = {**dict(list(self._folds.items())[-1:]), key: folded}
        return folded

    def _rerank(self, state, texts, encoded, rows) -> np.ndarray:
        """Stage 2's scores [len(rows)] of the query against the gallery's ``rows``."""
        folded = self._folds_for(state)
        if folded is None:
            sig, unturned, extra = self.second, (), {}
        else:
            sig, (unturned, extra) = self.rotated[0], folded
        out = sig(**_text_inputs(sig, texts, encoded),
                  **_image_inputs(sig, state.store, rows, unturned), **extra)
        return out["score"].numpy()[0]

    def query(self, text: str, top_k: int = 10, rerank_k: Optional[int] = None) -> list[dict]:
        """The ``top_k`` gallery images for ``text``, best first: [{path, row, score (stage
        1's cosine), rerank (stage 2's score, on the re-ranked ones)}]; ``rerank_k`` None:
        the export's ``eval.rerank_k``."""
        if not text.strip():
            raise ValueError("the query is empty")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        rerank_k = self.default_rerank_k if rerank_k is None else int(rerank_k)
        if rerank_k < 0:
            raise ValueError(f"rerank_k must be >= 0, got {rerank_k}")
        state = self.snapshot  # one state for the whole query, whatever a reload does
        texts = tf.constant([text])
        encoded = self.served.signatures[ENCODE_TEXT](sentences=texts)
        vector = encoded[GLOBAL].numpy()
        scores, ids = state.stage1.search(vector, max(top_k, rerank_k))
        keep = ids[0] >= 0  # the IVF pads with -1 when it finds fewer
        scores, ids = scores[0][keep], ids[0][keep]
        second = {}
        head = ids[:rerank_k]
        if len(head):
            rows = np.sort(head)  # memory-map reads in file order
            second = dict(zip(rows.tolist(), self._rerank(state, texts, encoded, rows).tolist()))
        paths = state.store.paths()
        results = [{"path": paths[i], "row": int(i), "score": float(s),
                    **({"rerank": second[i]} if i in second else {})}
                   for i, s in zip(ids.tolist(), scores.tolist())]
        # Stage 2 orders its head (ties keep stage-1 order); the rest follow in stage-1 order.
        head = sorted((r for r in results if "rerank" in r), key=lambda r: -r["rerank"])
        return (head + [r for r in results if "rerank" not in r])[:top_k]

    def explain(self, text: str, row: int) -> dict:
        """Fig. 4 for one result: which words each region of gallery image ``row`` picks
        for ``text`` (the export's ``explain``) → {"row", "path", "words",
        "regions": [[{"word", "weight"}, ...] per region, heaviest first]}."""
        sig = self.served.signatures
        if EXPLAIN not in sig:
            raise LookupError("this model exports no word-level selections to show (an IATV "
                              "model, or HGAN without the word level)")
        if not text.strip():
            raise ValueError("the query is empty")
        store = self.store  # one state for the whole call
        if not 0 <= row < len(store):
            raise IndexError(f"row {row} is not in the gallery (0..{len(store) - 1})")
        out = sig[EXPLAIN](
            texts=tf.constant([text]),
            image_word=tf.constant(np.asarray(store.array("word")[row:row + 1], np.float32)))
        selected = out["selected"].numpy()[0, 0]  # [N, R]
        weights = out["weights"].numpy()[0, 0]
        words = [w.decode("utf-8") for w in out["words"].numpy()[0]]
        regions = []
        for n in range(selected.shape[0]):
            picked = np.flatnonzero(selected[n] > 0.5)
            picked = picked[np.argsort(-weights[n, picked], kind="stable")]
            regions.append([{"word": words[r], "slot": int(r), "weight": float(weights[n, r])}
                            for r in picked])
        return {"row": int(row), "path": store.paths()[row],
                "words": [w for w in words if w], "regions": regions}


def query(savedmodel: str, index_path: str, text: str, top_k: int = 10,
          rerank_k: Optional[int] = None, nprobe: Optional[int] = None) -> list[dict]:
    """One query: ``Searcher(savedmodel, index_path, nprobe=nprobe).query`` (the SavedModel
    is cached)."""
    return Searcher(savedmodel, index_path, nprobe=nprobe).query(text, top_k, rerank_k)
