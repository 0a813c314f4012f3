"""Orbax checkpoints of a stage and the finished models inference loads from them.

Training saves through `StageCheckpoints`; evaluation and prediction load a finished model with
`load_finished` without importing any training code.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from bwlm_jax.runtime import stopping
from bwlm_jax.runtime.errors import MissingFileError, RunError, SaveError
from bwlm_jax.runtime.files import FREE_SPACE_ADVICE, out_of_space, unique_path
from bwlm_jax.models import inference_variables
from bwlm_jax.runtime.distributed import make_mesh, replicated


class StageCheckpoints:
  """Checkpoints of one stage under `directory`: the TrainState and a JSON record of progress.

  A newest checkpoint that does not read (half-written, files missing or truncated) is reported in one
  line and skipped: training resumes from the newest one that reads, and (unless `read_only`) the
  damaged one is moved to DIRECTORY.damaged/ so that its step can be saved again.
  """

  def __init__(self, directory: str, keep: int, read_only: bool = False):
    self.directory, self.read_only = os.path.abspath(directory), read_only
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only)
    handlers = {'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def latest_meta(self) -> Optional[dict]:
    """The progress record of the newest checkpoint whose record reads; None if there is none."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
      except Exception:  # noqa: BLE001  (orbax raises many kinds for a damaged step; the next one is tried)
        continue
    return None

  def restore_latest(self, target_state=None) -> Optional[tuple[Any, dict]]:
    """(state, meta) of the newest checkpoint that reads, with arrays placed like `target_state`'s; None
    if there is no checkpoint; an error naming what to delete if there are some and none reads.

    Without a target the state comes back as the nested dict of arrays that was saved, replicated
    over this process's devices (whatever devices saved it).
    """
    damaged = {}  # step -> why it does not read
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self._restore(step, target_state)
      except Exception as err:  # noqa: BLE001  (see latest_meta)
        damaged[step] = f'{type(err).__name__}: {" ".join(str(err).split())[:160]}'
        continue
      if damaged:
        self._set_aside(damaged, step)
      return restored
    if damaged:
      raise RunError(f'no checkpoint in {self.directory} can be read: {_listing(damaged)}. Delete that directory '
                     'to train this stage from the start (or restore it from a backup).')
    return None

  def _restore(self, step: int, target_state) -> tuple[Any, dict]:
    if target_state is None:
      everywhere = replicated(make_mesh())
      target_state = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=everywhere),
                                  self.manager.item_metadata(step)['state'])
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target_state), meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']

  def _set_aside(self, damaged: dict[int, str], readable_step: int) -> None:
    where = f'{self.directory}.damaged'
    print(f'{os.path.basename(self.directory)}: newest checkpoint unreadable, {_listing(damaged)}; using step '
          f'{readable_step}' + ('.' if self.read_only else f' (the damaged one moved to {where}).'), flush=True)
    if self.read_only:
      return
    if jax.process_index() == 0:
      os.makedirs(where, exist_ok=True)
      for step in damaged:
        os.replace(os.path.join(self.directory, str(step)), unique_path(os.path.join(where, str(step))))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('bwlm_set_aside_damaged_checkpoints')
    self.manager.reload()

  def save(self, step: int, state, meta: dict) -> None:
    """Save `state` as `step` (a SIGTERM meanwhile waits for the save: `stopping.deferred`)."""
    with stopping.deferred(f'saving step {step} in {self.directory}'):
      try:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
      except Exception as err:  # noqa: BLE001  (a full disk, a removed directory: one line, earlier ones kept)
        raise self._save_error(err) from err

  def _save_error(self, err: Exception) -> SaveError:
    why = f'{type(err).__name__}: {" ".join(str(err).split())[:200]}'
    advice = (FREE_SPACE_ADVICE if out_of_space(err) else
              'Rerun the same command to resume; if it fails again, check that directory (its permissions, or '
              'whether it was removed or replaced during the run).')
    return SaveError(f'saving a checkpoint in {self.directory} failed ({why}); the checkpoints saved before are '
                     f'kept. {advice}')

  def reached_preemption(self, step: int) -> bool:
    """Whether JAX's preemption service (multi-process runs) asks every process to stop after `step`."""
    return self.manager.reached_preemption(step)

  def close(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as err:  # noqa: BLE001  (an asynchronous save failed)
      try:
        self.manager.close()
      except Exception:  # noqa: BLE001  (close raises the same failed background save again)
        pass
      raise self._save_error(err) from err
    self.manager.close()


def _listing(damaged: dict[int, str]) -> str:
  return '; '.join(f'step {step} ({why})' for step, why in damaged.items())


def checkpoint_meta(stage: str, step: int, total_steps: int, finished: bool, config_dict: dict, dataset,
                    fingerprint: Optional[dict] = None) -> dict:
  """The JSON record saved next to a state: progress, the config, the run's fingerprint, and what
  inference needs without loading the dataset (class names, image size, normalisation, preprocessing)."""
  return {'stage': stage, 'step': step, 'total_steps': total_steps, 'finished': finished, 'config': config_dict,
          'class_names': list(dataset.class_names), 'image_size': dataset.image_size,
          'mean': list(dataset.mean), 'std': list(dataset.std), 'center_crop': not dataset.in_memory,
          'eval_transform': dataclasses.asdict(dataset.eval_transform) if dataset.eval_transform else None,
          'fingerprint': fingerprint or {}}


def _read_only(directory: str, read):
  """`read(store)` on the checkpoints in `directory`, opened read-only; None if the directory does not exist."""
  if not os.path.isdir(directory):
    return None
  store = StageCheckpoints(directory, 1, read_only=True)
  try:
    return read(store)
  finally:
    store.close()


def read_latest(directory: str) -> Optional[tuple[dict, dict]]:
  """(state as a dict of arrays, meta) of the newest readable checkpoint in `directory`; None if it has none.

  Restored without a target, so it loads whatever devices saved it.
  """
  return _read_only(directory, lambda store: store.restore_latest())


def restore_finished(directory: str) -> Optional[tuple[dict, dict]]:
  """`read_latest` where that checkpoint is the finished one; else None."""
  restored = read_latest(directory)
  return restored if restored is not None and restored[1].get('finished') else None


def stage_directory(workdir: str, stage: str) -> str:
  return os.path.join(workdir, 'checkpoints', stage)


def finished_meta(directory: str) -> Optional[dict]:
  """The progress record of the finished checkpoint in `directory`; None if its newest is not finished."""
  meta = _read_only(directory, lambda store: store.latest_meta())
  return meta if meta and meta.get('finished') else None


def is_finished(workdir: str, stage: str) -> bool:
  """Whether `workdir` holds a finished checkpoint of `stage` (an interrupted one does not count)."""
  return finished_meta(stage_directory(workdir, stage)) is not None


def load_finished(workdir: str, stage: str, checkpoint: Optional[str] = None) -> tuple[dict, dict]:
  """(inference variables, meta) of the finished `stage` checkpoint in `workdir` (in checkpoints/<checkpoint>,
  default the stage's own directory); a clear error if absent."""
  directory = stage_directory(workdir, checkpoint or stage)
  restored = restore_finished(directory)
  if restored is None:
    raise MissingFileError(f'{workdir} has no finished {stage} checkpoint (looked in {directory}); '
                            f'train it first with launch/train.py --config.stages={stage}.')
  state, meta = restored
  return inference_variables(stage, state), meta
