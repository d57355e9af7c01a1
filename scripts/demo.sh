#!/usr/bin/env bash
# Set up (if needed) and show what fxgrad rewrites in the bundled example model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null  # says what it does on stderr
echo "fxgrad diff examples/unsafe_inplace.py:Model --input 'float32[4,8]'" >&2
# exit code 1 means "rewrites proposed", which is what this example is for
.venv/bin/fxgrad diff examples/unsafe_inplace.py:Model --input 'float32[4,8]' || [ $? -eq 1 ]
