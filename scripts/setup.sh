#!/usr/bin/env bash
# Create .venv (if missing) and install lsmerge with its test extras (LSMERGE_EXTRAS, default dev).
# torch is pinned first to the CPU build that this machine has on disk; elsewhere any
# torch in lsmerge's range works (install your own build before running this).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LSMERGE_VENV:-.venv}
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# not -q: pip prints a line per package, so a first install is never silent for minutes
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install --progress-bar off "torch==2.13.0"
# the dev extra holds the test tools and lm-evaluation-harness (`lsmerge evaluate --tasks`), so the tests run it
"$VENV/bin/python" -m pip install --progress-bar off -e ".[${LSMERGE_EXTRAS:-dev}]"
echo "lsmerge installed in $VENV"
