#!/usr/bin/env bash
# Runs on each TPU worker (tpu/install.sh): ~/venv with Python 3.11 (the TPU images ship 3.10,
# which jax 0.10 no longer supports; uv brings its own interpreter, no python3-venv needed),
# then this checkout with jax[tpu] and gcsfs at the tested versions (constraints.txt).
set -euo pipefail

checkout="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV:-$HOME/venv}"
python3 -m pip install -q --user --upgrade uv
uv="$(python3 -m site --user-base)/bin/uv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys; assert sys.version_info >= (3, 11)'; then
  "$uv" venv --python 3.11 "$venv"
fi
"$uv" pip install -q --python "$venv/bin/python" -c "$checkout/constraints.txt" \
  -e "${checkout}[tpu,gcs]"
"$venv/bin/python" -c 'import jax; print(jax.process_index(), jax.device_count(), jax.local_devices())'
