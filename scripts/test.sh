#!/usr/bin/env bash
# The test command (README): installs the pinned requirements, then runs the suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
python3 -m pytest -q "$@"
