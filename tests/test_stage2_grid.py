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
from bwlm_jax.run.training_run import train_and_evaluate
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
  config.stage2.grid.backbone = ('stage1',)  # the grid of the older versions: stage 2's backbone alone
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


def test_an_older_workdir_is_refused_under_the_new_backbone_grid_until_it_is_pinned(v1, tfds_dir):
  from bwlm_jax.runtime.errors import UsageError
  config = _v1_config(tfds_dir)
  config.stage2.grid.backbone = ('stage1', 'naive')
  with pytest.raises(UsageError, match=r"stage2.grid.backbone: \['stage1'\] -> \['stage1', 'naive'\]"):
    train_and_evaluate(config, str(v1 / 'finished'))


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


@pytest.mark.parametrize('augment,cache,in_memory,sampler,feed', [
    (False, True, True, 'uniform', 'cached'), (False, True, False, 'class_balanced', 'cached'),
    (True, True, True, 'uniform', 'device'), (False, False, True, 'class_balanced', 'device'),
    (True, True, False, 'uniform', 'stream'), (True, True, False, 'class_balanced', None)])
def test_how_stage2_is_fed_is_decided_in_one_place(tfds_dir, augment, cache, in_memory, sampler, feed):
  from types import SimpleNamespace
  from bwlm_jax.runtime.errors import UsageError
  from bwlm_jax.train.feeders import stage2_feed
  config = tiny_config(tfds_dir)
  config.stage2.augment, config.stage2.cache_features, config.stage2.sampler = augment, cache, sampler
  dataset = SimpleNamespace(in_memory=in_memory)
  if feed is None:
    with pytest.raises(UsageError, match='stage2.sampler=class_balanced draws batches by index'):
      stage2_feed(config, dataset)
  else:
    assert stage2_feed(config, dataset) == feed


def test_the_feed_and_an_impossible_combination_are_told_before_training(tfds_dir, tmp_path, capsys):
  from bwlm_jax.runtime.errors import MissingFileError, UsageError
  config = tiny_config(tfds_dir)
  config.stages = 'stage1,stage2'
  config.data.pipeline = 'stream'
  config.stage2.sampler = 'class_balanced'
  with pytest.raises(UsageError, match='streamed data cannot do'):
    train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')  # refused before any training
  config.stage2.augment = False
  config.stages = 'stage2'
  config.stage1_checkpoint = str(tmp_path / 'none')
  with pytest.raises(MissingFileError, match='stage 2 needs a stage1 checkpoint'):
    train_and_evaluate(config, str(tmp_path))
  assert 'stage 2 is fed cached: features of the frozen backbone computed once' in capsys.readouterr().out


def test_the_backbone_is_a_grid_dimension_where_both_backbones_are_trained(tfds_dir, tmp_path, capsys):
  from helpers import small_grid
  config = small_grid(tiny_config(tfds_dir, epochs=1), learning_rate=(0.1,), epochs=(1,), weight_decay=(5e-4,),
                      alpha=(0.1,))
  config.stages = 'stage1,stage2'
  config.stage2.grid.backbone = ('stage1', 'naive')
  alone = train_and_evaluate(config, str(tmp_path / 'no_naive'))
  assert 'no finished naive backbone here, so the grid leaves out its 1 candidates' in capsys.readouterr().out
  assert [c['setting']['backbone'] for c in alone['stage2_selection']['candidates']] == ['stage1']
  config.stages = 'naive,stage1,stage2'
  both = train_and_evaluate(config, str(tmp_path / 'both'))
  record = both['stage2_selection']
  assert [c['setting']['backbone'] for c in record['candidates']] == ['stage1', 'naive']
  scores = [c['score'] for c in record['candidates']]
  assert record['chosen'] == int(np.argmax(scores))
  chosen = record['candidates'][record['chosen']]['setting']['backbone']
  # The chosen head is saved with its own backbone frozen under it, and the selection table names it.
  stage2, meta = checkpoints.read_latest(checkpoints.stage_directory(str(tmp_path / 'both'), 'stage2'))
  backbone, _ = checkpoints.read_latest(checkpoints.stage_directory(str(tmp_path / 'both'), chosen))
  np.testing.assert_array_equal(jax_leaves(stage2['frozen']['params']), jax_leaves(backbone['params']['backbone']))
  assert meta['config']['stage2']['backbone'] == chosen
  table = open(tmp_path / 'both' / 'stage2_selection.md').read()
  assert 'backbone=naive' in table
  for name in ('stage2_grid', 'stage2_grid_naive'):
    assert checkpoints.finished_meta(checkpoints.stage_directory(str(tmp_path / 'both'), name))


def jax_leaves(tree):
  import jax
  return np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(tree)])


def test_the_training_set_is_a_grid_dimension_and_each_set_equals_its_own_run(tfds_dir, tmp_path):
  """Heads on the Review set and on the whole tail in one grid: each set's heads train as their own grid
  checkpoint, for that set's number of steps, and equal the heads of a run that trains that set alone."""
  from helpers import small_grid
  from bwlm_jax.data.device_pipeline import steps_per_epoch
  from bwlm_jax.train.loop import stage_split
  config = small_grid(tiny_config(tfds_dir, epochs=1), learning_rate=(0.1, 0.3), epochs=(1,), weight_decay=(5e-4,),
                      alpha=(0.1,))
  config.stages = 'stage1,stage2'
  config.stage2.grid.backbone = ('stage1',)
  config.stage2.grid.train_set = ('review', 'long_tail')
  both = train_and_evaluate(config, str(tmp_path / 'both'))
  record = both['stage2_selection']
  assert [(c['setting']['learning_rate'], c['setting']['train_set']) for c in record['candidates']] == [
      (0.1, 'review'), (0.1, 'long_tail'), (0.3, 'review'), (0.3, 'long_tail')]
  assert record['chosen'] == int(np.argmax([c['score'] for c in record['candidates']]))
  dataset = load_dataset(config.data)
  for name, train_set in (('stage2_grid', 'review'), ('stage2_grid_long_tail', 'long_tail')):
    meta = checkpoints.finished_meta(checkpoints.stage_directory(str(tmp_path / 'both'), name))
    images = len(stage_split(config, dataset, 'stage2', train_set))
    assert meta['total_steps'] == steps_per_epoch(images, config.batch_size), name
  assert len(stage_split(config, dataset, 'stage2', 'long_tail')) == int(dataset.train_counts.sum())
  _, chosen_meta = _head(str(tmp_path / 'both'))
  assert chosen_meta['config']['stage2']['train_set'] == record['candidates'][record['chosen']]['setting']['train_set']
  assert 'train_set=long_tail' in open(tmp_path / 'both' / 'stage2_selection.md').read()

  config.stages, config.stage1_checkpoint = 'stage2', str(tmp_path / 'both')
  config.stage2.train_set, config.stage2.grid.train_set = 'long_tail', None
  train_and_evaluate(config, str(tmp_path / 'whole_tail_alone'))
  together, _ = _head(str(tmp_path / 'both'), 'stage2_grid_long_tail')
  alone, _ = _head(str(tmp_path / 'whole_tail_alone'), 'stage2_grid_long_tail')
  for key in ('kernel', 'bias'):
    np.testing.assert_allclose(together[key], alone[key], rtol=1e-5, atol=1e-6)
