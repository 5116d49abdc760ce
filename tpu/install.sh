#!/usr/bin/env bash
# Ships this checkout to every worker of every slice and installs it there (tpu/worker_setup.sh:
# a Python 3.11 venv made by uv, the tested versions of constraints.txt, jax[tpu] and gcsfs).
# Rerun after changing the code; the venv is kept.
set -euo pipefail
# shellcheck source=tpu/env.sh
source "$(dirname "$0")/env.sh"

root="$(cd "$(dirname "$0")/.." && pwd)"
archive="$(mktemp -d)/jaxcl.tar.gz"
tar -C "$root" -czf "$archive" --exclude=.git --exclude=runs --exclude='*.egg-info' \
  --exclude=__pycache__ --exclude=.venv .
for node in $(nodes); do
  gcloud_tpu tpu-vm scp "$archive" "$node:jaxcl.tar.gz" --worker=all
  gcloud_tpu tpu-vm ssh "$node" --worker=all --command="set -e
    rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -C ~/$REMOTE_DIR -xzf ~/jaxcl.tar.gz
    bash ~/$REMOTE_DIR/tpu/worker_setup.sh"
done
