"""Workdirs from before every stage 2 was a grid of heads: an interrupted single-head stage 2 resumes as
a grid of one.

Until commit 23d1aac, stage 2 without selection trained one head in WORKDIR/checkpoints/stage2 (a
finished one is still read as it is). Its unfinished checkpoint is the same state with the head not yet
stacked: it is restored, stacked as head 0 of a one-head grid and saved at its step in the grid's
directory, and the old directory is moved to checkpoints/stage2.single-head (kept, never deleted).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from bwlm_jax import checkpoints, stages
from bwlm_jax.runtime.files import unique_path


def _head_at_zero(tree):
  return jax.tree.map(lambda leaf: leaf[0], tree)


def adopt_single_head(ctx, grid_state, grid_name: str, total_steps: int) -> None:
  """Move an interrupted single-head stage 2 of `ctx.workdir` into the one-head grid `grid_name`.

  Does nothing unless the grid has one head, its directory holds no checkpoint yet, and
  checkpoints/stage2 holds an unfinished checkpoint.
  """
  old_dir = checkpoints.stage_directory(ctx.workdir, stages.STAGE2.name)
  grid_dir = checkpoints.stage_directory(ctx.workdir, grid_name)
  heads = jax.tree.leaves(grid_state.params)[0].shape[0]
  if heads != 1 or os.path.isdir(grid_dir) or not os.path.isdir(old_dir):
    return
  single = grid_state.replace(params=_head_at_zero(grid_state.params), opt_state=_head_at_zero(grid_state.opt_state))
  store = checkpoints.StageCheckpoints(old_dir, ctx.config.keep_checkpoints, read_only=True)
  try:
    restored = store.restore_latest(single)
  finally:
    store.close()
  if restored is None or restored[1].get('finished'):
    return
  state, meta = restored
  stacked = state.replace(params=jax.tree.map(lambda leaf: jnp.expand_dims(leaf, 0), state.params),
                          opt_state=jax.tree.map(lambda leaf: jnp.expand_dims(leaf, 0), state.opt_state))
  grid_store = checkpoints.StageCheckpoints(grid_dir, ctx.config.keep_checkpoints)
  try:
    grid_store.save(meta['step'], jax.device_put(stacked, ctx.replicated), {**meta, 'total_steps': total_steps})
  finally:
    grid_store.close()
  kept = unique_path(f'{old_dir}.single-head')
  if jax.process_index() == 0:
    os.replace(old_dir, kept)
  print(f'stage2: the interrupted single-head checkpoint (step {meta["step"]}) continues as a grid of one head '
        f'in {grid_dir}; the old directory is kept as {kept}.')
