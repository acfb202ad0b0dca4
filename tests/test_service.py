"""The HTTP service (hgan/serving/service.py) through real HTTP on loopback, over a
stand-in searcher: every route, and every bad input answered with its status while the
process keeps serving; then a real ``Searcher`` (over search_standin.py's model) whose
gallery grows while it is served. The real export is served in test_eval_export.py."""
import json
import os
import urllib.error
import urllib.request

import numpy as np
import pytest

from hgan.serving import ann, gallery, service

PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 16


class StandIn:
    """What the app reads of a ``search.Searcher``: query, store, default_rerank_k, stage1."""

    def __init__(self, store):
        self.store, self.default_rerank_k, self.calls = store, 7, []
        self.stage1 = type("Stage1", (), {"exact": True})()

    def explain(self, text, row):
        if text == "iatv":
            raise LookupError("this model exports no word-level selections to show")
        return {"row": row, "path": self.store.paths()[row], "words": ["red", "coat"],
                "regions": [[{"word": "red", "slot": 0, "weight": 0.7}], []]}

    def query(self, text, top_k, rerank_k):
        self.calls.append((text, top_k, rerank_k))
        rows = list(range(len(self.store)))[::-1][:top_k]
        return [{"path": self.store.paths()[r], "row": r, "score": 1.0 - 0.1 * i,
                 **({"rerank": 5.0 - i} if i < 2 else {})} for i, r in enumerate(rows)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("svc")
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "a.png").write_bytes(PNG)
    (photos / "sub" / "b.jpg").write_bytes(b"\xff\xd8jpeg")
    (root / "secret.png").write_bytes(b"TOP-SECRET-BYTES")
    store = gallery.Gallery.create(str(root / "g"), "m", {"global": (2,)},
                                   source={"kind": "folder", "root": str(photos)})
    # A path that would escape the folder: in the gallery, but never served.
    store.append(["a.png", "sub/b.jpg", "../secret.png"], {"global": np.zeros((3, 2))})
    searcher = StandIn(gallery.Gallery.open(store.path))
    running = service.Server(service.create_app(searcher, max_body=2048)).start()
    yield running.url, searcher
    running.stop()


