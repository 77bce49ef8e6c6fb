#!/usr/bin/env bash
# Sets up a fresh machine: a virtualenv in .venv with the pinned stack, the test extras and
# audiotok itself (editable). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip "setuptools<82" wheel  # torch 2.11 requires setuptools<82
python -m pip install -q -r requirements-test.txt
python -m pip install -q --no-deps -e .
python -m pip check
