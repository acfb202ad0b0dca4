"""Serves person search over HTTP: a JSON API and a web page (``hgan.serving.service``).

  python -m hgan.serve --savedmodel=demo_out/savedmodel --index=demo_out/gallery \
      [--host=127.0.0.1] [--port=8080] [--nprobe=32]

Then open http://127.0.0.1:8080/ (or POST {"text": ...} to /api/search). The gallery comes
from ``python -m hgan.search index``; one made by another model is refused.
"""
from __future__ import annotations

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("savedmodel", None, "Exported model (python -m hgan.export).")
flags.DEFINE_string("index", None, "Gallery directory (python -m hgan.search index).")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (loopback by default).")
flags.DEFINE_integer("port", 8080, "Port (0: any free one).")
flags.DEFINE_integer("nprobe", 32, "IVF lists visited per query (galleries with an IVF).")
flags.mark_flags_as_required(["savedmodel", "index"])


def main(argv):
    del argv
    from hgan.serving import search, service
    searcher = search.Searcher(FLAGS.savedmodel, FLAGS.index, nprobe=FLAGS.nprobe)
    searcher.query("a person", top_k=1)  # warm: the first call traces the signatures
    server = service.Server(service.create_app(searcher), FLAGS.host, FLAGS.port).start()
    print(f"serving {len(searcher)} images at {server.url}/  (Ctrl-C stops)", flush=True)
    try:
        server.thread.join()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    app.run(main)
