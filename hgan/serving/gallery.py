"""An on-disk gallery: every image's features from a SavedModel's ``encode_image``, in raw
row-major files that are memory-mapped at query time, so the gallery need not fit in RAM.

Layout of a gallery directory::

  gallery.json        {"version", "model", "dtype", "count", "features": {name: shape},
                       "paths_bytes", "source", "created", "updated", "checksums"}: the
                       committed state (``checksums``: ``hgan.serving.checksums``)
  paths.jsonl         one JSON string per image (its path), in row order
  feat.<name>.bin     one record per image of feature <name>, in row order: its values
                      (float16 / float32, row-major) or their code (int8, pq:
                      ``hgan.serving.codec``)
  codebook.<name>.npy a pq gallery's product-quantiser codebook of table <name>
                      [M, K, s] (its sha256 and s, the values per code, in the
                      manifest's "codebooks")
  ann.faiss           the IVF over a prefix of the rows (``hgan.serving.searcher``), if any
  index.lock          held by the one process that writes the gallery

Appending writes rows past the committed count and then commits ``gallery.json``
atomically; a crash between the two leaves rows that the next writable open truncates
away, so a gallery is always a prefix of what was appended (``index`` resumes from it), and
a reader, which sees only committed rows, can read while a writer appends. One writer at a
time: a second one is refused (``GalleryBusy``) while the first holds ``index.lock`` (a
killed writer's lock is released with its process). A file shorter than the committed
rows (a copy cut short, a full disk) is refused on reading by name (``GalleryDamaged``); a
writable open repairs it by keeping the rows that are whole in every file, so the next
``index`` encodes the rest again. ``model`` is the SavedModel's fingerprint
(``model_fingerprint``): a gallery made by another model is refused. float16 halves the
bytes of float32; int8 and pq (``hgan.serving.codec``) store codes that ``array`` decodes
at the rows read; ``bench/gallery_index.py`` and ``bench/search_latency.py`` measure what
each changes in a ranking. A manifest naming a dtype this version does not know, or a
codebook that is missing or not the one the manifest names, is refused
(``GalleryDamaged``).
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import time
from typing import Iterable, Optional

import numpy as np

from hgan.serving import checksums, codec

try:
    import fcntl
except ImportError:  # not POSIX: writers are not locked
    fcntl = None

VERSION = 1
MANIFEST = "gallery.json"
PATHS = "paths.jsonl"
ANN_FILE = "ann.faiss"
LOCK = "index.lock"
DTYPES = codec.DTYPES
_KEYS = ("version", "model", "dtype", "count", "features", "paths_bytes")


class ModelMismatch(ValueError):
    """The gallery was built by another model than the one asked to use it."""


class GalleryDamaged(ValueError):
    """A gallery file holds less (or other) than its manifest commits: a copy cut short, a
    full disk, an edit."""


class GalleryBusy(RuntimeError):
    """Another writer (another process, or another writable open in this one) holds the
    gallery's ``index.lock``."""


def _repair_hint(path: str) -> str:
    return (f"re-run hgan-search index --index={path} with its --savedmodel and images (the "
            "same --images or --data_dir) to repair it: the rows that are whole are kept and "
            "the rest encoded again; or copy the gallery again")


def _lock(path: str):
    """The gallery's writer lock, held until the returned file is closed (or the process
    ends, killed or not); ``GalleryBusy`` if another process holds it."""
    if fcntl is None:
        return None
    os.makedirs(path, exist_ok=True)
    f = open(os.path.join(path, LOCK), "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise GalleryBusy(
            f"{path} is being written by another writer (process {holder or '?'} holds "
            f"{os.path.join(path, LOCK)}): wait for that hgan-search index or merge to end, "
            "or stop it") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def model_fingerprint(savedmodel: str, open_file=None) -> str:
    """sha256 of the SavedModel's graph and variable index: equal exactly for the same
    export (its weights are in the variable shards the index names). ``open_file(path)``
    opens a file for reading in binary (default: a local file), e.g. on ``gs://``."""
    h = hashlib.sha256()
    for name in ("saved_model.pb", "variables/variables.index"):
        try:
            f = (open_file or functools.partial(open, mode="rb"))(
                f"{savedmodel.rstrip('/')}/{name}")
        except FileNotFoundError:
            raise FileNotFoundError(f"{savedmodel} is not a SavedModel (no {name})") from None
        with f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:32]


