#!/usr/bin/env bash
# Set up (if needed), build the docs and run the whole test suite: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check autocls tests examples bench docs
# the documentation site (into site/, ignored): a broken link or a stale docstring reference fails here
NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict --clean
.venv/bin/python -m pytest "$@"
