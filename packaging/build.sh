#!/usr/bin/env bash
# Build the one-folder CPU application (no PyTorch inside) and prove it works.
#
#   packaging/build.sh [--models DIR]... [--skip-check] [--resources-only]
#
# 1. installs the locked build set (requirements/bundle.txt) and the project if missing;
# 2. stages the shipped models with ONNX exports verified against torch (packaging/stage.py);
# 3. freezes the viewer with PyInstaller (packaging/cxr-viewer.spec) into dist/cxr-viewer/;
# 4. runs packaging/check_bundle.py: self-test, sample analysis, screenshot, start-up time and
#    size, with an environment that holds no Python (env -i, PATH=/usr/bin:/bin).
# The result is dist/cxr-viewer/ (run dist/cxr-viewer/cxr-viewer) and dist/cxr-viewer-check.json.
# --resources-only re-stages the models into an existing dist/cxr-viewer without re-freezing
# (new or retrained bundles; the application code is unchanged).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1

models=()
check=1
freeze=1
while (($#)); do
  case "$1" in
    --models) models+=(--models "$2"); shift 2 ;;
    --skip-check) check=0; shift ;;
    --resources-only) freeze=0; shift ;;
    -h|--help) sed -n 2,13p "$0"; exit 0 ;;
    *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

# the frozen app is built from the locked set (requirements/bundle.txt: the viewer's packages, PyInstaller,
# and the trainer's torch that stages and verifies the models' exports)
if ! python -c "import PyInstaller, cxr_viewer" 2>/dev/null; then
  python -m pip install -q --require-hashes -r requirements/bundle.txt
  python -m pip install -q --no-deps -e .
fi

echo "== staging models, samples and text encoder (ONNX exports verified against torch)"
python packaging/stage.py "${models[@]}" --out build/stage

if ((freeze)); then
  echo "== freezing with PyInstaller"
  CXR_STAGE_DIR=build/stage python -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath dist --workpath build/pyinstaller packaging/cxr-viewer.spec
else
  [[ -x dist/cxr-viewer/cxr-viewer ]] || { echo "build.sh: no dist/cxr-viewer to update; build it first" >&2; exit 2; }
  echo "== replacing the models and samples inside dist/cxr-viewer"
  rm -rf dist/cxr-viewer/_internal/resources
  cp -r build/stage/resources dist/cxr-viewer/_internal/resources
fi

if ((check)); then
  echo "== checking the frozen application"
  python packaging/check_bundle.py dist/cxr-viewer --json dist/cxr-viewer-check.json
fi
echo "== done: dist/cxr-viewer/cxr-viewer"
