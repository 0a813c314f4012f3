"""Stage-2 candidates on a base run's frozen backbones, for the studies that compare heads (ablation, sweep,
tune): the base run's backbones trained first where missing, then each variant alone in its own sub-workdir,
or the variants that differ only in their heads as one grid (shared features, one jitted step)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os

from bwlm_jax import checkpoints, head_setting, selection
from bwlm_jax.head_setting import HeadSetting
from bwlm_jax.run.training_run import train_and_evaluate, train_rows_and_evaluate
from bwlm_jax.studies.base import run_or_failure

# A variant's keys that a grid of heads can train: the head's fields, and 'grid.X' (the values tried for X).
HEAD_FIELDS = frozenset(head_setting.NAMES) | {f'grid.{f}' for f in head_setting.GRID_FIELDS}


def run_base(config, workdir: str, dataset) -> dict:
  """Train (or resume, or reuse) the base run's naive and stage-1 models, saying first which it must train
  (most of the time of an ablation or sweep on a new workdir); returns its results."""
  base = copy.deepcopy(config)
  base.stages = 'naive,stage1'
  missing = [stage for stage in ('naive', 'stage1') if not checkpoints.is_finished(workdir, stage)]
  if missing:
    epochs = ', '.join(f'{stage} {config[stage].epochs} epochs' for stage in missing)
    print(f'base models: {workdir} has no finished {" and ".join(missing)}; training them first ({epochs}), '
          'then the variants on their backbones.', flush=True)
  return train_and_evaluate(base, workdir, dataset=dataset)


def variant_config(config, workdir: str, overrides: dict):
  """A stage-2-only config on `workdir`'s backbones with `overrides` applied: a plain key sets a stage-2 field
  (and pins it: the grid does not vary it); 'grid.X' sets the values the grid tries for X."""
  variant = copy.deepcopy(config)
  variant.stages = 'stage2'
  variant.stage1_checkpoint = os.path.abspath(workdir)
  for field, value in overrides.items():
    if not field.startswith('grid.'):
      variant.stage2[field] = value
      if field in head_setting.GRID_FIELDS:
        variant.stage2.grid[field] = None  # pinned
  for field, value in overrides.items():
    if field.startswith('grid.'):
      variant.stage2.grid[field[len('grid.'):]] = value
  return variant


def slug(name: str) -> str:
  """A row name as a folder name."""
  slug_ = name.strip('+').replace('+', '_').replace('=', '').replace(',', '_')
  return slug_.replace(' (', '_').replace(')', '').replace(' ', '_') or 'base'


def run_variant(config, workdir: str, kind: str, name: str, overrides: dict, dataset) -> dict:
  """One stage-2 variant trained alone in WORKDIR/kind/<name> (chosen on validation where there is one);
  {'failed': why} where it diverged or could not run (`base.run_or_failure`)."""
  print(f'--- {kind} {name}: {overrides}')
  variant_dir = os.path.join(workdir, kind, slug(name))
  results = run_or_failure(variant_config(config, workdir, overrides), variant_dir, dataset)
  return {**results, 'source': {'workdir': variant_dir, 'stage': 'stage2'}}


def run_variants_together(config, workdir: str, kind: str, variants: dict, dataset, metric=None) -> dict:
  """Variants that differ only in their heads (their settings or backbone), trained as one grid of heads in
  WORKDIR/kind/heads-<digest> (`training_run.train_rows_and_evaluate`).

  With a selection `metric`, each variant contributes every candidate of its grid, and its result is the
  candidate with the best validation score (with 'stage2_selection' saying which); else one head per variant.
  """
  rows = {}
  for name, overrides in variants.items():
    stage2 = variant_config(config, workdir, overrides).stage2
    rows[name] = selection.candidates(stage2) if metric else [HeadSetting.from_config(stage2)]
  settings = [dataclasses.asdict(setting) for options in rows.values() for setting in options]
  digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
  heads_dir = os.path.join(workdir, kind, f'heads-{digest}')
  print(f'--- {kind}: {len(settings)} heads at once: {", ".join(variants)}')
  return train_rows_and_evaluate(variant_config(config, workdir, {}), heads_dir, rows, metric, dataset=dataset)


def run_variants(config, workdir: str, kind: str, variants: dict, dataset, metric=None, together: bool = True
                 ) -> dict:
  """{name: results} of every variant: those a grid of heads can train (`HEAD_FIELDS`) as one grid when
  `together`, the others (and all, without it) each alone; in `variants`' order."""
  grouped = {n: v for n, v in variants.items() if set(v) <= HEAD_FIELDS} if together else {}
  trained = run_variants_together(config, workdir, kind, grouped, dataset, metric) if grouped else {}
  for name, overrides in variants.items():
    if name not in trained:
      trained[name] = run_variant(config, workdir, kind, name, overrides, dataset)
  return {name: trained[name] for name in variants}
