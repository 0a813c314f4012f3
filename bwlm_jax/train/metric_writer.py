"""Training metrics: TensorBoard and logging through `clu.metric_writers`, plus `metrics.jsonl` for the plots.

One writer per stage (`stage_writer`), closed when the stage ends. On a resume, the rows a stage
logged after its last checkpoint are dropped first, so the file never holds a step twice.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import jax
from clu import metric_writers
from clu.metric_writers import interface

from bwlm_jax.files import make_directory, write_text, writing

METRICS_FILE = 'metrics.jsonl'


class JsonlWriter(interface.MetricWriter):
  """Scalars as JSON lines {'stage', 'step', name: value, ...} in WORKDIR/metrics.jsonl (other kinds are
  not written: the training-curve plot reads scalars only)."""

  def __init__(self, workdir: str, stage: str, resume_step: Optional[int] = None):
    self.stage = stage
    self.path = os.path.join(workdir, METRICS_FILE)
    if resume_step is not None:
      self._drop_rows_after(resume_step)
    make_directory(workdir)
    with writing(self.path):
      self._file = open(self.path, 'a')

  def _drop_rows_after(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    kept = [line for line in lines if not _logged_after(line, self.stage, step)]
    if len(kept) != len(lines):
      write_text(self.path, ''.join(kept))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    row = {'stage': self.stage, 'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    with writing(self.path):
      self._file.write(json.dumps(row) + '\n')
      self._file.flush()

  def write_summaries(self, step, values, metadata=None):
    del step, values, metadata

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_hparams(self, hparams):
    del hparams

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()


def _logged_after(line: str, stage: str, step: int) -> bool:
  try:
    row = json.loads(line)
  except json.JSONDecodeError:
    return False
  return row.get('stage') == stage and row.get('step', 0) > step


def stage_writer(workdir: str, stage: str, resume_step: Optional[int] = None) -> interface.MetricWriter:
  """TensorBoard (WORKDIR/tensorboard/<stage>), logging and metrics.jsonl on process 0; logging elsewhere."""
  if jax.process_index() != 0:
    return metric_writers.create_default_writer(just_logging=True, asynchronous=False)
  tensorboard = metric_writers.create_default_writer(os.path.join(workdir, 'tensorboard', stage), asynchronous=False)
  return metric_writers.MultiWriter([tensorboard, JsonlWriter(workdir, stage, resume_step)])
