#!/usr/bin/env bash
# Creates the slice(s) of tpu/env.sh. By default a queued resource: the request waits in Cloud
# TPU's queue until there is capacity (Ctrl-C stops the waiting, not the request); SPOT=1 asks
# for Spot capacity; NODE_COUNT=N makes N slices (multi-slice). QUEUED=0 creates one node
# directly (fails at once when there is no capacity). Returns once every node is READY.
set -euo pipefail
# shellcheck source=tpu/env.sh
source "$(dirname "$0")/env.sh"

spot=()
if [ "$SPOT" = 1 ]; then
  spot=(--spot)
fi

if [ "$QUEUED" = 1 ]; then
  if [ "$NODE_COUNT" -gt 1 ]; then
    node=(--node-count="$NODE_COUNT" --node-prefix="$TPU_NAME")
  else
    node=(--node-id="$TPU_NAME")
  fi
  gcloud_tpu queued-resources create "$TPU_NAME" "${node[@]}" \
    --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" "${spot[@]}"
  echo "queued; waiting for $TPU_NAME to become ACTIVE (Ctrl-C is safe, the request stays queued)"
  while true; do
    state="$(gcloud_tpu queued-resources describe "$TPU_NAME" --format='value(state.state)')"
    echo "$(date +%T) $state"
    case "$state" in
      ACTIVE) break ;;
      FAILED | SUSPENDED)
        echo "queued resource $TPU_NAME is $state" >&2
        exit 1
        ;;
    esac
    sleep 30
  done
else
  gcloud_tpu tpu-vm create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME" \
    "${spot[@]}"
fi
for node in $(nodes); do
  gcloud_tpu tpu-vm describe "$node" --format='value(name,state,acceleratorType)'
done
