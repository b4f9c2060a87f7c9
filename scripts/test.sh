#!/usr/bin/env bash
# Install initlint with its dev extras into .venv and run the whole test suite.
# TORCH_SPEC overrides the pinned CPU build (e.g. TORCH_SPEC="torch==2.5.1"); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
log=$(mktemp)
pipq() {
  if ! .venv/bin/python -m pip install -q "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "error: pip install $* failed" >&2
    exit 2
  fi
}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pipq --upgrade pip
pipq "${TORCH_SPEC:-torch==2.13.0}"
pipq -c scripts/constraints.txt -e ".[dev]"
exec .venv/bin/python -m pytest "$@"
