#!/usr/bin/env bash
# Counts hangs of two CPU devices in one process (docs/PERFORMANCE.md): RUNS quickstart stage-1 trainings with
# --cpu_devices=2, each in a fresh workdir under OUT, each given LIMIT seconds. A run that hangs in XLA's
# rendezvous is aborted by XLA after its timeout (exit status 134, "rendezvous" in its log) or by `timeout` (124).
#   benchmarks/two_device_hangs.sh OUT [RUNS=50] [LIMIT=600]
set -uo pipefail
out=${1:?usage: two_device_hangs.sh OUT [RUNS] [LIMIT]}; runs=${2:-50}; limit=${3:-600}
cd "$(dirname "$0")/.."
mkdir -p "$out"
for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  timeout "$limit" python launch/train.py --config=configs/quickstart.py --config.stages=stage1 --cpu_devices=2 \
    --workdir="$out/run$i" >"$out/run$i.log" 2>&1
  status=$?
  rendezvous=$(grep -c -i rendezvous "$out/run$i.log")
  echo "run $i status $status seconds $(( $(date +%s) - start )) rendezvous_lines $rendezvous" | tee -a "$out/summary.txt"
  rm -rf "$out/run$i"
done
awk '{n++; if ($4 != 0) bad++} END {printf "%d runs, %d not finished\n", n, bad}' "$out/summary.txt"
