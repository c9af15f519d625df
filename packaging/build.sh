#!/usr/bin/env bash
# Build dist/hmer/ (PyInstaller, one folder) in a fresh virtual environment, then
# check that the built program passes its smoke test offscreen.
#   Windows: run the same steps in PowerShell (venv\Scripts\activate); the spec is portable.
#   macOS:   the same; add --windowed to make an .app bundle, and sign it for distribution.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv build/venv
. build/venv/bin/activate
pip install --quiet --upgrade pip
# A CPU-only torch keeps the bundle small (TORCH_SPEC overrides, e.g. a local CPU wheel).
pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
pip install --quiet . pyinstaller
# The packaged app cannot compile its decoder (no compiler, no source), so it is compiled
# here, for any x86-64-v3 CPU, with the torch bundled (a few minutes; kept between builds
# of the same code). Linux only so far: elsewhere the packaged app runs it eagerly.
python packaging/compile_decoder.py build/compiled
pyinstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/hmer.spec
du -sh dist/hmer
QT_QPA_PLATFORM=offscreen HMER_CONFIG_DIR="$(mktemp -d)" HMER_DATA_DIR="$(mktemp -d)" \
  dist/hmer/hmer --smoke-test assets/sample_expression.inkml --screenshot build/smoke.png | tee build/smoke.txt
if [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] && ! grep -q "^decoder: using the compiled decoder step and teacher-forced pass" build/smoke.txt; then
  echo "the packaged app does not use its compiled decoder" >&2
  exit 1
fi
echo "built dist/hmer; smoke test passed, screenshot in build/smoke.png"
