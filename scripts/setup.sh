#!/usr/bin/env bash
# Create .venv and install fxgrad with its test and zoo extras (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch and torchvision are pinned as a pair: torchvision only imports beside its own torch.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[dev,zoo]" 2>&1 \
  | grep -v -E "^WARNING: Location|is ignored" || true
.venv/bin/python -c "import fxgrad, torch, torchvision; print('fxgrad', fxgrad.__version__, 'torch', torch.__version__)"
