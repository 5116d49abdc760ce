#!/usr/bin/env bash
# Creates the TPU VM slice $TPU_NAME (see tpu/env.sh); SPOT=1 for Spot capacity, QUEUED=1 for a
# queued resource that waits for capacity. Returns once the slice is READY.
set -euo pipefail
# shellcheck source=tpu/env.sh
source "$(dirname "$0")/env.sh"

spot=""
if [ "$SPOT" = 1 ]; then
  spot="--spot"
fi

if [ "$QUEUED" = 1 ]; then
  gcloud_tpu queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" \
    --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" ${spot:+"$spot"}
  echo "queued; waiting for $TPU_NAME to become ACTIVE (Ctrl-C is safe, the request stays queued)"
  while true; do
    state="$(gcloud_tpu queued-resources describe "$TPU_NAME" --format='value(state.state)')"
    echo "$(date +%T) $state"
    case "$state" in
      ACTIVE) break ;;
      FAILED | SUSPENDED) echo "queued resource $TPU_NAME is $state" >&2; exit 1 ;;
    esac
    sleep 30
  done
else
  gcloud_tpu tpu-vm create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME" \
    ${spot:+"$spot"}
fi
gcloud_tpu tpu-vm describe "$TPU_NAME" --format='value(state,acceleratorType)'
