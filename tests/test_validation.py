"""Validation splits (carved, own, absent) and stage 2 chosen on them, never on the test split."""

import dataclasses
import hashlib
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from bwlm_jax import selection
from bwlm_jax.data import load_dataset, long_tail_counts
from bwlm_jax.data.load import validation_indices
from bwlm_jax.data.summary import eval_split_lines
from bwlm_jax.run import training_run
from bwlm_jax.features import SplitFeatures
from bwlm_jax.checkpoints import read_latest
from helpers import small_grid, tiny_config


def _cifar100_labels():
  return np.repeat(np.arange(100), 500)


def test_carved_validation_keeps_the_standard_cifar100_counts():
  labels = _cifar100_labels()
  counts = long_tail_counts(100, 500, 100)
  from bwlm_jax.data.long_tail import subsample_per_class
  kept = subsample_per_class(labels, counts, seed=0)
  val = validation_indices(labels, kept, 100, per_class=20, seed=0)
  assert kept.size == 10_847 and np.array_equal(np.bincount(labels[kept], minlength=100), counts)
  assert not set(val.tolist()) & set(kept.tolist())  # disjoint from train
  val_counts = np.bincount(labels[val], minlength=100)
  # Class 0 keeps all 500 images in train; class 1 keeps 477 and has 23 unused; the rest have more.
  assert val_counts[0] == 0 and (val_counts[1:] == 20).all() and val.size == 1_980
  again = validation_indices(labels, kept, 100, per_class=20, seed=0)
  other = validation_indices(labels, kept, 100, per_class=20, seed=1)
  assert np.array_equal(val, again) and not np.array_equal(val, other)
  short = validation_indices(labels, kept, 100, per_class=30, seed=0)
  assert np.bincount(labels[short], minlength=100)[1] == 23  # fewer unused than asked: what there is
  with pytest.raises(ValueError, match='data.val_per_class=496 is more than any class can give: at most 495'):
    validation_indices(labels, kept, 100, per_class=496, seed=0)


def _image_hashes(split):
  return {hashlib.sha1(image.tobytes()).hexdigest() for image in split.images}


def test_embedded_validation_is_disjoint_and_leaves_train_unchanged(embedded_data_config):
  dataset = load_dataset(embedded_data_config)
  embedded_data_config.val_per_class = 0
  without = load_dataset(embedded_data_config)
  assert without.val is None
  np.testing.assert_array_equal(dataset.train.labels, without.train.labels)
  np.testing.assert_array_equal(dataset.train.images, without.train.images)
  assert dataset.val_source == 'unused_train'
  val_counts = np.bincount(dataset.val.labels, minlength=20)
  assert val_counts[0] == 0 and (val_counts[1:] == 20).all()  # class 0 keeps all 300 images
  assert not _image_hashes(dataset.val) & _image_hashes(dataset.train)
  assert not _image_hashes(dataset.val) & _image_hashes(dataset.test)
  lines = eval_split_lines(dataset, 20)
  assert lines[1].startswith('val: 380 images (0-20 per class), drawn from the training images the long tail')
  assert '1 class has fewer than 20 unused images and gets what there is (red_disc 0)' in lines[1]


def _folder(root, splits, per_class=2):
  for split in splits:
    for name in ('a', 'b'):
      os.makedirs(root / split / name)
      for i in range(per_class):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / split / name / f'{i}.png')
  return str(root)


def test_folder_validation_is_its_own_val_or_none(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir)
  config.data.name, config.data.imbalance_factor, config.data.max_count = 'folder', None, None
  config.data.folder = _folder(tmp_path / 'with_val', ('train', 'test', 'val'))
  dataset = load_dataset(config.data)
  assert dataset.val_source == 'split' and len(dataset.val) == 4
  config.data.folder = _folder(tmp_path / 'no_val', ('train', 'test'))
  dataset = load_dataset(config.data)
  assert dataset.val is None
  assert eval_split_lines(dataset, 20)[-1].startswith('val: none (no ROOT/val/')
  config.stage2.select = 'val'
  with pytest.raises(ValueError, match='stage2.select=val: this dataset has no validation split'):
    training_run.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')  # refused before any training


