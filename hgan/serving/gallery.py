"""An on-disk gallery: every image's features from a SavedModel's ``encode_image``, in raw
row-major files that are memory-mapped at query time, so the gallery need not fit in RAM.

Layout of a gallery directory::

  gallery.json        {"version", "model", "dtype", "count", "features": {name: shape},
                       "paths_bytes", "source", "created", "updated"}: the committed state
  paths.jsonl         one JSON string per image (its path), in row order
  feat.<name>.bin     rows of feature <name> (dtype, row-major), in row order

Appending writes rows past the committed count and then commits ``gallery.json``
atomically; a crash between the two leaves rows that the next open truncates away, so a
gallery is always a prefix of what was appended (``index`` resumes from it). ``model`` is
the SavedModel's fingerprint (``model_fingerprint``): a gallery made by another model is
refused. float16 halves the bytes of float32; ``bench/gallery_index.py`` measures what it
changes in a ranking.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from typing import Iterable, Optional

import numpy as np

VERSION = 1
MANIFEST = "gallery.json"
PATHS = "paths.jsonl"
DTYPES = ("float16", "float32")


class ModelMismatch(ValueError):
    """The gallery was built by another model than the one asked to use it."""


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


class Gallery:
    """A gallery directory opened for reading (memory-mapped) and, with ``writable``,
    appending. Use ``Gallery.create`` for a new one and ``Gallery.open`` otherwise."""

    def __init__(self, path: str, manifest: dict, writable: bool):
        self.path, self.manifest, self.writable = path, manifest, writable
        self._paths: Optional[list[str]] = None
        self._known: Optional[set] = None
        if writable:
            self._truncate_to_committed()

    # --- opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, model: str, features: dict, dtype: str = "float16",
               source: Optional[dict] = None) -> "Gallery":
        """A new, empty gallery for features {name: per-row shape}; ``source`` says where
        its images live ({"kind": "folder", "root"}, {"kind": "list", "root"}: the
        folder of a file list, which its relative paths are relative to; or {"kind":
        "tfrecords", "data_dir", "split"}), for a service that shows them."""
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if os.path.exists(os.path.join(path, MANIFEST)):
            raise FileExistsError(f"{path} already holds a gallery; open it to extend it")
        os.makedirs(path, exist_ok=True)
        now = time.time()
        manifest = {"version": VERSION, "model": model, "dtype": dtype, "count": 0,
                    "features": {k: [int(d) for d in v] for k, v in features.items()},
                    "paths_bytes": 0, "source": source or {}, "created": now,
                    "updated": now}
        for name in manifest["features"]:
            open(os.path.join(path, _feature_file(name)), "wb").close()
        open(os.path.join(path, PATHS), "wb").close()
        gallery = cls(path, manifest, writable=True)
        gallery._commit()
        return gallery

    @classmethod
    def open(cls, path: str, model: Optional[str] = None, writable: bool = False) -> "Gallery":
        """An existing gallery; ``model`` (a fingerprint) must match the one that made it."""
        file = os.path.join(path, MANIFEST)
        if not os.path.exists(file):
            raise FileNotFoundError(f"{path} is not a gallery (no {MANIFEST}); build one with "
                                    "hgan-search index")
        with open(file) as f:
            manifest = json.load(f)
        if manifest.get("version") != VERSION:
            raise ValueError(f"{path}: gallery version {manifest.get('version')} is not "
                             f"{VERSION}; rebuild it")
        if model is not None and manifest["model"] != model:
            raise ModelMismatch(
                f"{path} was indexed by another model (fingerprint {manifest['model']}, this "
                f"one {model}): re-index the gallery with this model")
        return cls(path, manifest, writable)

    # --- reading -------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.manifest["dtype"])

    @property
    def features(self) -> dict:
        return {k: tuple(v) for k, v in self.manifest["features"].items()}

    def bytes_per_item(self) -> int:
        """Feature bytes per image (the path list aside)."""
        return int(sum(np.prod(s, dtype=np.int64) for s in self.features.values())
                   * self.dtype.itemsize)

    def array(self, name: str) -> np.ndarray:
        """Feature ``name`` of every committed row, memory-mapped read-only:
        [len, *shape] in the gallery's dtype (nothing is read until it is indexed)."""
        shape = self.features[name]
        if not len(self):
            return np.zeros((0, *shape), self.dtype)
        return np.memmap(os.path.join(self.path, _feature_file(name)), self.dtype, "r",
                         shape=(len(self), *shape))

    def paths(self) -> list[str]:
        if self._paths is None:
            with open(os.path.join(self.path, PATHS), "rb") as f:
                data = f.read(self.manifest["paths_bytes"])
            self._paths = [json.loads(line) for line in data.decode("utf-8").splitlines()]
        return self._paths

    def __contains__(self, path: str) -> bool:
        if self._known is None:
            self._known = set(self.paths())
        return path in self._known

    # --- appending -----------------------------------------------------------------------
    def append(self, paths: list[str], features: dict) -> None:
        """Appends rows (``features[name]``: [len(paths), *shape]) and commits them."""
        if not self.writable:
            raise PermissionError(f"{self.path} is open read-only")
        if set(features) != set(self.features):
            raise ValueError(f"features {sorted(features)} are not the gallery's "
                             f"{sorted(self.features)}")
        n = len(paths)
        for name, shape in self.features.items():
            rows = np.asarray(features[name])
            if rows.shape != (n, *shape):
                raise ValueError(f"feature {name}: shape {rows.shape}, expected {(n, *shape)}")
        if not n:
            return
        for name in self.features:
            rows = np.ascontiguousarray(np.asarray(features[name]), dtype=self.dtype)
            with open(os.path.join(self.path, _feature_file(name)), "ab") as f:
                f.write(rows.tobytes())
                f.flush()
                os.fsync(f.fileno())
        lines = "".join(json.dumps(p) + "\n" for p in paths).encode("utf-8")
        with open(os.path.join(self.path, PATHS), "ab") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
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

    def _truncate_to_committed(self) -> None:
        """Drops rows written after the last commit (an interrupted append)."""
        row_bytes = {k: int(np.prod(s, dtype=np.int64)) * self.dtype.itemsize
                     for k, s in self.features.items()}
        for name, size in row_bytes.items():
            file = os.path.join(self.path, _feature_file(name))
            want = len(self) * size
            if os.path.getsize(file) < want:
                raise ValueError(f"{file} is shorter than its {len(self)} committed rows: the "
                                 "gallery is damaged; rebuild it")
            if os.path.getsize(file) > want:
                os.truncate(file, want)
        file = os.path.join(self.path, PATHS)
        if os.path.getsize(file) > self.manifest["paths_bytes"]:
            os.truncate(file, self.manifest["paths_bytes"])


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
    out = Gallery.create(output, first.manifest["model"], first.features,
                         first.manifest["dtype"], first.manifest.get("source"))
    seen: set = set()
    for s in shards:
        paths = s.paths()
        clash = seen.intersection(paths)
        if clash:
            raise ValueError(f"{s.path} repeats paths of an earlier shard, e.g. "
                             f"{sorted(clash)[:3]}: shards must be disjoint")
        seen.update(paths)
        arrays = {k: s.array(k) for k in s.features}
        for a in range(0, len(s), chunk):
            out.append(paths[a:a + chunk], {k: v[a:a + chunk] for k, v in arrays.items()})
    return out
