#!/usr/bin/env bash
# N processes of a launch script on this machine, run as one multi-process job (on a CPU each process has
# one device and they all-reduce through gloo): what a cluster run does, without the cluster.
#   launch/local_multiprocess.sh 2 launch/train.py --config=configs/quickstart.py --workdir=workdirs/mp
# The configured batch is the global one (it must divide by N). SIGTERM or Ctrl-C to this script reaches
# every process: they stop at the same step, save, and exit 143; rerunning the same command resumes.
# BWLM_COORDINATOR_PORT picks the coordinator's port (default: a free one).
set -uo pipefail
N=${1:?usage: launch/local_multiprocess.sh N SCRIPT [FLAGS...]}
SCRIPT=${2:?usage: launch/local_multiprocess.sh N SCRIPT [FLAGS...]}
shift 2
PYTHON=${PYTHON:-python}
PORT=${BWLM_COORDINATOR_PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
pids=()
for ((i = 0; i < N; i++)); do
  "$PYTHON" "$SCRIPT" --coordinator_address="127.0.0.1:$PORT" --num_processes="$N" --process_id="$i" "$@" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
status=0
for pid in "${pids[@]}"; do
  wait "$pid"
  code=$?
  while [ "$code" -gt 128 ] && kill -0 "$pid" 2>/dev/null; do wait "$pid"; code=$?; done  # woken by the trap
  [ "$code" -ne 0 ] && [ "$status" -eq 0 ] && status=$code
done
exit "$status"
