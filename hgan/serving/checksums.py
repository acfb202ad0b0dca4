"""Checksums of a gallery's files, so that bytes changed in place are found.

A gallery file that is cut short is refused by its size (``gallery.GalleryDamaged``); one
whose bytes change in place (a bad disk block, a stray write, a copy that went wrong
without changing the length) keeps its size. Each file that the writer appends to (every
``feat.<name>.bin`` and ``paths.jsonl``) is therefore checksummed in chunks of
``chunk_rows`` rows as it is written: the CRC-32 of each chunk's bytes and the byte offset
where the chunk ends. The writer records them in ``gallery.json`` with each commit, so
they always describe exactly the committed rows; the last chunk may be partial, and its
CRC is carried on (``zlib.crc32``'s running value) by the next append, resumed or not.

``gallery.json``'s ``checksums``::

  {"algorithm": "crc32", "chunk_rows": R,
   "files": {file name: {"crc": [c0, c1, ...], "ends": [e0, e1, ...]}}}

chunk i of a file holds rows [i·R, (i+1)·R) and the bytes [e(i-1), e(i)) (e(-1) = 0).
``verify`` reads every chunk again and names the file, rows and bytes of each that
differs. CRC-32 catches every change of up to 32 consecutive bits and all but one in 2³²
of the others; it is not a defence against a deliberate edit. zlib's CRC-32 runs at
memory speed (``bench/gallery_verify.py`` measures it), so a full check costs
about one read of the gallery.
"""
from __future__ import annotations

import dataclasses
import os
import time
import zlib
from typing import Callable, Sequence

ALGORITHM = "crc32"
# Rows per chunk: a changed byte is located to within this many rows; gallery.json, written
# whole at every commit, holds two numbers per chunk and file (1 M images, four files:
# ~980 chunks, ~20 kB); a writer that cuts a gallery back reads one chunk per file again.
CHUNK_ROWS = 4096


def empty(chunk_rows: int | None = None) -> dict:
    """The checksums of a gallery with no rows, in chunks of ``chunk_rows`` (default
    ``CHUNK_ROWS``)."""
    chunk_rows = CHUNK_ROWS if chunk_rows is None else chunk_rows
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    return {"algorithm": ALGORITHM, "chunk_rows": int(chunk_rows), "files": {}}


def add(state: dict, file: str, data: bytes, row_ends: Sequence[int], first_row: int) -> None:
    """Records rows ``first_row ..`` of ``file`` (a name in the gallery's folder), appended
    as ``data``; row j of them ends at byte ``row_ends[j]`` of ``data``. Called with the
    bytes the writer wrote, before it commits."""
    entry = state["files"].setdefault(file, {"crc": [], "ends": []})
    crcs, ends, size = entry["crc"], entry["ends"], state["chunk_rows"]
    view = memoryview(data)
    done, start, row = 0, 0, first_row
    while done < len(row_ends):
        chunk = row // size
        take = min(len(row_ends) - done, (chunk + 1) * size - row)
        stop = row_ends[done + take - 1]
        piece = view[start:stop]
        if chunk == len(crcs):  # a new chunk
            crcs.append(zlib.crc32(piece))
            ends.append((ends[-1] if ends else 0) + len(piece))
        elif chunk == len(crcs) - 1:  # the partial last chunk goes on
            crcs[chunk] = zlib.crc32(piece, crcs[chunk])
            ends[chunk] += len(piece)
        else:
            raise ValueError(f"{file}: rows from {first_row} are not the next rows "
                             f"(the checksums cover {len(crcs)} chunks of {size})")
        done, start, row = done + take, stop, row + take


def rebuild(state: dict, folder: str, file: str, rows: int,
            row_end: Callable[[int], int]) -> None:
    """The checksums of ``file``'s first ``rows`` rows (row r ends at byte ``row_end(r)``)
    as they are on disk, for the chunks the recorded ones do not cover whole: after the
    writer cut the gallery back to its whole rows, or for a gallery written without
    checksums (the rows it has are then taken as they are)."""
    entry = state["files"].setdefault(file, {"crc": [], "ends": []})
    size = state["chunk_rows"]
    whole = min(len(entry["crc"]), rows // size)  # recorded chunks that stay whole
    # A recorded chunk stays only if it ends where row_end says (else it was another
    # layout of rows and is computed again).
    while whole and entry["ends"][whole - 1] != row_end(whole * size - 1):
        whole -= 1
    del entry["crc"][whole:], entry["ends"][whole:]
    with open(os.path.join(folder, file), "rb") as f:
        for chunk in range(whole, -(-rows // size)):
            start = entry["ends"][-1] if entry["ends"] else 0
            stop = row_end(min((chunk + 1) * size, rows) - 1)
            f.seek(start)
            entry["crc"].append(_crc_of(f, stop - start))
            entry["ends"].append(stop)


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """A chunk whose bytes on disk are not those recorded: ``rows`` [first, last] and
    ``bytes`` [start, stop) of ``file``."""

    file: str
    rows: tuple
    bytes: tuple
    why: str

    def __str__(self) -> str:
        return (f"{self.file}: rows {self.rows[0]}-{self.rows[1]} (bytes {self.bytes[0]}-"
                f"{self.bytes[1] - 1}) {self.why}")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What ``verify`` found: the chunks that differ, and what it read (bytes, seconds)."""

    mismatches: list
    checked_bytes: int
    seconds: float
    files: int

    @property
    def ok(self) -> bool:
        return not self.mismatches

    @property
    def recorded(self) -> bool:
        """False for a gallery written without checksums (nothing could be checked)."""
        return self.files > 0

    @property
    def mb_per_s(self) -> float:
        return self.checked_bytes / 1e6 / max(self.seconds, 1e-9)


def verify(folder: str, state: dict | None, rows: int) -> Verdict:
    """Reads every recorded chunk of every file in ``folder`` again and compares its
    CRC-32; ``rows``: the committed rows (the last chunk's rows end there). ``state``
    None (a gallery written without checksums): nothing is checked."""
    if state is None:
        return Verdict([], 0, 0.0, 0)
    size, mismatches, checked, began = state["chunk_rows"], [], 0, time.perf_counter()
    for file, entry in sorted(state["files"].items()):
        path = os.path.join(folder, file)
        have = os.path.getsize(path) if os.path.exists(path) else 0
        with open(path, "rb") if have else _nothing() as f:
            for chunk, (crc, stop) in enumerate(zip(entry["crc"], entry["ends"])):
                start = entry["ends"][chunk - 1] if chunk else 0
                span = (chunk * size, min((chunk + 1) * size, rows) - 1)
                if stop > have:
                    mismatches.append(Mismatch(file, span, (start, stop),
                                               f"cut short: the file has {have} bytes"))
                    break
                f.seek(start)
                got = _crc_of(f, stop - start)
                checked += stop - start
                if got != crc:
                    mismatches.append(Mismatch(file, span, (start, stop),
                                               f"differ from what was written (CRC-32 "
                                               f"{got:08x}, recorded {crc:08x})"))
    return Verdict(mismatches, checked, time.perf_counter() - began, len(state["files"]))


def file_crc(path: str) -> int:
    """The CRC-32 of a whole file (an IVF, written whole and put in place by a rename)."""
    with open(path, "rb") as f:
        return _crc_of(f, os.path.getsize(path))


class _nothing:
    """The open file of a missing or empty file: nothing to read."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _crc_of(f, length: int, block: int = 1 << 22) -> int:
    crc, left = 0, length
    while left > 0:
        data = f.read(min(block, left))
        if not data:
            break
        crc = zlib.crc32(data, crc)
        left -= len(data)
    return crc
