"""Trains a model: the same command as ``hgan-train`` (``hgan/cli/train.py`` says how)."""
from hgan.cli.train import run

if __name__ == "__main__":
    run()
