#!/usr/bin/env bash
# Creates .venv with the pinned stack. Idempotent and quick when nothing changed: a stamp holds
# the hash of the requirement files, and a matching stamp skips the install.
#   scripts/setup_env.sh            runtime + test pins
#   EXTRAS=bench scripts/setup_env.sh   also the PyTorch baseline for benchmarks/
set -euo pipefail
cd "$(dirname "$0")/.."

files="requirements.txt requirements-dev.txt pyproject.toml"
[ "${EXTRAS:-}" = "bench" ] && files="$files requirements-bench.txt"
want=$(cat $files | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ "$(cat .venv/.stamp 2>/dev/null)" = "$want" ]; then
  exit 0
fi

py="${PYTHON:-}"
if [ -z "$py" ]; then
  for candidate in python3.11 python3.12 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c \
        'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))'; then
      py="$candidate"; break
    fi
  done
fi
if [ -z "$py" ]; then
  echo "setup_env: need Python 3.10-3.12 (set PYTHON=/path/to/python)." >&2
  exit 1
fi

echo "setup_env: installing the pinned stack into .venv with $($py --version) ..." >&2
[ -x .venv/bin/python ] || "$py" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
req="-r requirements.txt -r requirements-dev.txt"
[ "${EXTRAS:-}" = "bench" ] && req="$req -r requirements-bench.txt"
.venv/bin/python -m pip install -q --disable-pip-version-check $req
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
# The CPU kernels, compiled now for this machine (cached; a failure only means XLA's ops).
.venv/bin/python -m cnn_jax.kernels || echo "setup_env: some CPU kernels are unavailable (above)." >&2
# The allocator the programs restart on (cnn_jax/runtime.py): mimalloc, from its wheel.
.venv/bin/python -c "from cnn_jax import runtime; runtime.find_mimalloc() or print(
    'setup_env: no mimalloc wheel for this platform, so programs run on jemalloc where '
    'installed, else on glibc with huge pages (slower on a CPU).')" >&2
echo "$want" > .venv/.stamp
echo "setup_env: done." >&2
