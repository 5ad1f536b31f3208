#!/usr/bin/env bash
# The whole test suite from a fresh clone, in one command (the README's second command; .ci/run calls it):
#   1. the Debian packages the tests use, installed with apt-get when missing (root or sudo), else the one
#      command to run is printed and nothing else happens;
#   2. the locked Python packages (requirements/dev.txt, pinned with hashes), then the project itself;
#   3. pytest (arguments are passed on: scripts/test.sh tests/core -x).
# Tests read the small public set committed under tests/data; CXR_DATA_DIR=../shared/data makes the
# data-driven tests larger.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 QT_QPA_PLATFORM=offscreen PIP_DISABLE_PIP_VERSION_CHECK=1

py=${PYTHON:-python}
if ! "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "scripts/test.sh: the lock (requirements/dev.txt) is for Python 3.11; found $("$py" --version 2>&1)." >&2
  echo "Run it with a Python 3.11: PYTHON=python3.11 scripts/test.sh" >&2
  exit 2
fi

# Debian packages: Qt's runtime libraries (offscreen and a real X window under Xvfb), Orthanc (a real PACS
# on loopback for the DICOM network tests), dicom3tools (dciodvfy validates every DICOM object written),
# dcmtk (dsrdump renders SR), poppler-utils (pdftotext/pdftoppm read PDF reports back).
debs=()
for pkg in libegl1 libgl1 libopengl0 libxkbcommon0 libxkbcommon-x11-0 libfontconfig1 libfreetype6 libdbus-1-3 \
           libglib2.0-0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-shape0 \
           libxcb-randr0 libxcb-xinerama0 libxcb-cursor0 xvfb xauth orthanc dicom3tools dcmtk poppler-utils; do
  dpkg -s "$pkg" >/dev/null 2>&1 || debs+=("$pkg")
done
if ((${#debs[@]})); then
  if [ "$(id -u)" = 0 ]; then apt=(apt-get); elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then apt=(sudo apt-get)
  else
    echo "scripts/test.sh: missing system packages. Run this once, then run scripts/test.sh again:" >&2
    echo "  sudo apt-get install -y ${debs[*]}" >&2
    exit 2
  fi
  echo "installing: ${debs[*]}"
  "${apt[@]}" update -qq
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends "${debs[@]}" >/dev/null
fi

"$py" -m pip install -q --require-hashes -r requirements/dev.txt
"$py" -m pip install -q --no-deps -e .
exec "$py" -m pytest "$@"
