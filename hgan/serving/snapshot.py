"""What a search serves: one consistent state of a gallery (its committed rows, their paths
and the IVF over a prefix of them), checked when it is opened and opened again when the
gallery changes, so ``hgan-serve`` keeps answering while ``hgan-search index`` grows it.

A gallery only grows, and ``index`` writes its IVF (``ann.faiss``) after committing the
rows it covers, so the IVF on disk covers a prefix of the committed rows: those past it (a
run still going, or one killed before its IVF step) are searched exactly
(``ann.Searcher``). The checks at opening, each refused with the file's name and what to
do:

* the gallery's files hold its committed rows and paths (``gallery.GalleryDamaged``);
* FAISS can read the IVF, it indexes vectors of the gallery's dimension, holds no more
  vectors than the gallery has rows, and holds a sample of the gallery's rows under their
  own ids (``ann.misplaced``): another gallery's IVF of the same size fails that
  (``IVFError``).

An IVF with more vectors than the committed rows just read is what a reader sees when an
``index`` run commits and saves its IVF between the two reads: the rows are read again,
a few times, before it is refused.
"""
from __future__ import annotations

import os
import re
import time
from typing import Optional

from hgan.serving import ann, gallery
from hgan.serving.gallery import ANN_FILE, MANIFEST
from hgan.serving.savedmodel import GLOBAL


class IVFError(ValueError):
    """A gallery's ``ann.faiss`` that cannot be read or is not the gallery's IVF:
    ``problem`` says which, the message also what to do."""

    def __init__(self, problem: str, store: gallery.Gallery):
        super().__init__(f"{problem}; re-run hgan-search index --index={store.path} with its "
                         "--savedmodel and images (the same --images or --data_dir) to build "
                         "it again, or delete it to search exactly")
        self.problem = problem


class _Ahead(IVFError):
    """An IVF with more vectors than the committed rows read (a race, or a foreign IVF)."""


def load_ivf(store: gallery.Gallery, mmap: bool = True):
    """The IVF in ``store``'s folder, checked against its rows, or None without one."""
    path = os.path.join(store.path, ANN_FILE)
    if not os.path.exists(path):
        return None
    try:
        index = ann.load(path, mmap=mmap)
    except (RuntimeError, ValueError) as e:
        # FAISS's message after its C++ location ("Error in <signature> at <file>:<line>: ").
        reason = re.sub(r"^Error in .*? at \S+:\d+: ", "", str(e).strip())[:200]
        raise IVFError(f"{path} cannot be read as an IVF index ({reason})", store) from None
    if GLOBAL not in store.features:
        raise IVFError(f"{path}: the gallery has no {GLOBAL!r} feature to index", store)
    dim = store.features[GLOBAL][0]
    if index.d != dim:
        raise IVFError(f"{path} indexes {index.d}-d vectors and the gallery's {GLOBAL} "
                       f"embeddings are {dim}-d: it is not this gallery's IVF", store)
    if index.ntotal > len(store):
        raise _Ahead(f"{path} holds {index.ntotal} vectors and the gallery {len(store)} "
                     "committed rows: it is not this gallery's IVF", store)
    row = ann.misplaced(index, store.array(GLOBAL))
    if row is not None:
        raise IVFError(f"{path} does not hold the gallery's row {row} under its id: it is "
                       "another gallery's IVF, or a damaged one", store)
    return index


def state_key(path: str) -> tuple:
    """What changes when a gallery changes: (inode, mtime, size) of its manifest and of
    its IVF (both are replaced whole, never edited in place)."""
    key = []
    for name in (MANIFEST, ANN_FILE):
        try:
            st = os.stat(os.path.join(path, name))
            key.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            key.append(None)
    return tuple(key)


class Snapshot:
    """One checked state of a gallery: ``store`` (memory-mapped, its paths read) and
    ``stage1`` (``ann.Searcher`` over its global embeddings); ``key`` is the
    ``state_key`` it was opened at."""

    def __init__(self, store: gallery.Gallery, stage1: ann.Searcher, key: tuple):
        self.store, self.stage1, self.key = store, stage1, key

    def __len__(self) -> int:
        return len(self.store)

    @classmethod
    def open(cls, path: str, model: Optional[str] = None, nprobe: Optional[int] = None,
             previous: Optional["Snapshot"] = None, attempts: int = 5) -> "Snapshot":
        """The gallery at ``path`` as it is on disk, checked (``gallery.GalleryDamaged``,
        ``gallery.ModelMismatch``, ``IVFError``); ``previous``, an earlier snapshot of
        it, saves reading its paths again."""
        for attempt in range(attempts):
            key = state_key(path)
            store = gallery.Gallery.open(path, model=model)
            store.paths(previous=previous.store if previous is not None else None)
            try:
                index = load_ivf(store)
            except _Ahead:
                # An index run may have committed rows and saved their IVF since the
                # manifest was read: read the rows again before refusing.
                if attempt + 1 == attempts:
                    raise
                time.sleep(0.05 * (attempt + 1))
                continue
            return cls(store, ann.Searcher(store.array(GLOBAL), index, nprobe=nprobe), key)
        raise AssertionError("unreachable")