def _feature_file(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"feature name {name!r} must be letters, digits and _")
    return f"feat.{name}.bin"


def _codebook_file(name: str) -> str:
    """codebook.<table>.npy, or rotation.<table>.npy for ``codec.rotation_of(table)``."""
    table, _, rotation = name.partition(".")
    return f"{'rotation' if rotation else 'codebook'}.{_feature_file(table)[5:-4]}.npy"


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, np.float32).tobytes()).hexdigest()


def same_codebooks(a: dict, b: dict) -> bool:
    """Whether two galleries' {table: codebook} code their tables alike (same tables, same
    float32 values)."""
    return a.keys() == b.keys() and all(_digest(a[k]) == _digest(b[k]) for k in a)


def _read_codebooks(path: str, manifest: dict) -> dict:
    """{table: codebook} of a pq gallery, each checked against the manifest's sha256."""
    books = {}
    for name, entry in (manifest.get("codebooks") or {}).items():
        file = os.path.join(path, entry["file"])
        try:
            book = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise GalleryDamaged(f"{file}, the codebook of {name}, cannot be read ({e}): the "
                                 "gallery's codes cannot be decoded; copy the gallery again, "
                                 "or index its images into an empty folder") from None
        if _digest(book) != entry["sha256"]:
            raise GalleryDamaged(f"{file} is not the codebook {MANIFEST} names (sha256 "
                                 "differs): copy the gallery again, or index its images into "
                                 "an empty folder")
        books[name] = book
    return books