@pytest.mark.parametrize('field,value,message', [
    ('stage2.select', 'test', 'stage2.select must be one of'),
    ('stage2.select_metric', 'f1', "unknown stage2.select_metric='f1'"),
    ('stage2.grid.alpha', (), 'stage2.grid.alpha is empty: the grid has no candidate'),
    ('stage2.grid.epochs', (1.5,), 'stage2.grid.epochs values must be whole numbers'),
    ('stage2.grid.train_set', ('review,long_tail',),
     r"stage2.grid.train_set values must be one of \('review', 'long_tail'\), got \('review,long_tail',\) "
     r"\(several values are a tuple"),
    ('stage2.train_set', 'all', r"stage2.train_set must be one of \('review', 'long_tail'\), got 'all'"),
    ('data.val_per_class', 400, 'data.val_per_class=400 is more than any class can give: at most 296'),
])
def test_bad_selection_config_fails_before_training(tfds_dir, tmp_path, field, value, message):
  config = tiny_config(tfds_dir)
  section, _, name = field.rpartition('.')
  target = config
  for part in section.split('.'):
    target = target[part]
  target[name] = value
  with pytest.raises(ValueError, match=message):
    training_run.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_grid_candidates_cover_every_combination_and_pin_fields():
  from bwlm_jax.config import base_config
  stage2 = base_config().stage2
  stage2.grid.learning_rate, stage2.grid.epochs = (0.01, 0.1), (10, 30)
  stage2.grid.weight_decay, stage2.grid.alpha = (5e-4, 0.1), (0.1, 0.9)
  assert len(selection.candidates(stage2)) == 32  # the default grid tries both backbones
  assert [c.backbone for c in selection.candidates(stage2)[:2]] == ['stage1', 'naive']
  stage2.grid.backbone = None
  assert len(selection.candidates(stage2)) == 16
  assert {(c.loss, c.backbone) for c in selection.candidates(stage2)} == {('bfs', 'stage1')}
  stage2.loss = 'ce'  # alpha means nothing to CE: it does not multiply the grid
  assert len(selection.candidates(stage2)) == 8
  stage2.grid.weight_decay = None
  assert {c.weight_decay for c in selection.candidates(stage2)} == {stage2.weight_decay}
  assert len(selection.candidates(stage2, fixed=('epochs',))) == 2
  stage2.grid.train_set = ('review', 'long_tail')  # the heads' training set multiplies the grid too
  assert [c.train_set for c in selection.candidates(stage2)[:2]] == ['review', 'long_tail']
  assert len(selection.candidates(stage2)) == 8


def test_a_head_label_names_a_backbone_or_training_set_other_than_the_papers():
  from bwlm_jax.head_setting import HeadSetting, label
  paper = HeadSetting()
  assert label(paper) == 'lr=0.1 epochs=30 lambda=0.0005 alpha=0.1'
  assert label(paper.replace(backbone='naive', train_set='long_tail')) == (
      'lr=0.1 epochs=30 lambda=0.0005 alpha=0.1 backbone=naive train_set=long_tail')
  written_before = {k: v for k, v in dataclasses.asdict(paper).items() if k != 'train_set'}
  assert label(written_before) == label(paper)  # a results.json from before the field: the Review set


