#!/usr/bin/env bash
# Sets up .venv with the dev requirements and runs the whole test suite (two xdist workers;
# worksteal, because a few tests take a minute and most take a second).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# The search page is tested in a real headless browser: Debian's chromium and its driver.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing chromium and chromium-driver for the browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      chromium chromium-driver >/dev/null) || echo "could not install chromium: the browser test will skip"
  else
    echo "no chromium / chromedriver and no root apt: the browser test will skip"
  fi
fi
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/python -m pytest -q -n 2 --dist worksteal --durations=15 "$@"
