#!/usr/bin/env bash
# Starts the same jaxcl command on every worker, detached (it survives a dropped ssh), writing
# to ~/$LOG there; follow it with tpu/logs.sh. A multi-host slice joins through
# jax.distributed.initialize() (jaxcl/main.py finds the TPU environment by itself).
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

# Several hosts: ask jaxcl to join them (a TPU VM does not always say so in its environment).
hosts="$(gcloud_tpu tpu-vm describe "$TPU_NAME" --format='value(networkEndpoints[].ipAddress)' \
  | tr ';' '\n' | grep -c .)"
multihost=0
if [ "$hosts" -gt 1 ]; then
  multihost=1
fi
echo "$TPU_NAME: $hosts host(s)"

args="$(printf '%q ' "--config=$config" "--workdir=$workdir" "$@")"
on_all_workers "cd ~/$REMOTE_DIR && JAXCL_MULTIHOST=$multihost nohup setsid \
  ~/venv/bin/python -m jaxcl.main $args > ~/$LOG 2>&1 < /dev/null &
  echo \"worker \$(hostname): started, pid \$!\""
