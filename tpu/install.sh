#!/usr/bin/env bash
# Copies this checkout to every worker and installs it with jax[tpu] (and gcsfs for gs://
# workdirs) into ~/venv there. Rerun after changing the code.
set -euo pipefail
# shellcheck source=tpu/env.sh
source "$(dirname "$0")/env.sh"

root="$(cd "$(dirname "$0")/.." && pwd)"
archive="$(mktemp -d)/jaxcl.tar.gz"
tar -C "$root" -czf "$archive" --exclude=.git --exclude=runs --exclude='*.egg-info' \
  --exclude=__pycache__ --exclude=.venv .
gcloud_tpu tpu-vm scp "$archive" "$TPU_NAME:jaxcl.tar.gz" --worker=all
on_all_workers "set -e
  rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -C ~/$REMOTE_DIR -xzf ~/jaxcl.tar.gz
  [ -d ~/venv ] || python3 -m venv ~/venv
  ~/venv/bin/pip install -q -U pip
  ~/venv/bin/pip install -q -e ~/$REMOTE_DIR'[tpu,gcs]'
  ~/venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_devices())'"
