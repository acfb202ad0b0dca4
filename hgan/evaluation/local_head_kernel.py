"""HGAN's local heads as a C kernel (``native/local_head.c``), for evaluation.

What ``LocalMatching.pair_gamma`` then ``score_selected`` compute, in one pass per pair
straight from the prepared tables (``score_rows``): Eq. 2's γ, the top-k selections of
Eqs. 5 and 7, each fused vector as a k-term sum of rows of the tables, Eq. 8's MLP and
the means. Its scores equal those to float rounding (``tests/test_heads_reference.py``
pins the scorer on it against the NumPy reference of the equations,
``tests/test_local_head_kernel.py`` against ``pair_gamma`` + ``score_selected`` and the
selections against ``top_k_selected``).

Why C: a pair's work is γ, a [R, H] × [H, N] product too small for a library call,
selections over short rows (15 regions, ~40 words) and gathers of a few [H]-wide rows
per word and region; batched through TensorFlow they need every pair's rows gathered
first and XLA's CPU code runs the rest far below what the machine does
(docs/benchmarks.md measures each part). The kernel computes γ from the rows in place
(the side pairs share turned once, the other read in place), keeps each row's k best in
vector registers and sums the picked rows in one vectorised loop. It takes
1 ≤ k ≤ ``MAX_K``; the scorer keeps XLA for a head with a larger k1 or k2.

The source is compiled on first use with the system's C compiler (``$CC``, which may
carry arguments, else ``cc``) for the CPU it runs on (``-march=native``, dropped if the
compiler refuses it), in under a second, and the library is kept in a cache folder
(``~/.cache/hgan/kernels``, ``$HGAN_KERNEL_CACHE`` to move it, ``off`` for none) under a
key of the source, the compiler and the CPU, so later processes load it at once and a
cache shared by machines of different CPUs keeps one for each. Where no compiler builds
it, ``load`` says why once and returns None, and the scorer keeps XLA.
``HGAN_HEAD_KERNEL=xla`` in the environment turns it off.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading

import numpy as np
from absl import logging

from hgan.evaluation import parallel

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native", "local_head.c")
MAX_K = 8  # the kernel's MAX_K
ENV = "HGAN_HEAD_KERNEL"  # "xla": never build it
CACHE_ENV = "HGAN_KERNEL_CACHE"  # the folder built kernels are kept in (cache_dir)

_LOCK = threading.Lock()
_STATE: dict = {}  # "lib" once loaded, "error" once a build failed


def build(compiler: str | None = None) -> ctypes.CDLL:
    """The compiled kernel, or raises ``OSError`` / ``subprocess.SubprocessError`` saying
    why (the compiler's message in ``stderr``). Kept in the cache folder (``cache_dir``)
    under a key of everything the library depends on, and loaded from there when it is
    already built."""
    command = shlex.split(compiler or os.environ.get("CC") or "cc")
    flags = ["-O3", "-fPIC", "-shared", "-std=c99"]
    # Without -march=native (a compiler or CPU that refuses it) and without -fopenmp-simd
    # (the loops' vectorisation hints are then ignored) as fallbacks.
    tries = [flags + ["-fopenmp-simd", "-march=native"], flags + ["-fopenmp-simd"], flags]
    cache = cache_dir()
    kept = os.path.join(cache, f"local_head_{_key(command, tries[0])}.so") if cache else None
    if kept and os.path.exists(kept):
        try:
            return _bind(ctypes.CDLL(kept))
        except (OSError, AttributeError):  # damaged, or not this kernel: built again
            pass
    with tempfile.TemporaryDirectory(prefix="hgan_local_head_") as folder:
        library = os.path.join(folder, "local_head.so")
        for i, options in enumerate(tries):
            try:
                _compile(command, options, library)
                break
            except subprocess.CalledProcessError:
                if i == len(tries) - 1:
                    raise
        lib = ctypes.CDLL(library)  # loaded: the file can go
        if kept and i == 0:  # a fallback build is not kept: the next process tries again
            _keep(library, kept)
    return _bind(lib)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    lib.top_k_softmax_pairs.restype = ctypes.c_int
    lib.top_k_softmax_pairs.argtypes = [ptr, ptr, i64, i64] + [ctypes.c_int] * 4 + [ptr] * 4
    lib.local_head_rows.restype = ctypes.c_int
    lib.local_head_rows.argtypes = ([ptr] * 3 + [f32] + [ptr] * 6 + [f32, i64, i64]
                                    + [ctypes.c_int] * 6 + [ptr])
    return lib


def _compile(command: list[str], flags: list[str], library: str) -> None:
    subprocess.run([*command, *flags, "-o", library, SOURCE, "-lm"], check=True,
                   capture_output=True, timeout=120)


def cache_dir() -> str | None:
    """Where built kernels are kept: ``$HGAN_KERNEL_CACHE`` (empty or ``off``: nowhere),
    else ``$XDG_CACHE_HOME/hgan/kernels`` or ``~/.cache/hgan/kernels`` (nowhere without a
    home). A library found there is loaded and run: a folder that others can write is
    code they can change, so keep it private."""
    folder = os.environ.get(CACHE_ENV)
    if folder is not None:
        return None if folder.strip().lower() in ("", "off") else folder
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        home = os.path.expanduser("~")
        if home == "~":
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "hgan", "kernels")


def _key(command: list[str], options: list[str]) -> str:
    """What a built library depends on: the source, the compiler (its command, what its
    ``--version`` says, and the options) and the CPU it was built for (``-march=native``:
    its model and feature flags), so a cache shared by machines of different CPUs or
    compilers keeps one library for each."""
    digest = hashlib.sha256()
    with open(SOURCE, "rb") as f:
        digest.update(f.read())
    digest.update(repr((command, options)).encode())
    try:
        digest.update(subprocess.run([*command, "--version"], capture_output=True,
                                     timeout=60).stdout)
    except (OSError, subprocess.SubprocessError):
        pass  # the build then says what is wrong with the compiler
    digest.update(f"{platform.machine()} {platform.processor()}".encode())
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            cpu = [line for line in f
                   if line.split(":")[0].strip() in ("model name", "flags", "Features")]
        digest.update("".join(sorted(set(cpu))).encode())
    except OSError:
        pass
    return digest.hexdigest()[:32]


def _keep(library: str, kept: str) -> None:
    """A copy of ``library`` at ``kept``, written whole or not at all (a partial file under
    another name, renamed); a cache folder that cannot be written keeps nothing."""
    part = None
    try:
        os.makedirs(os.path.dirname(kept), exist_ok=True)
        fd, part = tempfile.mkstemp(dir=os.path.dirname(kept), suffix=".part")
        with os.fdopen(fd, "wb") as out, open(library, "rb") as src:
            shutil.copyfileobj(src, out)
        os.chmod(part, 0o644)  # mkstemp's 0600 would keep it from a shared cache's users
        os.replace(part, kept)
    except OSError as e:
        logging.info("The local heads' C kernel is not kept in %s: %s", kept, e)
        if part and os.path.exists(part):
            os.remove(part)


def load() -> ctypes.CDLL | None:
    """The kernel built once per process; None (with one warning saying why) where it
    cannot be built, or when ``HGAN_HEAD_KERNEL=xla``."""
    if os.environ.get(ENV, "").lower() == "xla":
        return None
    with _LOCK:
        if "lib" not in _STATE and "error" not in _STATE:
            try:
                _STATE["lib"] = build()
            except (OSError, subprocess.SubprocessError) as e:
                detail = (getattr(e, "stderr", b"") or b"").decode(errors="replace").strip()
                _STATE["error"] = f"{e}{': ' + detail[-500:] if detail else ''}"
                logging.warning("The local heads' C kernel was not built (%s); scoring "
                                "uses XLA.", _STATE["error"])
        return _STATE.get("lib")


def load_error() -> str | None:
    """Why ``load`` returned None, if it tried."""
    return _STATE.get("error")


def _run(fn, pairs: int, threads: int) -> None:
    """``fn(first, last)`` over [0, pairs) split across ``threads`` threads (each call
    releases the GIL); raises on a kernel's error code."""
    threads = max(1, min(threads or parallel.cores(), pairs))
    bounds = np.linspace(0, pairs, threads + 1).astype(np.int64)
    codes = parallel.thread_map(lambda ab: fn(int(ab[0]), int(ab[1])),
                                zip(bounds[:-1], bounds[1:]), threads)
    if -2 in codes:
        raise MemoryError("the local heads' kernel could not allocate its buffer")
    if any(codes):
        raise ValueError(f"the local heads' kernel takes 1 ≤ k ≤ {MAX_K}")


def _floats(a) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32)


