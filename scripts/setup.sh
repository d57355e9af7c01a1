#!/usr/bin/env bash
# Create .venv and install fxgrad with its test and zoo extras.
# Installs only when needed: on the first run, and again only when pyproject.toml, setup.py or this
# script changed since the last install (their hash is kept in .venv/.fxgrad-installed).
# FXGRAD_REINSTALL=1 forces an install; FXGRAD_CUDA_TORCH=1 skips looking for the CPU-only
# torch build on a machine without an NVIDIA GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.fxgrad-installed
wanted=$(.venv/bin/python - <<'EOF'
import hashlib
digest = hashlib.sha256()
for name in ("pyproject.toml", "setup.py", "scripts/setup.sh"):
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
echo "setup: creating .venv and installing fxgrad with its test and zoo extras (first run: a few minutes)" >&2
# The build's own warnings (setuptools deprecations) are shown only if the install fails.
.venv/bin/python -m pip install -q --upgrade pip >"$log" 2>&1 || true
# torch and torchvision are pinned as a pair: torchvision only imports beside its own torch.
TORCH="torch==2.14.1"
VISION="torchvision==0.29.1"
# Without an NVIDIA GPU, the CPU-only build is a fraction of the default one (which bundles
# the CUDA libraries, several GB). Taken only where the index has both of the pinned pair;
# the `+cpu` labels make sure no other build of the same version is taken instead. The
# install below then keeps it (2.14.1+cpu satisfies ==2.14.1).
if ! command -v nvidia-smi >/dev/null 2>&1 && [ "${FXGRAD_CUDA_TORCH:-0}" != "1" ]; then
  echo "setup: no NVIDIA GPU found; trying the CPU-only build of $TORCH and $VISION" >&2
  if .venv/bin/python -m pip install -q --timeout 15 --retries 0 \
    --index-url https://download.pytorch.org/whl/cpu "$TORCH+cpu" "$VISION+cpu" >"$log" 2>&1; then
    echo "setup: installed the CPU-only build" >&2
  else
    echo "setup: no CPU-only build of that pair is reachable from here (PyTorch's CPU index" \
      "is unreachable, or lacks the pair); installing the default build, which runs on" \
      "the CPU too" >&2
  fi
fi
echo "setup: installing $TORCH, $VISION and fxgrad's dependencies" >&2
if ! .venv/bin/python -m pip install -q "$TORCH" "$VISION" -e ".[dev,zoo]" \
  >"$log" 2>&1; then
  cat "$log" >&2
  echo "setup: pip install failed (output above)" >&2
  exit 1
fi
.venv/bin/python -c "import fxgrad, torch, torchvision; print('fxgrad', fxgrad.__version__, 'torch', torch.__version__)"
echo "$wanted" >"$stamp"
