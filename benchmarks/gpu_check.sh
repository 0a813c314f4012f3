#!/usr/bin/env bash
# The GPU check in one call (benchmarks/gpu_check.py says what it measures): one JSON line per figure.
#
#   benchmarks/gpu_check.sh [--cpu] [OUT]    OUT: the JSON lines file (default: $OUT/gpu_check.jsonl where $OUT
#                                            is a folder, else ./gpu_check.jsonl); --cpu: toy sizes on a CPU
#
# It needs jax (with its GPU plugin), flax, optax, orbax-checkpoint, ml_collections, absl-py, tensorboard,
# pillow, numpy; torch + torchvision for the PyTorch side. Not TensorFlow, tensorflow-datasets or clu. On a
# machine that cannot install, carry the pure-Python wheels it lacks in a folder and name it in WHEELS:
#   pip download --only-binary=:all: --no-deps --python-version 3.12 -d wheels ml_collections
#   WHEELS=wheels benchmarks/gpu_check.sh /tmp/out/gpu_check.jsonl
# (each wheel is put on PYTHONPATH as it is: Python imports pure-Python packages from the zip).
set -euo pipefail
cd "$(dirname "$0")/.."
cpu=()
if [[ "${1:-}" == "--cpu" ]]; then cpu=(--cpu); shift; fi
out="${1:-}"
if [[ -z "$out" ]]; then
  if [[ -n "${OUT:-}" && -d "${OUT}" ]]; then out="$OUT/gpu_check.jsonl"; else out="gpu_check.jsonl"; fi
fi
path="$PWD"
for wheel in "${WHEELS:-/nonexistent}"/*.whl; do
  [[ -e "$wheel" ]] && path="$path:$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")"
done
export PYTHONPATH="$path${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
exec "${PYTHON:-python3}" benchmarks/gpu_check.py --out="$out" "${cpu[@]}"
