#!/usr/bin/env bash
# The oldest torch/Beam pair that setup.py allows (requirements-oldest.txt), in a virtualenv of its own
# (.venv-oldest, a second ~6 GB stack): installs it with audiotok (editable) and runs the test suite (pytest
# arguments are passed on, e.g. -m "not slow"). Not part of CI: run it when a lower bound in setup.py
# changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-oldest/bin/python ]; then
  "$PY" -m venv .venv-oldest
fi
.venv-oldest/bin/python -m pip install -q --upgrade pip setuptools wheel
.venv-oldest/bin/python -m pip install -q -r requirements-oldest.txt
.venv-oldest/bin/python -m pip install -q --no-deps -e .
.venv-oldest/bin/python -m pip check
.venv-oldest/bin/python -m pytest -q "$@"
