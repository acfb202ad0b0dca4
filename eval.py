"""Evaluates a trained model: the same command as ``hgan-eval`` (``hgan/cli/eval.py``)."""
from hgan.cli.eval import run

if __name__ == "__main__":
    run()
