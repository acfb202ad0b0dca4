"""The package's commands: each module parses absl flags and calls the library.

Every module here is a console script of the installed package (``pyproject.toml``) and a
``python -m hgan.cli.NAME`` module: ``define_flags()`` declares its flags (only when it
runs, so tests can import several commands in one process) and ``run()`` starts it.
"""
import contextlib
import sys
import time

from absl import app, flags, logging


def start(main, doc: str, flags_parser=None) -> None:
    """Runs ``main`` under absl with ``doc`` (the command module's docstring) and the
    command module's flags as what ``--help`` prints: a console script's ``__main__`` is a
    wrapper without either. ``flags_parser``: absl's, for a command that hands the
    arguments it does not know to another parser."""
    sys.modules["__main__"].__doc__ = doc
    if main.__module__ != "__main__":
        for flag in flags.FLAGS.flags_by_module_dict().get(main.__module__, []):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)

    def quiet_main(argv):
        # WARNING and above only: TensorFlow's and Orbit's INFO records (the saver's, the
        # signature serialiser's, each training step's metric dict) would fill the
        # terminal beside the command's own lines; --verbosity=0 shows them. Set here, as
        # absl's app.run raises an unset --verbosity to INFO after parsing the flags.
        if not flags.FLAGS["verbosity"].present:
            flags.FLAGS.verbosity = logging.WARNING
        return main(argv)

    app.run(quiet_main, flags_parser=flags_parser or app.parse_flags_with_usage)


def print_report(report: dict, output_json: str) -> None:
    """What hgan-eval prints of an evaluation report: its Markdown tables and where the
    files went."""
    print(report["markdown"])
    print(f"metrics: {output_json}")
    if "html" in report:
        print(f"report: {report['html']}")


def report_time(name: str, start: float) -> None:
    """Prints ``   (NAME: 6.1 s)``, the time since ``start`` (``time.monotonic()``)."""
    print(f"   ({name}: {time.monotonic() - start:.1f} s)", flush=True)


@contextlib.contextmanager
def timed(name: str):
    """``with timed("export"):`` prints ``   (export: 6.1 s)`` when the block ends (for a
    command that does several things)."""
    start = time.monotonic()
    yield
    report_time(name, start)
