#!/usr/bin/env bash
# Deletes the slice (and its queued resource, if it was created with QUEUED=1). The gs://
# workdir stays; running tpu/create.sh, install.sh and the same run.sh command again resumes.
set -euo pipefail
# shellcheck source=tpu/env.sh
source "$(dirname "$0")/env.sh"

if [ "$QUEUED" = 1 ]; then
  gcloud_tpu queued-resources delete "$TPU_NAME" --force --quiet
else
  gcloud_tpu tpu-vm delete "$TPU_NAME" --quiet
fi
