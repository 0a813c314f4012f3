"""Training metrics: TensorBoard event files and `metrics.jsonl` (what the plots read).

One writer per stage (`stage_writer`), closed when the stage ends. On a resume, the rows a stage
logged after its last checkpoint are dropped first, so the file never holds a step twice. The event
files are written with TensorBoard's own record framing and protos, without TensorFlow (which the
in-memory training path never imports).
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any, Mapping, Optional

import jax

from bwlm_jax.runtime.files import make_directory, write_text, writing

METRICS_FILE = 'metrics.jsonl'


class JsonlWriter:
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


class TensorBoardWriter:
  """Scalars as TensorBoard events in `logdir` (one events.out.tfevents.* file per writer)."""

  def __init__(self, logdir: str):
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    self._event = event_pb2.Event
    make_directory(logdir)
    self.path = os.path.join(logdir, f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}')
    with writing(self.path):
      self._file = open(self.path, 'wb')
    self._records = RecordWriter(self._file)
    self._write(self._event(wall_time=time.time(), file_version='brain.Event:2'))

  def _write(self, event) -> None:
    with writing(self.path):
      self._records.write(event.SerializeToString())

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    event = self._event(wall_time=time.time(), step=int(step))
    for name, value in scalars.items():
      event.summary.value.add(tag=name, simple_value=float(value))
    self._write(event)

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()


class MultiWriter:
  """Each scalar to every writer."""

  def __init__(self, writers):
    self.writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for writer in self.writers:
      writer.write_scalars(step, scalars)

  def flush(self) -> None:
    for writer in self.writers:
      writer.flush()

  def close(self) -> None:
    for writer in self.writers:
      writer.close()


def stage_writer(workdir: str, stage: str, resume_step: Optional[int] = None) -> MultiWriter:
  """TensorBoard (WORKDIR/tensorboard/<stage>) and metrics.jsonl on process 0; nothing on the others."""
  if jax.process_index() != 0:
    return MultiWriter([])
  return MultiWriter([TensorBoardWriter(os.path.join(workdir, 'tensorboard', stage)),
                      JsonlWriter(workdir, stage, resume_step)])