class Gallery:
    """A gallery directory opened for reading (memory-mapped) and, with ``writable``,
    appending. Use ``Gallery.create`` for a new one and ``Gallery.open`` otherwise."""

    def __init__(self, path: str, manifest: dict, writable: bool, lock=None):
        self.path, self.manifest, self.writable = path, manifest, writable
        self._paths: Optional[list[str]] = None
        self._known: Optional[set] = None
        self._lock = lock  # a writer's index.lock (``_lock``)
        self.repaired: Optional[str] = None  # what a writable open cut away, if anything
        self.codebooks = _read_codebooks(path, manifest)
        self.codecs = {}
        for name, shape in self.features.items():
            if codec.uses_codebook(manifest["dtype"], shape) and name not in self.codebooks:
                raise GalleryDamaged(f"{os.path.join(path, MANIFEST)} names no codebook for "
                                     f"the {manifest['dtype']} table {name}: the gallery cannot "
                                     "be decoded; index its images into an empty folder")
            self.codecs[name] = codec.codec(manifest["dtype"], shape, self.codebooks.get(name),
                                            self.codebooks.get(codec.rotation_of(name)))
        if writable:
            self._truncate_to_committed()
        else:
            self._check_sizes()

    def close(self) -> None:
        """Releases the writer lock (a reader holds none); the gallery stays readable."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # --- opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, model: str, features: dict, dtype: str = "float16",
               source: Optional[dict] = None,
               codebooks: Optional[dict] = None) -> "Gallery":
        """A new, empty gallery for features {name: per-row shape}; ``source`` says where
        its images live ({"kind": "folder", "root"}, {"kind": "list", "root"}: the
        folder of a file list, which its relative paths are relative to; or {"kind":
        "tfrecords", "data_dir", "split"}), for a service that shows them. A ``pq``
        gallery needs ``codebooks`` {table: [M, K, C'/M]} for each feature of two axes or
        more (``train_codebooks`` makes them from a sample of rows)."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        tables = [k for k, v in features.items() if codec.uses_codebook(dtype, tuple(v))]
        missing = [k for k in tables if k not in (codebooks or {})]
        if missing:
            raise ValueError(f"a {dtype} gallery needs a codebook for {missing}")
        if os.path.exists(os.path.join(path, MANIFEST)):
            raise FileExistsError(f"{path} already holds a gallery; open it to extend it")
        os.makedirs(path, exist_ok=True)
        lock = _lock(path)
        try:
            if os.path.exists(os.path.join(path, MANIFEST)):  # another writer was first
                raise FileExistsError(f"{path} already holds a gallery; open it to extend it")
            now = time.time()
            manifest = {"version": VERSION, "model": model, "dtype": dtype, "count": 0,
                        "features": {k: [int(d) for d in v] for k, v in features.items()},
                        "paths_bytes": 0, "source": source or {}, "created": now,
                        "updated": now, "checksums": checksums.empty()}
            if tables:
                manifest["codebooks"] = {}
                for name in tables:  # its codebook, and its rotation if it has one
                    for key in (name, codec.rotation_of(name)):
                        if codebooks.get(key) is None:
                            continue
                        array = np.ascontiguousarray(codebooks[key], np.float32)
                        np.save(os.path.join(path, _codebook_file(key)), array)
                        manifest["codebooks"][key] = {"file": _codebook_file(key),
                                                      "sha256": _digest(array)}
                    manifest["codebooks"][name]["subdim"] = int(codebooks[name].shape[-1])
            for name in manifest["features"]:
                open(os.path.join(path, _feature_file(name)), "wb").close()
            open(os.path.join(path, PATHS), "wb").close()
            gallery = cls(path, manifest, writable=True, lock=lock)
            gallery._commit()
        except BaseException:
            if lock is not None:
                lock.close()
            raise
        return gallery

    @classmethod
    def open(cls, path: str, model: Optional[str] = None, writable: bool = False) -> "Gallery":
        """An existing gallery; ``model`` (a fingerprint) must match the one that made it.
        Read-only, its files are checked to hold the committed rows (``GalleryDamaged``);
        ``writable`` takes the writer lock (``GalleryBusy``) and repairs what it can."""
        if not os.path.exists(os.path.join(path, MANIFEST)):
            raise FileNotFoundError(f"{path} is not a gallery (no {MANIFEST}); build one with "
                                    "hgan-search index")
        # A writer reads the manifest under the lock: one read before it could be stale.
        lock = _lock(path) if writable else None
        try:
            manifest = _read_manifest(path)
            if model is not None and manifest["model"] != model:
                raise ModelMismatch(
                    f"{path} was indexed by another model (fingerprint {manifest['model']}, "
                    f"this one {model}): re-index the gallery with this model")
            return cls(path, manifest, writable, lock)
        except BaseException:
            if lock is not None:
                lock.close()
            raise

    # --- reading -------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def dtype(self) -> str:
        """How the features are stored: one of ``codec.DTYPES``."""
        return self.manifest["dtype"]

    @property
    def features(self) -> dict:
        return {k: tuple(v) for k, v in self.manifest["features"].items()}

    def bytes_per_item(self) -> int:
        """Feature bytes per image on disk (the path list and codebooks aside)."""
        return int(sum(c.record.itemsize for c in self.codecs.values()))

    def records(self, name: str) -> np.ndarray:
        """Feature ``name`` of every committed row as stored, memory-mapped read-only:
        [len, *shape] of float16 / float32, or [len] codes (``codec``)."""
        base, shape = self.codecs[name].file_dtype()
        if not len(self):
            return np.zeros((0, *shape), base)
        return np.memmap(os.path.join(self.path, _feature_file(name)), base, "r",
                         shape=(len(self), *shape))

    def array(self, name: str):
        """Feature ``name`` of every committed row, memory-mapped read-only: [len, *shape]
        in float16 / float32 as stored, or, for int8 and pq, a ``codec.Decoded`` view
        that decodes to float32 only the rows indexed (nothing is read until then)."""
        records = self.records(name)
        c = self.codecs[name]
        return records if isinstance(c, codec.Plain) else codec.Decoded(records, c)

    def paths(self, previous: Optional["Gallery"] = None) -> list[str]:
        """The path of every committed row, checked against the manifest's count (read
        once). ``previous``: an earlier open of the same gallery whose paths are read, so
        only the rows appended since are read from the file."""
        if self._paths is None:
            head, start = [], 0
            if (previous is not None and previous._paths is not None
                    and previous.manifest["created"] == self.manifest["created"]
                    and previous.manifest["paths_bytes"] <= self.manifest["paths_bytes"]):
                head, start = previous._paths, previous.manifest["paths_bytes"]
            file = os.path.join(self.path, PATHS)
            with open(file, "rb") as f:
                f.seek(start)
                data = f.read(self.manifest["paths_bytes"] - start)
            tail, ends = _whole_paths(data)
            if len(head) + len(tail) != len(self) or (ends[-1] if ends else 0) != len(data):
                raise GalleryDamaged(
                    f"{file} lists {len(head) + len(tail)} readable paths where {MANIFEST} "
                    f"commits {len(self)} rows: {_repair_hint(self.path)}")
            self._paths = head + tail
        return self._paths

    def __contains__(self, path: str) -> bool:
        if self._known is None:
            self._known = set(self.paths())
        return path in self._known

    # --- appending -----------------------------------------------------------------------
    def append(self, paths: list[str], features: dict, encoded: bool = False) -> None:
        """Appends rows (``features[name]``: [len(paths), *shape] values, encoded here in
        the gallery's dtype; with ``encoded``, records as ``records`` reads them, e.g.
        another gallery's of the same dtype and codebooks) and commits them."""
        if not self.writable:
            raise PermissionError(f"{self.path} is open read-only")
        if set(features) != set(self.features):
            raise ValueError(f"features {sorted(features)} are not the gallery's "
                             f"{sorted(self.features)}")
        n = len(paths)
        for name, shape in self.features.items():
            rows = np.asarray(features[name])
            want = (n, *self.codecs[name].file_dtype()[1]) if encoded else (n, *shape)
            if rows.shape != want:
                raise ValueError(f"feature {name}: shape {rows.shape}, expected {want}")
        if not n:
            return
        # The checksums of what is written, committed with the rows (hgan.serving.checksums).
        sums = json.loads(json.dumps(self.manifest["checksums"]))
        for name in self.features:
            c = self.codecs[name]
            rows = np.asarray(features[name])
            rows = np.ascontiguousarray(rows, c.file_dtype()[0]) if encoded else c.encode(rows)
            data = rows.tobytes()
            with open(os.path.join(self.path, _feature_file(name)), "ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            checksums.add(sums, _feature_file(name), data,
                          range(len(data) // n, len(data) + 1, len(data) // n), len(self))
        path_lines = [(json.dumps(p) + "\n").encode("utf-8") for p in paths]
        lines = b"".join(path_lines)
        with open(os.path.join(self.path, PATHS), "ab") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        checksums.add(sums, PATHS, lines, list(itertools.accumulate(map(len, path_lines))),
                      len(self))
        self.manifest["checksums"] = sums
        self.manifest["count"] += n
        self.manifest["paths_bytes"] += len(lines)
        self._commit()
        if self._paths is not None:
            self._paths.extend(paths)
        if self._known is not None:
            self._known.update(paths)

    def _commit(self) -> None:
        self.manifest["updated"] = time.time()
        file = os.path.join(self.path, MANIFEST)
        tmp = f"{file}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)

    def verify(self) -> checksums.Verdict:
        """Every committed chunk of every file read again against its recorded CRC-32
        (``hgan.serving.checksums``): the verdict names the file and rows of each that
        differs."""
        return checksums.verify(self.path, self.manifest.get("checksums"), len(self))

    def _row_bytes(self) -> dict:
        """{feature file: bytes per row}."""
        return {os.path.join(self.path, _feature_file(k)): c.record.itemsize
                for k, c in self.codecs.items()}

    def _check_sizes(self) -> None:
        """A reader's check that every file holds the committed rows (sizes only: ``paths``
        reads the path list's lines)."""
        for file, size in self._row_bytes().items():
            rows = os.path.getsize(file) // size if os.path.exists(file) else 0
            if rows < len(self):
                raise GalleryDamaged(
                    f"{file} holds {rows} whole rows of the {len(self)} that {MANIFEST} "
                    f"commits (cut short): {_repair_hint(self.path)}")
        file = os.path.join(self.path, PATHS)
        have = os.path.getsize(file) if os.path.exists(file) else 0
        if have < self.manifest["paths_bytes"]:
            raise GalleryDamaged(
                f"{file} holds {have} of the {self.manifest['paths_bytes']} bytes of paths "
                f"that {MANIFEST} commits (cut short): {_repair_hint(self.path)}")

    def _truncate_to_committed(self) -> None:
        """Drops rows written after the last commit (an interrupted append), and repairs a
        gallery cut short: the committed rows become the longest prefix that is whole in
        every file (``repaired`` says what was cut), so ``index`` encodes the rest again."""
        for name in os.listdir(self.path):
            if name.startswith(f"{MANIFEST}.tmp"):
                os.remove(os.path.join(self.path, name))  # a killed commit's leftover
        paths_file = os.path.join(self.path, PATHS)
        for file in [*self._row_bytes(), paths_file]:
            if not os.path.exists(file):  # lost: none of its rows are whole
                open(file, "wb").close()
        whole = {file: os.path.getsize(file) // size for file, size in self._row_bytes().items()}
        with open(paths_file, "rb") as f:
            paths, ends = _whole_paths(f.read(self.manifest["paths_bytes"]))
        whole[paths_file] = len(paths)
        keep = min(min(whole.values()), len(self))
        if keep < len(self) or "checksums" not in self.manifest:
            # The chunks past the rows kept are checksummed again as they are on disk (all
            # of them for a gallery written without checksums).
            sums = self.manifest.setdefault("checksums", checksums.empty())
            for file, size in self._row_bytes().items():
                checksums.rebuild(sums, self.path, os.path.basename(file), keep,
                                  lambda r, size=size: (r + 1) * size)
            checksums.rebuild(sums, self.path, PATHS, keep, lambda r: ends[r])
            if keep == len(self):
                self._commit()
        if keep < len(self):
            short = ", ".join(f"{os.path.basename(f)} {n}" for f, n in whole.items()
                              if n < len(self))
            self.repaired = (f"{self.path} was cut short (whole rows: {short}; committed "
                             f"{len(self)}): kept its first {keep} rows, the other "
                             f"{len(self) - keep} are indexed again")
            self.manifest["count"] = keep
            self.manifest["paths_bytes"] = ends[keep - 1] if keep else 0
            self._commit()
        for file, size in self._row_bytes().items():
            if os.path.getsize(file) > len(self) * size:
                os.truncate(file, len(self) * size)
        if os.path.getsize(paths_file) > self.manifest["paths_bytes"]:
            os.truncate(paths_file, self.manifest["paths_bytes"])
        self._paths = paths[:len(self)]


def _read_manifest(path: str) -> dict:
    file = os.path.join(path, MANIFEST)
    try:
        with open(file, encoding="utf-8") as f:
            manifest = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        manifest = f"not JSON: {e}"
    if isinstance(manifest, dict):
        missing = [k for k in _KEYS if k not in manifest]
    else:
        missing = [f"a JSON object ({str(manifest)[:80]})"]
    if missing:
        raise GalleryDamaged(
            f"{file} is damaged (it lacks {', '.join(missing)}): the gallery cannot be read; "
            "copy it again, or index its images into an empty folder")
    if manifest["version"] != VERSION:
        raise ValueError(f"{path}: gallery version {manifest['version']} is not {VERSION}; "
                         "rebuild it")
    if manifest["dtype"] not in DTYPES:
        raise GalleryDamaged(
            f"{file} names dtype {manifest['dtype']!r}, which this version does not store "
            f"(it reads {', '.join(DTYPES)}): open it with the version that wrote it, or "
            "index its images into an empty folder")
    return manifest


def _whole_paths(data: bytes) -> tuple[list[str], list[int]]:
    """The paths of the whole, readable lines at the start of a path list's bytes, and the
    byte offset where each of those lines ends."""
    paths, ends, end = [], [], 0
    for line in data.split(b"\n")[:-1]:  # the last piece has no newline: not whole
        try:
            path = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            break
        if not isinstance(path, str):
            break
        end += len(line) + 1
        paths.append(path)
        ends.append(end)
    return paths, ends


def merge(output: str, shards: Iterable[str], chunk: int = 65536) -> Gallery:
    """One gallery from disjoint shard galleries of the same model (``index --shard=i/N``
    on N machines), in shard order; a path in two shards is an error."""
    shards = [Gallery.open(s) for s in shards]
    if not shards:
        raise ValueError("no shards to merge")
    first = shards[0]
    for s in shards[1:]:
        if s.manifest["model"] != first.manifest["model"]:
            raise ModelMismatch(f"{s.path} and {first.path} were indexed by different models")
        if s.features != first.features or s.dtype != first.dtype:
            raise ValueError(f"{s.path} and {first.path} hold different features or dtypes")
        if not same_codebooks(s.codebooks, first.codebooks):
            raise ValueError(
                f"{s.path} and {first.path} code their tables with different pq codebooks: "
                f"index every shard with --codebook={first.path} (one codebook), or with "
                "--dtype=int8")
    for s in shards:  # the merged gallery's checksums must not bless damaged bytes
        verdict = s.verify()
        if not verdict.ok:
            raise GalleryDamaged(f"{s.path}: {verdict.mismatches[0]}: copy that shard again, "
                                 "or index its images into an empty folder")
    out = Gallery.create(output, first.manifest["model"], first.features,
                         first.manifest["dtype"], first.manifest.get("source"),
                         codebooks=first.codebooks or None)
    seen: set = set()
    for s in shards:
        paths = s.paths()
        clash = seen.intersection(paths)
        if clash:
            raise ValueError(f"{s.path} repeats paths of an earlier shard, e.g. "
                             f"{sorted(clash)[:3]}: shards must be disjoint")
        seen.update(paths)
        # The records are copied as stored: a code is not decoded and coded again.
        arrays = {k: s.records(k) for k in s.features}
        for a in range(0, len(s), chunk):
            out.append(paths[a:a + chunk], {k: v[a:a + chunk] for k, v in arrays.items()},
                       encoded=True)
    return out


def train_codebooks(dtype: str, sample: dict, seed: int = 0, subdim: Optional[int] = None,
                    rotate: bool = True) -> Optional[dict]:
    """The codebooks a ``dtype`` gallery needs ({table: [M, K, s]} and, with ``rotate``,
    {``codec.rotation_of(table)``: R [M·s, M·s]} unless the sample has fewer rows than
    M·s; None for a dtype without), trained on ``sample`` {feature: rows [n, *shape]}
    with ``subdim`` values per one-byte code (``codec.train_rotation``, then
    ``codec.train_codebook`` on the rotated rows; ``codec.PQ_SUBDIM`` unless given)."""
    books = {}
    for k, v in sample.items():
        if not codec.uses_codebook(dtype, tuple(np.shape(v)[1:])):
            continue
        dim = np.shape(v)[-1]
        rotation = codec.train_rotation(v, dim, seed=seed, subdim=subdim) if rotate else None
        books[k] = codec.train_codebook(v, dim, seed=seed, subdim=subdim, rotation=rotation)
        if rotation is not None:  # None: too few rows to learn one
            books[codec.rotation_of(k)] = rotation
    return books or None


def codebooks_of(path: str) -> dict:
    """The codebooks of the gallery at ``path`` (``--codebook``: another gallery, e.g.
    shard 0's), to code a new gallery's tables the same way, so the two merge."""
    return Gallery.open(path).codebooks
