#!/usr/bin/env bash
# Try the newest versions within setup.py's bounds: a fresh virtual environment without
# constraints.txt, the lint and the test suite, then the frozen set written to
# constraints.new.txt. Copy it over constraints.txt when the suite passes.
# VENV may be set (default: a temporary folder, removed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$(mktemp -d)/venv}
python -m venv "$VENV"
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q -U -e ".[cpu,dev]"
"$VENV/bin/ruff" check .
"$VENV/bin/python" -m pytest -x -q
{
    echo "# Known-good set: the versions CI tests (CPU). Regenerate with tools/update_constraints.sh."
    echo "torch==2.13.0"
    "$VENV/bin/pip" freeze --exclude-editable | grep -v -e '^torch==' -e '^#'
} > constraints.new.txt
echo "constraints.new.txt written ($(wc -l < constraints.new.txt) lines); tested with $("$VENV/bin/python" --version)"
