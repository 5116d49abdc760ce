#!/usr/bin/env bash
# Streams the run's output from worker 0 (only process 0 logs progress; the other workers log
# warnings and errors only). WORKER=all shows every worker's log; Ctrl-C stops watching, not
# the run.
set -euo pipefail
# shellcheck source=tpu/env.sh
source "$(dirname "$0")/env.sh"

gcloud_tpu tpu-vm ssh "$TPU_NAME" --worker="${WORKER:-0}" --command="tail -n 100 -F ~/$LOG"
