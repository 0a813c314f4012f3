#!/usr/bin/env bash
# Multi-host training on a SLURM cluster: one process per node, all GPUs of the node per process.
#   sbatch launch/slurm_train.sh configs/imagenet_lt.py /shared/workdirs/imagenet_lt
# jax.distributed.initialize() (behind --distributed) reads the coordinator, process count and index
# from SLURM's environment. The workdir must be on storage every node sees: orbax writes checkpoints
# collectively; metrics, results and figures are written by process 0 only. Each process reads its
# own shard of the data (tf.data pipeline); the configured batch size is the global one.
#SBATCH --job-name=bwlm
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
set -euo pipefail
CONFIG=${1:?config file}
WORKDIR=${2:?workdir on shared storage}
shift 2
srun python launch/train.py --distributed --config="$CONFIG" --workdir="$WORKDIR" "$@"