def select(lib, gamma: np.ndarray, mask: np.ndarray, k1: int, k2: int,
           threads: int = 0) -> tuple:
    """γ [..., R, N] and the word mask [..., R] → ((weights [..., R, k2], region indices
    int32 [..., R, k2]) of text-to-image, (weights [..., N, k1], word indices
    [..., N, k1]) of image-to-text), as ``LocalMatching.top_k_selected`` with the picks
    stacked on the last axis. ``threads``: 0 for one per core."""
    gamma = _floats(gamma)
    *lead, r, n = gamma.shape
    mask = _floats(np.broadcast_to(mask, (*lead, r)))
    k1, k2 = min(k1, r), min(k2, n)
    pairs = int(np.prod(lead, dtype=np.int64))
    out = (np.empty((*lead, r, k2), np.float32), np.empty((*lead, r, k2), np.int32),
           np.empty((*lead, n, k1), np.float32), np.empty((*lead, n, k1), np.int32))
    ins, outs = [a.ctypes.data for a in (gamma, mask)], [a.ctypes.data for a in out]
    _run(lambda a, b: lib.top_k_softmax_pairs(*ins, a, b, r, n, k1, k2, *outs), pairs,
         threads)
    return (out[0], out[1]), (out[2], out[3])


def score_rows(lib, text_tables: tuple, text_mask: np.ndarray, image_tables: tuple,
               text_base, image_base, words: int, regions: int, head,
               repeated: str = "text", threads: int = 0) -> np.ndarray:
    """S(V, T) of ``head`` (a Gumbel ``LocalMatching``) for P pairs given by table rows,
    γ (Eq. 2) included: nothing of a pair is copied out of the tables.

    Args:
      text_tables: (φ_t(T), W·T), [-, H] each: ``prepare_text``'s parts with texts and
        word slots flattened; text_mask [-], the word mask of the same rows.
      image_tables: (φ_v(V), W·V), [-, H] each: ``prepare_image``'s parts, flattened.
      text_base, image_base: int [P] (or broadcastable), the row of each pair's first word
        and first region: the pair's words are the ``words`` rows from there, its regions
        the ``regions`` rows from there.
      repeated: which side runs of consecutive pairs share, ``"text"`` (a text query's
        candidates, a grid's rows) or ``"image"`` (an image query's): it is turned once
        per run. Any order gives the same scores; this one costs least.
      threads: 0 for one per core.
    Returns [P] float32.
    """
    (t_phi, t_lin), (v_phi, v_lin) = ([_floats(a) for a in tables]
                                      for tables in (text_tables, image_tables))
    text_mask = _floats(text_mask)
    if not (t_phi.shape == t_lin.shape and v_phi.shape == v_lin.shape
            and t_phi.shape[1:] == v_phi.shape[1:] and t_phi.ndim == 2
            and text_mask.shape == t_phi.shape[:1]):
        raise ValueError(f"text tables {t_phi.shape}, {t_lin.shape} with a mask "
                         f"{text_mask.shape} and image tables {v_phi.shape}, {v_lin.shape} "
                         "do not match")
    if repeated not in ("text", "image"):
        raise ValueError(f"repeated must be 'text' or 'image', got {repeated!r}")
    hidden = t_phi.shape[1]
    bias = _floats(head.fuse_bias.numpy())  # Eq. 8's first bias and output layer
    w_out = _floats(head.fuse_out.kernel.numpy()[:, 0])
    b_out = float(head.fuse_out.bias.numpy()[0])
    if not bias.size == w_out.size == hidden:
        raise ValueError(f"rows of {hidden} values for a head of hidden={bias.size}")
    shape = np.broadcast_shapes(np.shape(text_base), np.shape(image_base))
    pairs = int(np.prod(shape))
    bases = [np.ascontiguousarray(np.broadcast_to(b, shape), np.int64).ravel()
             for b in (text_base, image_base)]
    for base, rows, n, name in zip(bases, (t_phi, v_phi), (words, regions),
                                   ("text", "image")):
        if pairs and (base.min() < 0 or base.max() + n > len(rows)):
            raise IndexError(f"a pair's {name} rows fall outside the {name} table")
    out = np.empty(pairs, np.float32)
    ptrs = [a.ctypes.data for a in (t_phi, v_phi, text_mask)]
    rest = [a.ctypes.data for a in (*bases, t_lin, v_lin, bias, w_out)]
    scale = head.hidden ** -0.5  # Eq. 2's scale, as pair_gamma applies it
    _run(lambda a, b: lib.local_head_rows(*ptrs, scale, *rest, b_out, a, b, words, regions,
                                          hidden, head.k1, head.k2,
                                          int(repeated == "image"), out.ctypes.data),
         pairs, threads)
    return out
