#!/usr/bin/env bash
# Run the test suite on a fresh machine (this is the README's test command and what .ci/run runs):
#   1. Debian's chromium for the browser test of the demo, if it is missing and we are root;
#   2. a virtual environment .venv with the dev and demo extras (pytest, gradio, playwright, ...);
#   3. pytest, with any arguments given here. Exits with pytest's code.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing chromium (apt-get) for the browser test" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
      || echo "test.sh: could not install chromium: the browser test will be skipped" >&2
  else
    echo "test.sh: chromium is not on PATH and we are not root: the browser test will be skipped" >&2
  fi
fi

python3 -m venv .venv || exit 1
.venv/bin/pip install -q -e '.[dev,demo]' || exit 1
exec .venv/bin/python -m pytest "$@"
