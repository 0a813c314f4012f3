"""Orbax checkpoints of a stage, the finished models inference loads from them, and the workdir's config.

Training saves through `StageCheckpoints`; evaluation and prediction load a finished model with
`load_finished` without importing any training code.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from bwlm_jax.sharding import make_mesh, replicated

# Config fields that do not change a result: they may differ between a run and its resumption.
RESULT_NEUTRAL_FIELDS = (
    'stages', 'checkpoint_every_steps', 'keep_checkpoints', 'log_every_steps', 'eval_batch_size',
    'allow_config_change', 'data.data_dir', 'data.download', 'stage1_checkpoint', 'eval_every_epochs',
)


class StageCheckpoints:
  """Checkpoints of one stage under `directory`: the TrainState and a JSON record of progress."""

  def __init__(self, directory: str, keep: int):
    self.directory = directory
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    handlers = {'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options, item_handlers=handlers)

  def latest_meta(self) -> Optional[dict]:
    step = self.manager.latest_step()
    if step is None:
      return None
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def restore_latest(self, target_state=None) -> tuple[Any, dict]:
    """(state, meta) of the latest checkpoint, with arrays placed like `target_state`'s.

    Without a target the state comes back as the nested dict of arrays that was saved, replicated
    over this process's devices (whatever devices saved it).
    """
    step = self.manager.latest_step()
    if target_state is None:
      everywhere = replicated(make_mesh())
      target_state = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=everywhere),
                                  self.manager.item_metadata(step)['state'])
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target_state), meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']

  def save(self, step: int, state, meta: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def reached_preemption(self, step: int) -> bool:
    """Whether JAX's preemption service (multi-process runs) asks every process to stop after `step`."""
    return self.manager.reached_preemption(step)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def checkpoint_meta(stage: str, step: int, total_steps: int, finished: bool, config_dict: dict, dataset) -> dict:
  """The JSON record saved next to a state: progress, the config, and what inference needs without
  loading the dataset (class names, image size, normalisation, preprocessing)."""
  return {'stage': stage, 'step': step, 'total_steps': total_steps, 'finished': finished, 'config': config_dict,
          'class_names': list(dataset.class_names), 'image_size': dataset.image_size,
          'mean': list(dataset.mean), 'std': list(dataset.std), 'center_crop': not dataset.in_memory}


def restore_finished(directory: str) -> Optional[tuple[dict, dict]]:
  """(state as a dict of arrays, meta) of the finished checkpoint in `directory`; None if it has none.

  Restored without a target, so it loads whatever devices saved it.
  """
  if not os.path.isdir(directory):
    return None
  checkpoints = StageCheckpoints(directory, 1)
  try:
    meta = checkpoints.latest_meta()
    if meta is None or not meta.get('finished'):
      return None
    state, _ = checkpoints.restore_latest()
    return state, meta
  finally:
    checkpoints.close()


def stage_directory(workdir: str, stage: str) -> str:
  return os.path.join(workdir, 'checkpoints', stage)


def is_finished(workdir: str, stage: str) -> bool:
  """Whether `workdir` holds a finished checkpoint of `stage` (an interrupted one does not count)."""
  directory = stage_directory(workdir, stage)
  if not os.path.isdir(directory):
    return False
  checkpoints = StageCheckpoints(directory, 1)
  try:
    meta = checkpoints.latest_meta()
  finally:
    checkpoints.close()
  return bool(meta and meta.get('finished'))


def load_finished(workdir: str, stage: str) -> tuple[dict, dict]:
  """(inference variables, meta) of the finished `stage` checkpoint in `workdir`; a clear error if absent."""
  from bwlm_jax.models import inference_variables
  directory = stage_directory(workdir, stage)
  restored = restore_finished(directory)
  if restored is None:
    raise FileNotFoundError(f'{workdir} has no finished {stage} checkpoint (looked in {directory}); '
                            f'train it first with launch/train.py --config.stages={stage}.')
  state, meta = restored
  return inference_variables(stage, state), meta


def flatten(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      flat.update(flatten(value, name + '.'))
    else:
      flat[name] = list(value) if isinstance(value, tuple) else value  # JSON keeps tuples as lists
  return flat


def config_differences(saved: dict, current: dict, neutral=RESULT_NEUTRAL_FIELDS) -> list[str]:
  """'field: saved -> current' for every result-changing field that differs.

  A field the saved config lacks (added to bwlm-jax after that run) counts as equal when the current
  value is its default, which is what the older code did.
  """
  from bwlm_jax.config import base_config
  old, new = flatten(saved), flatten(current)
  defaults = flatten(base_config().to_dict())
  lines = []
  for field in sorted(set(old) | set(new)):
    if field in neutral:
      continue
    if field not in old and field in defaults and new.get(field) == defaults[field]:
      continue
    if old.get(field, '<absent>') != new.get(field, '<absent>'):
      lines.append(f'{field}: {old.get(field, "<absent>")!r} -> {new.get(field, "<absent>")!r}')
  return lines


def check_workdir_config(workdir: str, config_dict: dict, allow_change: bool) -> None:
  """Record the config in a new workdir; refuse a different one in a used workdir unless allowed."""
  path = os.path.join(workdir, 'config.json')
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    differences = config_differences(saved, config_dict)
    if differences and not allow_change:
      raise ValueError(
          f'{workdir} holds a run with a different config; resuming it would mix results. Differing '
          'fields:\n  ' + '\n  '.join(differences) +
          '\nUse a new --workdir, or pass --config.allow_config_change=True to resume anyway.')
    if not differences:
      return
  os.makedirs(workdir, exist_ok=True)
  with open(path, 'w') as f:
    json.dump(config_dict, f, indent=2, sort_keys=True)
