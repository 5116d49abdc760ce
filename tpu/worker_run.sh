#!/usr/bin/env bash
# Runs on each TPU worker (tpu/run.sh): stops a previous run of this script and any process
# holding the TPU, clears libtpu's lock file, then starts `python -m jaxcl.main` detached (it
# survives a dropped ssh) with its output in ~/$LOG, copied into WORKDIR/logs/HOST.log every
# minute and when the run ends (gs:// workdirs through `gcloud storage`).
#
#   bash tpu/worker_run.sh WORKDIR --config=CONFIG [--config.KEY=VALUE ...]
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 WORKDIR [jaxcl.main flags ...]" >&2
  exit 2
fi
workdir="$1"
shift
checkout="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$HOME/venv/bin/python}"
log="$HOME/${LOG:-jaxcl-run.log}"
pidfile="$HOME/jaxcl-run.pid"
lockfile="${LIBTPU_LOCKFILE:-/tmp/libtpu_lockfile}"
sync_every="${LOG_SYNC_SECONDS:-60}"
sudo=()
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then
  sudo=(sudo)
fi

# 1. The previous run started here (its whole process group), then whatever still holds the
#    TPU devices (/dev/accel* up to v4, /dev/vfio/* from v5e), then libtpu's lock.
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  old="$(cat "$pidfile")"
  echo "stopping the previous run (process group $old)"
  kill -TERM -- "-$old" 2>/dev/null || kill -TERM "$old" 2>/dev/null || true
  for _ in $(seq 30); do
    kill -0 "$old" 2>/dev/null || break
    sleep 1
  done
  kill -KILL -- "-$old" 2>/dev/null || kill -KILL "$old" 2>/dev/null || true
fi
shopt -s nullglob
devices=(/dev/accel* /dev/vfio/[0-9]*)
shopt -u nullglob
if [ "${#devices[@]}" -gt 0 ]; then
  for pid in $("${sudo[@]}" lsof -t "${devices[@]}" 2>/dev/null | sort -u); do
    echo "killing process $pid, which holds the TPU"
    "${sudo[@]}" kill -9 "$pid" || true
  done
fi
"${sudo[@]}" rm -f "$lockfile"

# 2. The run, in its own session; its exit code goes into the log's last line.
copy_log() {
  case "$workdir" in
    gs://*) gcloud storage cp -q "$log" "$workdir/logs/$(hostname).log" || true ;;
    *) mkdir -p "$workdir/logs" && cp "$log" "$workdir/logs/$(hostname).log" || true ;;
  esac
}
cd "$checkout"
# shellcheck disable=SC2016  # expanded by the inner bash: $0 is the log, "$@" the command
setsid nohup bash -c '"$@" > "$0" 2>&1 < /dev/null; echo "exit code $?" >> "$0"' \
  "$log" "$python" -m jaxcl.main --workdir="$workdir" "$@" > /dev/null 2>&1 &
run=$!
echo "$run" > "$pidfile"
echo "worker $(hostname): started, pid $run, log ~/${log#"$HOME"/}"

# 3. The log follows the run into the workdir (a preempted VM's disk is gone).
export -f copy_log
export log workdir
# shellcheck disable=SC2016  # expanded by the inner bash: $0 is the run's pid, $1 the period
setsid nohup bash -c 'while kill -0 "$0" 2>/dev/null; do copy_log; sleep "$1"; done; copy_log' \
  "$run" "$sync_every" > /dev/null 2>&1 < /dev/null &
