# shellcheck shell=bash
# Settings shared by the tpu/*.sh scripts; override any of them in the environment:
#   TPU_NAME=cl1 ZONE=us-west4-a PROJECT=my-project ACCELERATOR=v5litepod-8 tpu/create.sh
#
#   TPU_NAME     the queued resource, and its node (NODE_COUNT=1) or node prefix (NAME-0, NAME-1...)
#   ZONE         a zone that has the accelerator (v4: us-central2-b; v5e: us-west4-a, ...)
#   PROJECT      default: gcloud's configured project
#   ACCELERATOR  v5litepod-8, v4-32, v5p-8, v6e-8, ... (the slice type of every node)
#   RUNTIME      the TPU VM image; default: the one Cloud TPU documents for ACCELERATOR (below)
#   NODE_COUNT   slices joined over the data-centre network (multi-slice); needs QUEUED=1
#   SPOT=1       Spot capacity (cheaper, can be preempted; rerunning tpu/run.sh resumes)
#   QUEUED=0     create the node directly (fails at once without capacity) instead of queueing
set -euo pipefail

TPU_NAME="${TPU_NAME:-jaxcl}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null || true)}"
NODE_COUNT="${NODE_COUNT:-1}"
SPOT="${SPOT:-0}"
QUEUED="${QUEUED:-1}"
REMOTE_DIR="${REMOTE_DIR:-jaxcl}"  # the checkout on every worker, relative to $HOME
LOG="${LOG:-jaxcl-run.log}"        # the run's output on every worker, relative to $HOME

# The runtime (software) version Cloud TPU documents for each TPU generation.
documented_runtime() {
  case "$1" in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

if ! expected="$(documented_runtime "$ACCELERATOR")"; then
  echo "unknown ACCELERATOR=$ACCELERATOR (v4-32, v5litepod-8, v5p-8, v6e-8, ...)" >&2
  exit 2
fi
RUNTIME="${RUNTIME:-$expected}"
if [ "$RUNTIME" != "$expected" ]; then
  echo "warning: RUNTIME=$RUNTIME; Cloud TPU documents $expected for $ACCELERATOR" >&2
fi
if [ -z "$PROJECT" ]; then
  echo "no PROJECT: set PROJECT or run 'gcloud config set project ...'" >&2
  exit 2
fi
if [ "$NODE_COUNT" -gt 1 ] && [ "$QUEUED" != 1 ]; then
  echo "NODE_COUNT=$NODE_COUNT (multi-slice) needs a queued resource: QUEUED=1" >&2
  exit 2
fi

gcloud_tpu() {
  gcloud compute tpus "$@" --zone="$ZONE" --project="$PROJECT"
}

# The TPU VM nodes (slices): TPU_NAME, or TPU_NAME-0 ... TPU_NAME-(NODE_COUNT-1) for a
# multi-slice queued resource (its --node-prefix).
nodes() {
  if [ "$NODE_COUNT" -gt 1 ]; then
    for ((i = 0; i < NODE_COUNT; i++)); do echo "$TPU_NAME-$i"; done
  else
    echo "$TPU_NAME"
  fi
}

# Number of hosts (workers) of node $1.
hosts_of() {
  gcloud_tpu tpu-vm describe "$1" --format='value(networkEndpoints[].ipAddress)' \
    | sed 's/[;,]/ /g' | wc -w
}
