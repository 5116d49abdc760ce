#!/usr/bin/env bash
# Streams the run's output from worker 0 of slice 0 (only process 0 logs progress; the others
# log warnings and errors only). WORKER=all shows every worker of that slice; Ctrl-C stops
# watching, not the run. Every worker's log is also copied into WORKDIR/logs/ each minute.
set -euo pipefail
# shellcheck source=tpu/env.sh
source "$(dirname "$0")/env.sh"

node="$(nodes | head -n 1)"
gcloud_tpu tpu-vm ssh "$node" --worker="${WORKER:-0}" --command="tail -n 100 -F ~/$LOG"
