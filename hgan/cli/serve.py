"""hgan-serve: serves person search over HTTP, a JSON API and a web page
(``hgan.serving.service``).

  hgan-serve --savedmodel=demo_out/savedmodel --index=demo_out/gallery \
      [--host=127.0.0.1] [--port=8080] [--nprobe=N] [--reload_every=30]

Then open http://127.0.0.1:8080/ (or POST {"text": ...} to /api/search). The gallery comes
from ``hgan-search index``; one made by another model, or one whose files are damaged, is
refused. While ``index`` grows the gallery, the loaded state is served; every
``--reload_every`` seconds (and on POST /api/reload) a changed gallery is checked and, if
it checks out, served in its place.
"""
from __future__ import annotations

import functools

from absl import app, flags

from hgan.cli import gallery_flags, start

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("savedmodel", None, "Exported model (hgan-export).")
    flags.DEFINE_string("index", None, "Gallery directory (hgan-search index).")
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (loopback by default).")
    flags.DEFINE_integer("port", 8080, "Port (0: any free one).")
    gallery_flags.define_nprobe()
    flags.DEFINE_float("reload_every", 30.0, "Seconds between checks of the gallery's files; "
                       "a changed gallery that checks out is served in place of the loaded "
                       "one (0: only on POST /api/reload).")
    flags.mark_flags_as_required(["savedmodel", "index"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from hgan.serving import searcher, service
    engine = searcher.Searcher(FLAGS.savedmodel, FLAGS.index, nprobe=FLAGS.nprobe)
    engine.query("a person", top_k=1)  # warm: the first call traces the signatures
    web_app = service.create_app(engine, reload_every=FLAGS.reload_every,
                                 log=functools.partial(print, flush=True))
    server = service.Server(web_app, FLAGS.host, FLAGS.port).start()
    print(f"serving {len(engine)} images at {server.url}/  (Ctrl-C stops)", flush=True)
    try:
        server.thread.join()
    except KeyboardInterrupt:
        server.stop()


def run():
    define_flags()
    start(main, __doc__)


if __name__ == "__main__":
    run()
