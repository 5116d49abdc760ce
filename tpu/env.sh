# shellcheck shell=bash
# Settings shared by the tpu/*.sh scripts. Override any of them in the environment, e.g.
#   TPU_NAME=cl1 ZONE=us-west4-a ACCELERATOR=v5litepod-8 RUNTIME=v2-alpha-tpuv5-lite tpu/create.sh
# v4 slices:  ACCELERATOR=v4-32 (4 hosts x 4 chips), RUNTIME=tpu-ubuntu2204-base, ZONE=us-central2-b
# v5e slices: ACCELERATOR=v5litepod-8 (1 host x 8 chips), RUNTIME=v2-alpha-tpuv5-lite, ZONE=us-west4-a
set -euo pipefail

TPU_NAME="${TPU_NAME:-jaxcl}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"
PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null)}"
SPOT="${SPOT:-0}"        # 1: Spot capacity (cheaper, can be preempted; jaxcl resumes)
QUEUED="${QUEUED:-0}"    # 1: a queued resource (waits for capacity) instead of a direct create
REMOTE_DIR="${REMOTE_DIR:-jaxcl}"   # the checkout on every worker, relative to $HOME
LOG="${LOG:-jaxcl-run.log}"         # the run's output on every worker, relative to $HOME

gcloud_tpu() {
  gcloud compute tpus "$@" --zone="$ZONE" --project="$PROJECT"
}

# Runs a shell command on every worker of the slice (the same command everywhere).
on_all_workers() {
  gcloud_tpu tpu-vm ssh "$TPU_NAME" --worker=all --command="$1"
}
