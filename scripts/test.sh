#!/usr/bin/env bash
# Run the test suite on a fresh machine (this is the README's test command and what .ci/run runs):
#   1. Debian's chromium (and ffmpeg) for the browser tests of the demo, if missing and we are root;
#   2. a virtual environment .venv with the dev and demo extras (pytest, gradio, playwright, ...);
#   3. pytest, with any arguments given here. Exits with pytest's code.
set -uo pipefail
cd "$(dirname "$0")/.."

missing=""
command -v chromium >/dev/null 2>&1 || missing="chromium"
command -v ffmpeg >/dev/null 2>&1 || missing="$missing ffmpeg"  # Gradio encodes the live tab's playback with it
if [ -n "$missing" ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing$missing (apt-get) for the browser tests" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; } >/dev/null 2>&1 \
      || echo "test.sh: could not install$missing: without chromium the browser tests are skipped; without ffmpeg the live tab's playback is not checked" >&2
  else
    echo "test.sh:$missing not on PATH and we are not root: without chromium the browser tests are skipped; without ffmpeg the live tab's playback is not checked" >&2
  fi
fi

python3 -m venv .venv || exit 1
.venv/bin/pip install -q -e '.[dev,demo]' || exit 1
exec .venv/bin/python -m pytest "$@"
