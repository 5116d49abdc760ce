#!/usr/bin/env bash
# Starts the same jaxcl command on every worker of every slice (tpu/worker_run.sh there:
# stale processes and the libtpu lock cleared, the run detached, its log copied into
# WORKDIR/logs/). Slices of several hosts join through jax.distributed.initialize(). Several
# slices (NODE_COUNT > 1): the queued resource puts MEGASCALE_COORDINATOR_ADDRESS,
# MEGASCALE_NUM_SLICES and MEGASCALE_SLICE_ID into every worker's tpu-env metadata, where JAX
# (and libtpu) read them, and jaxcl builds a hybrid ICI x DCN mesh (mesh.dcn_* in the config).
#
#   tpu/run.sh configs/l2p.py:cifar100 gs://BUCKET/runs/l2p-c100 --config.data.dir=gs://BUCKET/tfds
set -euo pipefail
# shellcheck source=tpu/env.sh
source "$(dirname "$0")/env.sh"

if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG[:PRESET] WORKDIR [--config.KEY=VALUE ...]" >&2
  exit 2
fi
config="$1"
workdir="$2"
shift 2
case "$workdir" in
  gs://*) ;;
  *) echo "warning: $workdir is not gs://; every host then writes its own local copy" >&2 ;;
esac

read -r -a names <<< "$(nodes | tr '\n' ' ')"
hosts="$(hosts_of "${names[0]}")"
multihost=0
if [ "$((hosts * ${#names[@]}))" -gt 1 ]; then
  multihost=1
fi
echo "$TPU_NAME: ${#names[@]} slice(s) x $hosts host(s)"
args="$(printf '%q ' "$workdir" "--config=$config" "$@")"
for node in "${names[@]}"; do
  gcloud_tpu tpu-vm ssh "$node" --worker=all --command="JAXCL_MULTIHOST=$multihost LOG=$LOG \
bash ~/$REMOTE_DIR/tpu/worker_run.sh $args"
done
