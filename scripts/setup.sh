#!/usr/bin/env bash
# Create .venv and install fxgrad with its test and zoo extras.
# Installs only when needed: on the first run, and again only when pyproject.toml or this
# script changed since the last install (their hash is kept in .venv/.fxgrad-installed).
# FXGRAD_REINSTALL=1 forces an install.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.fxgrad-installed
wanted=$(.venv/bin/python - <<'EOF'
import hashlib
digest = hashlib.sha256()
for name in ("pyproject.toml", "scripts/setup.sh"):
    with open(name, "rb") as f:
        digest.update(f.read())
print(digest.hexdigest())
EOF
)
if [ "${FXGRAD_REINSTALL:-0}" != "1" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] \
  && .venv/bin/python -c "import fxgrad" 2>/dev/null; then
  echo "fxgrad's .venv is up to date (pyproject.toml unchanged since the last install)"
  exit 0
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The build's own warnings (setuptools deprecations) are shown only if the install fails.
.venv/bin/python -m pip install -q --upgrade pip >"$log" 2>&1 || true
# torch and torchvision are pinned as a pair: torchvision only imports beside its own torch.
if ! .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[dev,zoo]" \
  >"$log" 2>&1; then
  cat "$log" >&2
  echo "setup: pip install failed (output above)" >&2
  exit 1
fi
.venv/bin/python -c "import fxgrad, torch, torchvision; print('fxgrad', fxgrad.__version__, 'torch', torch.__version__)"
echo "$wanted" >"$stamp"