def test_selection_picks_the_head_with_the_best_validation_score(tfds_dir, tmp_path, monkeypatch):
  """A learning rate of 1e-6 leaves its head at its initialisation: the 0.5 head must win on validation.

  Also: nothing reads the test split before the choice is made (a log of every split read says so).
  """
  config = small_grid(tiny_config(tfds_dir, epochs=2), learning_rate=(1e-6, 0.5), epochs=(1, 2))
  config.stages = 'stage1,stage2'
  config.eval_every_epochs = 1  # training curves must use the val split, not test
  reads = []
  real_split_features, real_choose = SplitFeatures.__call__, selection.choose

  def logged_split_features(self, variables, split):
    reads.append('test' if split is self.dataset.test else 'val' if split is self.dataset.val else 'train')
    return real_split_features(self, variables, split)

  def logged_choose(scores):
    reads.append('chosen')
    return real_choose(scores)

  monkeypatch.setattr(SplitFeatures, '__call__', logged_split_features)
  monkeypatch.setattr(selection, 'choose', logged_choose)
  results = training_run.train_and_evaluate(config, str(tmp_path))
  assert 'test' in reads and reads.index('test') > reads.index('chosen')

  record = results['stage2_selection']
  settings = [(c['setting']['learning_rate'], c['setting']['epochs']) for c in record['candidates']]
  assert settings == [(1e-6, 1), (1e-6, 2), (0.5, 1), (0.5, 2)]
  scores = [c['score'] for c in record['candidates']]
  assert record['chosen'] == int(np.argmax(scores)) and settings[record['chosen']][0] == 0.5
  assert all(c['test'] is not None for c in record['candidates'])
  # The chosen head is the stage-2 model: its checkpoint equals head k of the grid run, and its own
  # validation report gives back the score it was chosen by.
  grid, _ = read_latest(str(tmp_path / 'checkpoints' / 'stage2_grid'))
  chosen, meta = read_latest(str(tmp_path / 'checkpoints' / 'stage2'))
  k = record['chosen']
  np.testing.assert_array_equal(chosen['params']['head']['dense']['kernel'],
                                np.asarray(grid['params']['head']['dense']['kernel'])[k])
  assert meta['finished'] and meta['config']['stage2']['learning_rate'] == 0.5
  assert meta['selected']['setting'] == record['candidates'][k]['setting']
  val_report = results['models']['stage2']['val']
  assert selection.score(val_report, 'balanced_accuracy') == pytest.approx(scores[k], abs=1e-6)
  table = open(tmp_path / 'stage2_selection.md').read().splitlines()
  assert len(table) == 6 and table[2 + k].endswith('| **chosen** |')
  curves = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert any('val_accuracy' in row for row in curves) and not any('test_accuracy' in row for row in curves)
  # A rerun reuses the finished grid and the chosen head.
  again = training_run.train_and_evaluate(config, str(tmp_path))
  assert again['models'] == results['models'] and again['stage2_selection'] == record
  assert not os.path.exists(tmp_path / 'stage2_selection-2.md')  # the same table is not written twice


def test_auto_selection_without_validation_trains_the_configured_setting(tfds_dir, tmp_path, capsys):
  config = tiny_config(tfds_dir, epochs=1)
  config.data.val_per_class = 0
  config.stage2.select = 'auto'
  config.stages = 'stage1,stage2'
  results = training_run.train_and_evaluate(config, str(tmp_path))
  assert 'stage2_selection' not in results and set(results['models']['stage2']) == {'test'}
  assert 'stage 2: no selection on validation (this dataset has no validation split' in capsys.readouterr().out
  grid, _ = read_latest(str(tmp_path / 'checkpoints' / 'stage2_grid'))  # a grid of one head: the configured one
  assert grid['params']['head']['dense']['kernel'].shape[0] == 1


def test_a_stage2_model_that_is_not_the_grids_choice_is_never_relabelled(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir, epochs=1)
  config.stages = 'stage1,stage2'
  training_run.train_and_evaluate(config, str(tmp_path))  # stage 2 without selection
  small_grid(config, learning_rate=(0.05, 0.1))
  config.allow_config_change = True
  with pytest.raises(ValueError, match='stage2: the finished checkpoint .* was trained with another config '
                                       ".*stage2.select: 'none' -> 'val'.*not relabelled"):
    training_run.train_and_evaluate(config, str(tmp_path))


def test_a_choice_saved_before_a_head_field_existed_reads_that_field_from_its_config():
  from bwlm_jax.head_setting import HeadSetting
  chosen = {k: v for k, v in dataclasses.asdict(HeadSetting(backbone='naive')).items() if k != 'train_set'}
  meta = {'selected': {'setting': chosen}, 'config': {'stage2': {**chosen, 'train_set': 'long_tail'}}}
  assert training_run._chosen_setting(meta) == {**chosen, 'train_set': 'long_tail'}  # the run's own training set
  del meta['config']['stage2']['train_set']
  assert training_run._chosen_setting(meta)['train_set'] == 'review'  # older still: the only set there was
  assert training_run._chosen_setting({'config': meta['config']}) is None  # not chosen on validation


def test_a_grid_field_set_to_none_on_the_command_line_keeps_the_stage2_value():
  from bwlm_jax.config import base_config
  from bwlm_jax.runtime.errors import UsageError
  stage2 = base_config().stage2
  stage2.grid.weight_decay = (None,)  # what --config.stage2.grid.weight_decay=None gives for a tuple field
  assert selection.grid_values(stage2, 'weight_decay') is None
  assert {c.weight_decay for c in selection.candidates(stage2)} == {stage2.weight_decay}
  stage2.grid.weight_decay = (None, 0.1)
  with pytest.raises(UsageError, match=r'stage2.grid.weight_decay=\(None, 0.1\) mixes None with values'):
    selection.validate(stage2)
