"""Metrics to TensorBoard event files and to a JSON-lines file in the workdir (process 0 only)."""

from __future__ import annotations

import json
import os

import jax


class MetricWriter:

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self._writers = {}
    self._workdir = workdir
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a')

  def _tensorboard(self, stage: str):
    if stage not in self._writers:
      from flax.metrics import tensorboard
      self._writers[stage] = tensorboard.SummaryWriter(os.path.join(self._workdir, 'tensorboard', stage))
    return self._writers[stage]

  def write(self, stage: str, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in metrics.items()}
    writer = self._tensorboard(stage)
    for name, value in values.items():
      writer.scalar(name, value, step)
    writer.flush()
    self._jsonl.write(json.dumps({'stage': stage, 'step': int(step), **values}) + '\n')
    self._jsonl.flush()

  def close(self) -> None:
    if not self.enabled:
      return
    for writer in self._writers.values():
      writer.close()
    self._jsonl.close()
