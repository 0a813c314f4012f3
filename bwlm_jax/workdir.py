"""The workdir of a run: a usable path, the config it records, and the checks that keep a finished
result from being mixed with or relabelled by another config."""

from __future__ import annotations

import json
import os
from typing import Optional

import ml_collections

from bwlm_jax import stages
from bwlm_jax.config import base_config
from bwlm_jax.runtime.errors import UsageError
from bwlm_jax.runtime.files import make_directory, read_json, unique_path, write_text
from bwlm_jax.runtime.workdir_lock import check_workdir_path

# Config fields that do not change a result: they may differ between a run and its resumption.
RESULT_NEUTRAL_FIELDS = (
    'stages', 'checkpoint_every_steps', 'keep_checkpoints', 'log_every_steps', 'eval_batch_size',
    'allow_config_change', 'data.data_dir', 'data.download', 'stage1_checkpoint', 'eval_every_epochs',
    'tuning',  # launch/tune.py's grid: each candidate's own naive.* fields say what it trained
    'recipe',  # launch/recipe.py's candidates: the same, in naive.* and stage1.*
)


_GRID_BACKBONE = 'stage2.grid.backbone'


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
  value is its default, which is what the older code did. `stage2.grid.backbone` is compared as the
  backbones it trains on: None (or absent, as before the field existed) is [stage2.backbone].
  """
  old, new = _with_grid_backbones(flatten(saved)), _with_grid_backbones(flatten(current))
  defaults = flatten(base_config().to_dict())
  lines = []
  for field in sorted(set(old) | set(new)):
    if field in neutral or field.split('.')[0] in neutral:
      continue
    if field not in old and field in defaults and new.get(field) == defaults[field]:
      continue
    if old.get(field, '<absent>') != new.get(field, '<absent>'):
      lines.append(f'{field}: {old.get(field, "<absent>")!r} -> {new.get(field, "<absent>")!r}')
  return lines


def _with_grid_backbones(flat: dict) -> dict:
  if flat.get(_GRID_BACKBONE) is None and 'stage2.backbone' in flat:
    return {**flat, _GRID_BACKBONE: [flat['stage2.backbone']]}
  return flat


def stage_config_differences(stage: str, meta: dict, current: dict) -> list[str]:
  """Fields that would change what a finished `stage` checkpoint (its `meta`) holds, if trained with
  `current`: another stage's section is no input of it, except the backbone stage 2 starts from; a
  stage-2 model chosen on validation is compared with its chosen setting applied to `current`."""
  selected = (meta.get('selected') or {}).get('setting', {})
  current = {**current, 'stage2': {**current['stage2'], **selected}}
  inputs = {stage}
  if stages.get(stage).trains_heads:  # the backbones its heads were trained on
    grid = current['stage2'].get('grid', {}).get('backbone')
    inputs |= {current['stage2']['backbone']} | (set(grid or ()) if 'backbone' not in selected else set())
  neutral = RESULT_NEUTRAL_FIELDS + tuple(s for s in stages.NAMES if s not in inputs)
  return config_differences(meta['config'], current, neutral)


def refuse_relabel(stage: str, directory: str, meta: dict, current: dict) -> None:
  """A finished checkpoint is reused only for the config it was trained with: never relabelled."""
  differences = stage_config_differences(stage, meta, current)
  if differences:
    raise UsageError(f'{stage}: the finished checkpoint in {directory} was trained with another config '
                     f'({"; ".join(differences)}); it is kept as it is and not relabelled. Use a new --workdir, '
                     f'or move that directory away to train {stage} again.')


def check_workdir_config(workdir: str, config_dict: dict, allow_change: bool) -> None:
  """Refuse a config that differs from the one a used workdir records, unless allowed (writes nothing)."""
  check_workdir_path(workdir)
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return
  saved = read_run_config(path)
  differences = config_differences(saved, config_dict)
  if differences and not allow_change:
    raise UsageError(f'{workdir} holds a run with a different config; resuming it would mix results. Differing '
                     f'fields: {"; ".join(differences)}. Use a new --workdir, or pass '
                     '--config.allow_config_change=True to resume anyway (a finished stage whose own fields '
                     'differ is still refused).')


def record_workdir_config(workdir: str, config_dict: dict) -> None:
  """Write WORKDIR/config.json once the run has started (its data read); an earlier config that differs
  in a result-changing field is kept as config-N.json, never overwritten."""
  path = os.path.join(workdir, 'config.json')
  make_directory(workdir)
  if os.path.exists(path):
    if not config_differences(read_run_config(path), config_dict):
      return  # only fields that change no result differ (stages, logging, ...): the record stands
    os.replace(path, unique_path(path))
  write_text(path, json.dumps(config_dict, indent=2, sort_keys=True))


def read_run_config(path: str) -> dict:
  """A workdir's config.json; a damaged one is one error (the checkpoints keep their own copy of it)."""
  return read_json(path, "the config of the workdir's run", 'Fix it by hand, or move it away and rerun: each '
                   "finished checkpoint keeps its own copy of the config and still refuses another one.")


def run_config(workdir: str, given=None):
  """The config a workdir's run was trained with (its config.json; fields added to bwlm-jax since keep
  their defaults). With `given` (a user's --config), a result-changing difference is an error; fields
  that change no result (data.data_dir, eval_batch_size, ...) come from `given`."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise UsageError(f'{workdir!r} holds no training run (no config.json); check the path, or train first with '
                     'launch/train.py.')
  saved = read_run_config(path)
  if given is not None:
    differences = config_differences(saved, given.to_dict())
    if differences:
      raise UsageError(f'--config does not match the run in {workdir} ({"; ".join(differences)}); evaluating with '
                       'it would report wrong groups or models. Leave --config out to use the run\'s own config.')
    return given
  merged = _deep_update(base_config().to_dict(), saved)
  merged.pop('head_settings', None)
  return ml_collections.ConfigDict(merged)


def _deep_update(base: dict, saved: dict) -> dict:
  for key, value in saved.items():
    base[key] = _deep_update(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
        else value
  return base
