"""Person search as an HTTP service: a JSON API and a web page over a SavedModel and a
gallery (``hgan-serve``), on FastAPI (Starlette) served by uvicorn.

  GET  /                  the page: type a sentence, see the ranked grid with scores
  GET  /api/health        {"images", "model", "rerank_k", "stage1": "exact" | "ivf",
                          "updated" (the served state's commit time), "reload_error"}
  POST /api/search        {"text", "top_k"?, "rerank_k"?} → {"query", "top_k", "rerank_k",
                          "results": [{"rank", "path", "row", "score", "rerank"?,
                          "image"}], "ms"}: ``hgan.serving.searcher.Searcher.query``
  POST /api/explain       {"text", "row"} → Fig. 4 for that result: {"row", "path", "words",
                          "regions": [[{"word", "slot", "weight"}] per region]} (404 for
                          a model without word-level selections: IATV)
  GET  /api/image/{row}   the image of gallery row ``row`` (only indexed images are served)
  POST /api/reload        serve the gallery as it is on disk, once it checks out →
                          {"images", "previous"}; 409 with the reason, the loaded state kept

Names follow the SavedModel's: ``score`` is stage 1 (the global embeddings' cosine),
``rerank`` stage 2 (the export's ``rerank`` signature: HGAN's fused score, IATV's two-stage
score). Bad input gets a 4xx with a ``detail`` message and the process keeps serving: a body that is not JSON or not an object
(400), over ``max_body`` bytes (413), an empty or over-long ``text``, ``top_k`` / ``rerank_k``
out of range or of the wrong type (422), a row that is not in the gallery (404). A gallery
indexed by another model is refused at start (``gallery.ModelMismatch``).

The service answers from one checked state of the gallery (``hgan.serving.snapshot``)
while ``hgan-search index`` grows it: ``Reloader`` switches to the state on disk on
``POST /api/reload`` and, with ``reload_every``, whenever the gallery's files change; a
state that does not check out is not served (the loaded one stays, and ``/api/health``
gives the reason as ``reload_error``).
"""
from __future__ import annotations

import contextlib
import json
import mimetypes
import os
import threading
import time
from typing import Callable, Optional, Union

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from hgan.serving import gallery

MAX_TEXT = 1000  # characters of a query
MAX_TOP_K = 100
MAX_RERANK_K = 1000
MAX_BODY = 16 * 1024  # bytes of a request body
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "index.html")


