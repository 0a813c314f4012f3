"""Stage 2 is always a grid of heads: a grid of one equals the single head of older versions, and their
workdirs (tests/data/stage2_v1, made by tests/data/make_stage2_v1_workdirs.py) still evaluate and resume."""

import ast
import os
import shutil

import numpy as np
import pytest

from bwlm_jax import checkpoints
from bwlm_jax.data import load_dataset
from bwlm_jax.evaluation.workdir_reports import report_workdir
from bwlm_jax.pipeline import train_and_evaluate
from bwlm_jax.workdir import run_config
from helpers import tiny_config

V1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'stage2_v1')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _v1_config(tfds_dir):
  """The config the v1 workdirs were made with (see make_stage2_v1_workdirs.py)."""
  config = tiny_config(tfds_dir)
  config.stages = 'stage1,stage2'
  config.stage2.augment = False
  config.keep_checkpoints = 1
  return config


def _head(workdir, name='stage2'):
  state, meta = checkpoints.read_latest(checkpoints.stage_directory(workdir, name))
  return state['params']['head']['dense'], meta


@pytest.fixture
def v1(tmp_path):
  shutil.copytree(V1, tmp_path / 'v1')
  return tmp_path / 'v1'


def _assert_same_reports(new: dict, old: dict):
  for split in ('test', 'val'):
    for group in ('many', 'medium', 'few', 'all', 'top5'):
      a, b = new[split][group], old[split][group]
      assert (a is None and b is None) or abs(a - b) <= 1e-3, (split, group, a, b)


def test_a_grid_of_one_head_equals_the_single_head_of_older_versions(v1, tfds_dir, tmp_path):
  config = _v1_config(tfds_dir)
  config.stages, config.stage1_checkpoint = 'stage2', str(v1 / 'finished')
  results = train_and_evaluate(config, str(tmp_path / 'new'))
  new, meta = _head(str(tmp_path / 'new'))
  old, old_meta = _head(str(v1 / 'finished'))
  assert meta['step'] == old_meta['step'] == 12 and 'selected' not in meta  # nothing was chosen
  for name in ('kernel', 'bias'):
    np.testing.assert_allclose(new[name], old[name], rtol=1e-4, atol=1e-5)
  import json
  with open(v1 / 'finished' / 'results.json') as f:
    _assert_same_reports(results['models']['stage2'], json.load(f)['models']['stage2'])


def test_an_older_finished_workdir_evaluates_and_is_reused_as_it_is(v1, tfds_dir, capsys):
  import json
  workdir = str(v1 / 'finished')
  with open(os.path.join(workdir, 'results.json')) as f:
    old = json.load(f)['models']
  config = run_config(workdir)
  summary = report_workdir(config, workdir, load_dataset(_v1_config(tfds_dir).data))
  for stage in ('stage1', 'stage2'):
    assert summary[stage]['splits']['test']['report']['all'] == pytest.approx(old[stage]['test']['all'], abs=1e-3)
  results = train_and_evaluate(_v1_config(tfds_dir), workdir)
  out = capsys.readouterr().out
  assert 'stage2: finished earlier (12 steps); using its checkpoint.' in out
  assert not os.path.exists(os.path.join(workdir, 'checkpoints', 'stage2_grid'))  # nothing retrained
  _assert_same_reports(results['models']['stage2'], old['stage2'])


def test_an_older_interrupted_single_head_resumes_as_a_grid_of_one(v1, tfds_dir, capsys):
  config = _v1_config(tfds_dir)
  config.stages, config.stage1_checkpoint = 'stage2', str(v1 / 'finished')
  workdir = str(v1 / 'interrupted')
  assert not _head(workdir)[1]['finished'] and _head(workdir)[1]['step'] == 2
  train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert 'continues as a grid of one head' in out and 'stage2_grid: resuming at step 2 of 12' in out
  kept = os.path.join(workdir, 'checkpoints', 'stage2.single-head')
  assert checkpoints.read_latest(kept)[1]['step'] == 2  # the old checkpoint is kept, not deleted
  resumed, meta = _head(workdir)
  finished, _ = _head(str(v1 / 'finished'))
  assert meta['finished']
  for name in ('kernel', 'bias'):
    np.testing.assert_allclose(resumed[name], finished[name], rtol=1e-4, atol=1e-5)


def _function_level_stage_comparisons(path):
  """Lines comparing a value with a stage name ('stage2' == x, x != 'naive', ...)."""
  tree = ast.parse(open(path).read())
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Compare):
      operands = [node.left, *node.comparators]
      if any(isinstance(o, ast.Constant) and o.value in ('naive', 'stage1', 'stage2') for o in operands):
        found.append(node.lineno)
  return found


def test_no_module_compares_stage_names_outside_the_stage_table():
  found = {}
  for folder, _, files in os.walk(os.path.join(ROOT, 'bwlm_jax')):
    for name in files:
      path = os.path.join(folder, name)
      if name.endswith('.py') and name != 'stages.py':
        lines = _function_level_stage_comparisons(path)
        if lines:
          found[os.path.relpath(path, ROOT)] = lines
  assert not found, found


def test_stage2_has_one_step_factory():
  from bwlm_jax.train import steps
  factories = [name for name in dir(steps) if name.startswith('make_') and name.endswith('step')]
  assert factories == ['make_device_train_step', 'make_heads_step', 'make_stream_train_step']
  source = open(os.path.join(ROOT, 'bwlm_jax', 'train', 'feeders.py')).read()
  assert source.count('make_heads_step(') == 1
