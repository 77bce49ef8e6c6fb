#!/usr/bin/env bash
# The oldest torch/Beam pair that setup.py allows (requirements-oldest.txt), in a virtualenv of its own
# (.venv-oldest, or $VENV: a second ~6 GB stack): installs it with audiotok (editable) and runs the test suite (pytest
# arguments are passed on, e.g. -m "not slow"). Not part of CI: run it when a lower bound in setup.py
# changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv-oldest}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
"$VENV/bin/python" -m pip install -q -r requirements-oldest.txt
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -m pip check
"$VENV/bin/python" -m pytest -q "$@"