class BadRequest(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def parse_search(body: bytes, max_body: int = MAX_BODY) -> dict:
    """A search request's body → {"text", "top_k", "rerank_k"} or ``BadRequest``."""
    request = _json_object(body, max_body, '{"text": "a man in a red coat"}')
    unknown = sorted(set(request) - {"text", "top_k", "rerank_k"})
    if unknown:
        raise BadRequest(422, f"unknown fields {unknown}; known: text, top_k, rerank_k")
    out = {"text": _text(request)}
    for name, default, top in (("top_k", 10, MAX_TOP_K), ("rerank_k", None, MAX_RERANK_K)):
        value = request.get(name, default)
        if value is None:
            out[name] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(422, f"{name} must be an integer")
        low = 1 if name == "top_k" else 0
        if not low <= value <= top:
            raise BadRequest(422, f"{name} must be in [{low}, {top}], got {value}")
        out[name] = value
    return out


class ImageSource:
    """The bytes of a gallery row's image, from the folder or the TFRecords it was indexed
    from: only rows of the gallery, and a folder path must resolve inside its root.
    ``store``: the gallery, or a function that returns the one being served."""

    def __init__(self, store: Union[gallery.Gallery, Callable[[], gallery.Gallery]]):
        self.current = store if callable(store) else (lambda: store)
        self.source = self.current().manifest.get("source") or {}
        self._records: Optional[dict] = None
        self._lock = threading.Lock()

    def read(self, row: int) -> tuple[bytes, str]:
        paths = self.current().paths()
        if not 0 <= row < len(paths):
            raise BadRequest(404, f"row {row} is not in the gallery (0..{len(paths) - 1})")
        path = paths[row]
        kind = self.source.get("kind")
        if kind in ("folder", "list"):
            root = os.path.realpath(self.source["root"])
            real = os.path.realpath(os.path.join(root, path))
            # A folder's images are under its root; a list's are where it said (the path
            # comes from the gallery row, never from the request).
            inside = kind == "list" or os.path.commonpath([root, real]) == root
            if not inside or not os.path.isfile(real):
                raise BadRequest(404, f"{path} is not an image of the gallery's {kind}")
            with open(real, "rb") as f:
                data = f.read()
        elif kind == "tfrecords":
            data = self._record_bytes().get(path)
            if data is None:
                raise BadRequest(404, f"{path} is not in {self.source['data_dir']}")
        else:
            raise BadRequest(404, "the gallery does not say where its images are")
        kind = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else \
            (mimetypes.guess_type(path)[0] or "image/jpeg")
        return data, kind

    def _record_bytes(self) -> dict:
        with self._lock:
            if self._records is None:
                from hgan.data import pipeline, records
                from hgan.tf_compat import tf
                files = pipeline.split_files(self.source["data_dir"], self.source["split"])
                ds = tf.data.TFRecordDataset(files).map(records.parse_example)
                self._records = {ex["path"].numpy().decode(): ex["encoded"].numpy()
                                 for ex in ds}
            return self._records


async def _bounded_body(request, max_body: int) -> bytes:
    """The request's body, refused (413) past ``max_body`` bytes whether it declares its
    length or is chunked."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise BadRequest(413, f"request body over {max_body} bytes")
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > max_body:
            raise BadRequest(413, f"request body over {max_body} bytes")
    return body


def _json_object(body: bytes, max_body: int, example: str) -> dict:
    if len(body) > max_body:
        raise BadRequest(413, f"request body over {max_body} bytes")
    try:
        request = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest(400, f"the body is not JSON: send {example}")
    if not isinstance(request, dict):
        raise BadRequest(400, f"the body must be a JSON object, e.g. {example}")
    return request


def _text(request: dict) -> str:
    text = request.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadRequest(422, "text must be a non-empty string")
    if len(text) > MAX_TEXT:
        raise BadRequest(422, f"text is {len(text)} characters; at most {MAX_TEXT}")
    return text


def parse_explain(body: bytes, max_body: int = MAX_BODY) -> dict:
    """An explanation request's body → {"text", "row"} or ``BadRequest``."""
    request = _json_object(body, max_body, '{"text": "a man in a red coat", "row": 3}')
    unknown = sorted(set(request) - {"text", "row"})
    if unknown:
        raise BadRequest(422, f"unknown fields {unknown}; known: text, row")
    row = request.get("row")
    if isinstance(row, bool) or not isinstance(row, int) or row < 0:
        raise BadRequest(422, "row must be a gallery row (an integer >= 0)")
    return {"text": _text(request), "row": row}


class Reloader:
    """Keeps a ``searcher.Searcher`` on the newest state of its gallery that checks out:
    ``reload`` at once, ``check`` when the gallery's files changed, ``watch`` every few seconds.
    A state that does not check out leaves the served one in place; ``error`` keeps why
    (None once a reload succeeds)."""

    def __init__(self, searcher, log: Optional[Callable[[str], None]] = None):
        self.searcher, self.log = searcher, log or (lambda _: None)
        self.error: Optional[str] = None
        self._lock = threading.Lock()  # one reload at a time

    def reload(self) -> dict:
        """``searcher.reload()``; raises its error (ValueError, OSError) after noting it."""
        with self._lock:
            try:
                out = self.searcher.reload()
            except (ValueError, OSError) as e:
                if str(e) != self.error:
                    self.log(f"still serving {len(self.searcher.store)} images: {e}")
                self.error = str(e)
                raise
            self.error = None
            if out["images"] != out["previous"]:
                self.log(f"serving {out['images']} images (was {out['previous']})")
            return out

    def check(self) -> None:
        """Reloads if the gallery's files changed since the served state was opened."""
        with contextlib.suppress(ValueError, OSError):  # kept in ``error``; tried again
            if self.searcher.changed():
                self.reload()

    def watch(self, every: float, stop: threading.Event) -> None:
        while not stop.wait(every):
            self.check()


def create_app(searcher, max_body: int = MAX_BODY, reload_every: float = 0.0,
               log: Optional[Callable[[str], None]] = None):
    """The FastAPI app over a ``searcher.Searcher`` (or anything with ``query``, ``store``,
    ``default_rerank_k``, ``stage1.exact``, and for reloading ``reload`` and
    ``changed``). ``reload_every`` > 0: seconds between checks of the gallery's files (a
    ``stat``), reloading when they changed; ``log`` hears of each switch and each state
    refused."""
    reloader = Reloader(searcher, log)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        stop = threading.Event()
        if reload_every > 0:
            threading.Thread(target=reloader.watch, args=(reload_every, stop),
                             daemon=True).start()
        yield
        stop.set()

    app = FastAPI(title="HGAN / IATV person search", docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    images = ImageSource(lambda: searcher.store)
    lock = threading.Lock()  # one query at a time through the SavedModel

    @app.exception_handler(BadRequest)
    async def bad_request(_, e: BadRequest):
        return JSONResponse({"detail": e.detail}, status_code=e.status)

    @app.get("/", response_class=HTMLResponse)
    def page():
        with open(PAGE, encoding="utf-8") as f:
            return f.read()

    @app.get("/api/health")
    def health():
        store = searcher.store
        return {"images": len(store), "model": store.manifest["model"],
                "rerank_k": searcher.default_rerank_k,
                "stage1": "exact" if searcher.stage1.exact else "ivf",
                "updated": store.manifest.get("updated"), "reload_error": reloader.error}

    @app.post("/api/reload")
    async def reload():
        try:
            return JSONResponse(await run_in_threadpool(reloader.reload))
        except (ValueError, OSError) as e:
            raise BadRequest(409, f"{e} (still serving the {len(searcher.store)} images "
                                  "loaded before)")

    def locked(fn, *args):
        with lock:
            return fn(*args)

    # The model runs in the thread pool, not on the event loop: while a query computes,
    # the page, health checks and images are still served. The response is a plain
    # JSONResponse (its values are JSON types already; FastAPI's encoder walk is skipped).
    @app.post("/api/search")
    async def search(request: Request):
        args = parse_search(await _bounded_body(request, max_body), max_body)
        start = time.perf_counter()
        results = await run_in_threadpool(locked, searcher.query, args["text"],
                                          args["top_k"], args["rerank_k"])
        ms = 1000 * (time.perf_counter() - start)
        rerank_k = searcher.default_rerank_k if args["rerank_k"] is None else args["rerank_k"]
        return JSONResponse({
            "query": args["text"], "top_k": args["top_k"], "rerank_k": rerank_k,
            "results": [{"rank": i + 1, **r, "image": f"/api/image/{r['row']}"}
                        for i, r in enumerate(results)], "ms": round(ms, 2)})

    @app.post("/api/explain")
    async def explain(request: Request):
        body = await _bounded_body(request, max_body)
        args = parse_explain(body, max_body)
        try:
            return JSONResponse(await run_in_threadpool(locked, searcher.explain,
                                                        args["text"], args["row"]))
        except LookupError as e:
            raise BadRequest(404, str(e).strip("'\""))

    @app.get("/api/image/{row}")
    def image(row: int):
        data, kind = images.read(row)
        return Response(data, media_type=kind, headers={"Cache-Control": "max-age=3600"})

    return app


class Server:
    """uvicorn in a background thread on ``host:port`` (port 0: a free one); ``url`` once
    started; ``stop()`` shuts it down. What ``hgan-serve`` runs in the foreground,
    and what the tests talk to over real HTTP."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn
        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                                     access_log=False)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self, timeout: float = 30.0) -> "Server":
        self.thread.start()
        deadline = time.time() + timeout
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
