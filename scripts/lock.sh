#!/usr/bin/env bash
# Regenerates the application's locks from pyproject.toml with pip-tools (every transitive package,
# pinned, with hashes): requirements/viewer.txt (the viewer), dev.txt (trainer + tests), bundle.txt
# (the frozen app's build: PyInstaller with the trainer's packages, which stage and verify the models).
# Python 3.11 on Linux x86_64, the platform CI and the frozen app are built on.
# tests/packaging/test_lock.py fails when pyproject.toml and a lock disagree.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v pip-compile >/dev/null || { echo "pip-compile not found: python -m pip install pip-tools" >&2; exit 2; }
compile() {  # $1 = output, then extra flags
  local out=$1; shift
  pip-compile -q --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
    --no-header "$@" -o "$out" pyproject.toml
  # The project itself is installed editable on top (pip refuses -e in hash-checking mode); drop the
  # self-reference the extras' `cxr-viewer[torch]` leave in the lock.
  python - "$out" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
text = re.sub(r"^cxr-viewer @ file://\S+\n(    # via .*\n)*", "", text, flags=re.M)
text = re.sub(r"^# WARNING: pip install will require.*\n(# Consider using a hashable URL.*\n)?", "", text, flags=re.M)
open(path, "w").write(
    "# Locked by scripts/lock.sh from pyproject.toml (pip-tools, Python 3.11, Linux x86_64). Do not edit.\n" + text
)
PY
}
mkdir -p requirements
compile requirements/viewer.txt
# One version of each package across the three: the trainer's and the build's locks are constrained by
# the viewer's, and the build's by the trainer's (the frozen app is staged with the trainer's torch).
compile requirements/dev.txt --extra dev -c requirements/viewer.txt
compile requirements/bundle.txt --extra dev --extra bundle -c requirements/dev.txt
echo "locked: $(grep -c '==' requirements/viewer.txt) viewer, $(grep -c '==' requirements/dev.txt) dev, $(grep -c '==' requirements/bundle.txt) bundle packages"