def _call(url, path, body=None, raw=None, headers=None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url + path, data=data, headers=headers or {
        "Content-Type": "application/json"}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def test_page_health_and_search(server):
    url, searcher = server
    status, kind, page = _call(url, "/")
    assert status == 200 and kind.startswith("text/html") and b'id="text"' in page
    status, _, body = _call(url, "/api/health")
    assert status == 200 and json.loads(body) == {
        "images": 3, "model": "m", "rerank_k": 7, "stage1": "exact",
        "updated": searcher.store.manifest["updated"], "reload_error": None}
    status, _, body = _call(url, "/api/search", {"text": "a red coat", "top_k": 2})
    out = json.loads(body)
    assert status == 200 and searcher.calls[-1] == ("a red coat", 2, None)
    assert out["query"] == "a red coat" and out["rerank_k"] == 7
    assert [(r["rank"], r["row"], r["path"], r["image"]) for r in out["results"]] == [
        (1, 2, "../secret.png", "/api/image/2"), (2, 1, "sub/b.jpg", "/api/image/1")]
    assert out["results"][0]["rerank"] == 5.0 and out["results"][0]["score"] == 1.0
    status, _, body = _call(url, "/api/search", {"text": "x", "rerank_k": 0})
    assert status == 200 and json.loads(body)["rerank_k"] == 0


def test_images_of_the_gallery_only(server):
    url, _ = server
    assert _call(url, "/api/image/0")[:3:2] == (200, PNG)
    assert _call(url, "/api/image/0")[1] == "image/png"
    status, kind, data = _call(url, "/api/image/1")
    assert status == 200 and data == b"\xff\xd8jpeg" and kind == "image/jpeg"
    for row in ("2", "3", "-1"):  # escapes the folder / not in the gallery
        status, _, body = _call(url, f"/api/image/{row}")
        assert status == 404 and b"TOP-SECRET" not in body, row
    assert _call(url, "/api/image/abc")[0] == 422


def test_a_file_lists_images_are_served_where_it_listed_them(tmp_path):
    (tmp_path / "cams").mkdir()
    (tmp_path / "cams" / "a.png").write_bytes(PNG)
    (tmp_path / "other.jpg").write_bytes(b"\xff\xd8jpeg")
    store = gallery.Gallery.create(str(tmp_path / "g"), "m", {"global": (2,)},
                                   source={"kind": "list", "root": str(tmp_path / "cams")})
    store.append(["a.png", str(tmp_path / "other.jpg"), "gone.png"],
                 {"global": np.zeros((3, 2))})
    images = service.ImageSource(gallery.Gallery.open(store.path))
    assert images.read(0) == (PNG, "image/png")
    assert images.read(1) == (b"\xff\xd8jpeg", "image/jpeg")  # an absolute path listed
    with pytest.raises(service.BadRequest, match="not an image of the gallery's list"):
        images.read(2)  # listed, indexed, since deleted


@pytest.mark.parametrize("raw,status,message", [
    (b"not json", 400, "not JSON"),
    (b"\xff\xfe", 400, "not JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"text": ""}', 422, "non-empty string"),
    (b'{"text": "   "}', 422, "non-empty string"),
    (b'{"text": 5}', 422, "non-empty string"),
    (b'{"top_k": 3}', 422, "non-empty string"),
    (json.dumps({"text": "a" * 1001}).encode(), 422, "at most 1000"),
    (b'{"text": "a", "top_k": 0}', 422, "top_k must be in"),
    (b'{"text": "a", "top_k": 101}', 422, "top_k must be in"),
    (b'{"text": "a", "top_k": "5"}', 422, "top_k must be an integer"),
    (b'{"text": "a", "top_k": true}', 422, "top_k must be an integer"),
    (b'{"text": "a", "top_k": 2.5}', 422, "top_k must be an integer"),
    (b'{"text": "a", "rerank_k": -1}', 422, "rerank_k must be in"),
    (b'{"text": "a", "k": 3}', 422, "unknown fields"),
    (json.dumps({"text": "a" * 3000}).encode(), 413, "over 2048 bytes"),
])
def test_bad_input_gets_its_status_and_the_server_keeps_serving(server, raw, status, message):
    url, searcher = server
    before = len(searcher.calls)
    got, kind, body = _call(url, "/api/search", raw=raw)
    assert got == status and kind == "application/json"
    assert message in json.loads(body)["detail"]
    assert len(searcher.calls) == before  # nothing reached the model
    assert _call(url, "/api/health")[0] == 200


def test_a_body_over_the_limit_without_a_length_is_refused_too(server):
    import http.client
    url, _ = server
    host, port = url[len("http://"):].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/api/search")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for _ in range(5):
        chunk = b" " * 1000
        conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    assert response.status == 413 and b"over 2048" in response.read()
    assert _call(url, "/api/health")[0] == 200


def test_parse_search_reads_what_it_is_given():
    assert service.parse_search(b'{"text": "a", "top_k": 3, "rerank_k": null}') == \
        {"text": "a", "top_k": 3, "rerank_k": None}
    assert service.parse_search(b'{"text": "a"}') == {"text": "a", "top_k": 10,
                                                      "rerank_k": None}


def test_explain_returns_a_results_word_map(server):
    url, _ = server
    status, _, body = _call(url, "/api/explain", {"text": "a red coat", "row": 1})
    assert status == 200
    assert json.loads(body) == {"row": 1, "path": "sub/b.jpg", "words": ["red", "coat"],
                                "regions": [[{"word": "red", "slot": 0, "weight": 0.7}], []]}
    for request, code, message in ((b'{"text": "a"}', 422, "row must be"),
                                   (b'{"text": "a", "row": -2}', 422, "row must be"),
                                   (b'{"text": "a", "row": "1"}', 422, "row must be"),
                                   (b'{"text": "", "row": 1}', 422, "non-empty"),
                                   (b'{"text": "a", "row": 1, "x": 0}', 422, "unknown fields"),
                                   (b'nope', 400, "not JSON"),
                                   (b'{"text": "iatv", "row": 1}', 404, "no word-level")):
        got, _, answer = _call(url, "/api/explain", raw=request)
        assert got == code and message in json.loads(answer)["detail"], request


def test_the_page_and_images_are_served_while_a_query_computes(tmp_path):
    # The model runs in the thread pool: a query that has not finished does not hold up
    # the event loop's other routes.
    import threading
    store = gallery.Gallery.create(str(tmp_path / "g"), "m", {"global": (2,)},
                                   source={"kind": "folder", "root": str(tmp_path)})
    (tmp_path / "a.png").write_bytes(PNG)
    store.append(["a.png"], {"global": np.zeros((1, 2))})
    release, entered = threading.Event(), threading.Event()

    class Slow(StandIn):
        def query(self, text, top_k, rerank_k):
            entered.set()
            assert release.wait(30)
            return super().query(text, top_k, rerank_k)

    running = service.Server(service.create_app(Slow(gallery.Gallery.open(store.path)))).start()
    try:
        answer = {}
        client = threading.Thread(target=lambda: answer.update(
            zip(("status", "kind", "body"), _call(running.url, "/api/search", {"text": "a"}))))
        client.start()
        assert entered.wait(30)
        assert _call(running.url, "/api/health")[0] == 200  # while the query waits
        assert _call(running.url, "/api/image/0")[::2] == (200, PNG)
        release.set()
        client.join(30)
        assert answer["status"] == 200 and json.loads(answer["body"])["results"]
    finally:
        release.set()
        running.stop()


def _grown_gallery_service(monkeypatch, tmp_path, reload_every):
    """A real ``searcher.Searcher`` (over the stand-in model) of photos 1-3 served, and a
    function that indexes more photos into its gallery as ``hgan-search index`` would."""
    from hgan.serving import searcher
    from search_standin import fake_savedmodel, served
    monkeypatch.setattr(searcher, "_load", lambda savedmodel: served())
    model, folder, out = fake_savedmodel(tmp_path / "saved"), tmp_path / "photos", \
        str(tmp_path / "gallery")
    folder.mkdir()

    def index(numbers):
        for i in numbers:
            (folder / f"{i}.png").write_bytes(f"IMG:{i}".encode())
        searcher.build_index(model, out, images=str(folder), ann_threshold=1,
                             log=lambda *_: None)

    index([1, 2, 3])
    logged = []
    app = service.create_app(searcher.Searcher(model, out), reload_every=reload_every,
                             log=logged.append)
    return service.Server(app).start(), index, out, logged


def _paths_found(url):
    status, _, body = _call(url, "/api/search", {"text": "red", "top_k": 100, "rerank_k": 0})
    assert status == 200
    return sorted(r["path"] for r in json.loads(body)["results"])


def test_reload_serves_the_grown_gallery_and_refuses_a_damaged_one(monkeypatch, tmp_path):
    pytest.importorskip("faiss")
    running, index, out, logged = _grown_gallery_service(monkeypatch, tmp_path, 0)
    try:
        index([4, 5])  # while it serves
        assert json.loads(_call(running.url, "/api/health")[2])["images"] == 3
        assert _paths_found(running.url) == ["1.png", "2.png", "3.png"]
        assert _call(running.url, "/api/image/4")[0] == 404  # not in the served state
        status, _, body = _call(running.url, "/api/reload", raw=b"")
        assert status == 200 and json.loads(body) == {"images": 5, "previous": 3}
        assert _paths_found(running.url) == [f"{i}.png" for i in range(1, 6)]
        assert _call(running.url, "/api/image/4")[::2] == (200, b"IMG:5")
        assert logged == ["serving 5 images (was 3)"]
        # Another gallery's IVF put in place: refused, the loaded state still served.
        ivf = os.path.join(out, "ann.faiss")
        ann.save(ann.build(np.random.default_rng(0).normal(size=(5, 2)), threshold=0,
                           nlist=1), ivf + ".other")
        os.replace(ivf + ".other", ivf)
        status, _, body = _call(running.url, "/api/reload", raw=b"")
        detail = json.loads(body)["detail"]
        assert status == 409 and "ann.faiss does not hold the gallery's row 0" in detail
        assert "still serving the 5 images loaded before" in detail
        health = json.loads(_call(running.url, "/api/health")[2])
        assert health["images"] == 5 and "another gallery's IVF" in health["reload_error"]
        assert _paths_found(running.url) == [f"{i}.png" for i in range(1, 6)]
        index([6])  # index finds the IVF foreign, trains one: the next reload is served
        assert _call(running.url, "/api/reload", raw=b"")[0] == 200
        health = json.loads(_call(running.url, "/api/health")[2])
        assert health["images"] == 6 and health["reload_error"] is None
    finally:
        running.stop()


def test_the_service_picks_up_a_grown_gallery_by_itself(monkeypatch, tmp_path):
    import time
    running, index, _, logged = _grown_gallery_service(monkeypatch, tmp_path, 0.05)
    try:
        index([4])
        deadline = time.time() + 30
        while json.loads(_call(running.url, "/api/health")[2])["images"] != 4:
            assert time.time() < deadline, "the grown gallery was not picked up in 30 s"
            time.sleep(0.05)
        assert _paths_found(running.url) == ["1.png", "2.png", "3.png", "4.png"]
        assert logged == ["serving 4 images (was 3)"]
    finally:
        running.stop()
