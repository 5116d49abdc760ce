#!/usr/bin/env bash
# Deletes the slice(s): the queued resource with its nodes (--force), or the node made with
# QUEUED=0. The gs:// workdir stays; create.sh, install.sh and the same run.sh command resume.
set -euo pipefail
# shellcheck source=tpu/env.sh
source "$(dirname "$0")/env.sh"

if [ "$QUEUED" = 1 ]; then
  gcloud_tpu queued-resources delete "$TPU_NAME" --force --quiet
else
  gcloud_tpu tpu-vm delete "$TPU_NAME" --quiet
fi
