"""Evaluation tools on a tiny run: evaluate, ablation table, sweep, figures, predict, and their bad input."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from bwlm_jax import selection
from bwlm_jax.data.synthetic import shapes
from bwlm_jax.data import load_dataset
from bwlm_jax.evaluation.workdir_reports import report_workdir
from bwlm_jax.evaluation.table_rows import by_name
from bwlm_jax.studies.ablation import Ablation
from bwlm_jax.studies.base import chosen_label, run_study
from bwlm_jax.studies.sweep import Sweep
from bwlm_jax.predict import image_paths, predict_files
from helpers import small_grid, tiny_config


def _tiny(tfds_dir):
  config = tiny_config(tfds_dir, epochs=1)
  config.eval_batch_size = 500
  config.stage2.learning_rate = config.naive.learning_rate = 0.05
  config.stage2.weight_decay = 0.01
  config.eval_every_epochs = 1
  return small_grid(config, alpha=(0.1, 0.9))  # each BFS row chooses its alpha on validation


@pytest.fixture(scope='module')
def ablation_run(tfds_dir, tmp_path_factory):
  """(workdir, rows, what the run printed) of an ablation on a new workdir."""
  workdir = str(tmp_path_factory.mktemp('ablation'))
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    rows = run_study(Ablation(), _tiny(tfds_dir), workdir)
  return workdir, rows, printed.getvalue()


def test_ablation_table_has_every_row_and_column(ablation_run):
  workdir, rows, printed = ablation_run
  # Before anything trains, one line says that the base models come first (most of the run's time).
  announced = printed.index(f'base models: {workdir} has no finished naive and stage1; training them first '
                            '(naive 1 epochs, stage1 1 epochs)')
  assert announced < printed.index('model   ') < printed.index('--- ablation')  # before the base run's table
  expected = ['naive', '+CE', '+CB', '+BS', '+BFS', '+CEW', '+CBW', '+BSW', '+BWLM', 'cRT', '+BWLM+MaxNorm',
              'BWLM (naive backbone)', 'BWLM (naive backbone) on the whole tail', 'naive+tau-norm',
              'naive+logit adjustment', 'best on validation']
  assert [row.name for row in rows] == expected
  assert [row.kind for row in rows] == ['model'] * 13 + ['posthoc'] * 2 + ['best']
  reports = {row.label: row.test for row in rows}
  table = open(os.path.join(workdir, 'ablation', 'table.md')).read().splitlines()
  assert table[0] == '| embedded IF 10 | Many | Medium | Few | All | ECE | val | chosen on validation |'
  assert [line.split('|')[1].strip() for line in table[2:]] == [row.label for row in rows]
  saved = json.load(open(os.path.join(workdir, 'ablation', 'table.json')))
  for line in table[2:]:
    name, many, medium, few, everything, ece, val, chosen = [c.strip() for c in line.split('|')[1:9]]
    assert many == '-'  # no class has more than 100 images: absent, not 0
    assert all(0 <= float(v) <= 100 for v in (medium, few, everything, val))
    assert float(ece) == round(100 * reports[name]['calibration']['ece'], 1)
    assert float(val) == round(100 * saved['notes'][name]['val'], 1)
  # Every row says what validation chose; the BFS rows chose alpha among the two the grid offers.
  assert saved['notes']['+BWLM']['chosen'] in ('lr=0.05 epochs=1 lambda=0.01 alpha=0.1',
                                               'lr=0.05 epochs=1 lambda=0.01 alpha=0.9')
  assert saved['notes']['+CE']['chosen'] == 'lr=0.05 epochs=1 lambda=0'
  assert saved['notes']['BWLM (naive backbone)']['chosen'].endswith(' backbone=naive')
  assert saved['notes']['naive']['chosen'] == ''
  best_row = by_name(rows)[rows[-1].setting]
  best = json.load(open(os.path.join(workdir, 'ablation', 'best.json')))
  scores = {name: note['val'] for name, note in saved['notes'].items() if not name.startswith('best')}
  assert best['method'] == best_row.label == max(scores, key=scores.get)
  assert rows[-1].test == best_row.test and rows[-1].label == f'best on validation: {best_row.name}'
  # The rows that differ only in their heads trained as one grid: every (row, alpha) candidate a head, the
  # naive-backbone rows' heads in the grids of that backbone, one per training set.
  whole_tail = 'BWLM (naive backbone) on the whole tail'
  [heads_dir] = [d for d in os.listdir(os.path.join(workdir, 'ablation')) if d.startswith('heads-')]
  together = json.load(open(os.path.join(workdir, 'ablation', heads_dir, 'results.json')))['rows']
  assert list(together) == expected[1:9] + ['BWLM (naive backbone)', whole_tail]
  settings = [(c['setting']['loss'], c['setting']['weight_decay'], c['setting']['alpha'])
              for name in expected[1:9] for c in together[name]['stage2_selection']['candidates']]
  assert settings == [
      ('ce', 0.0, 0.1), ('cb_focal', 0.0, 0.1), ('balanced_softmax', 0.0, 0.1), ('bfs', 0.0, 0.1), ('bfs', 0.0, 0.9),
      ('ce', 0.01, 0.1), ('cb_focal', 0.01, 0.1), ('balanced_softmax', 0.01, 0.1), ('bfs', 0.01, 0.1),
      ('bfs', 0.01, 0.9)]
  record = together['+BWLM']['stage2_selection']
  scores = [c['score'] for c in record['candidates']]
  assert record['chosen'] == int(np.argmax(scores))
  assert together['+BWLM']['models']['stage2']['test'] == reports['+BWLM']
  assert [together[n]['source']['checkpoint'] for n in ('+BWLM', 'BWLM (naive backbone)', whole_tail)] == [
      'stage2_grid', 'stage2_grid_naive', 'stage2_grid_naive_long_tail']
  # The comparison rows that change more than the head trained alone, each chosen on validation.
  crt = json.load(open(os.path.join(workdir, 'ablation', 'cRT', 'config.json')))
  assert (crt['stage2']['backbone'], crt['stage2']['sampler']) == ('naive', 'class_balanced')
  assert crt['stage2']['grid']['weight_decay'] is None  # cRT keeps lambda = 0
  assert os.path.exists(os.path.join(workdir, 'ablation', 'cRT', 'stage2_selection.md'))
  # The whole-tail row: BWLM's grid on the naive backbone, trained on every training image (not the Review set).
  assert {(c['setting']['loss'], c['setting']['backbone'], c['setting']['train_set'])
          for c in together[whole_tail]['stage2_selection']['candidates']} == {('bfs', 'naive', 'long_tail')}
  assert saved['notes'][whole_tail]['chosen'].endswith(' backbone=naive train_set=long_tail')
  assert reports[whole_tail] != reports['BWLM (naive backbone)']  # another training set


def test_the_naive_row_never_shows_the_base_runs_stage2_choice():
  # A base run trained with train.py holds its own stage-2 selection next to the naive model.
  setting = {'loss': 'ce', 'weight_decay': 0.0, 'alpha': 0.1}
  record = {'chosen': 1, 'candidates': [{'setting': {**setting, 'learning_rate': 0.1, 'epochs': 30}},
                                        {'setting': {**setting, 'learning_rate': 0.3, 'epochs': 10}}]}
  base = {'models': {}, 'stage2_selection': record}
  assert chosen_label(base, 'naive') == ''
  assert chosen_label(base, 'stage2') == 'lr=0.3 epochs=10 lambda=0'
  assert chosen_label({'models': {}}, 'stage2') == ''


def test_figures_are_written_and_not_empty(ablation_run):
  workdir, _, _ = ablation_run
  for name in ('per_class_accuracy', 'weight_norms', 'class_counts', 'training_curves', 'reliability'):
    for ext in ('png', 'pdf'):
      path = os.path.join(workdir, 'figures', f'{name}.{ext}')
      assert os.path.getsize(path) > 5000, path
  image = np.asarray(Image.open(os.path.join(workdir, 'figures', 'per_class_accuracy.png')))
  assert image.shape[0] > 300 and image.std() > 10  # a drawn figure, not a blank canvas


def test_rerun_reuses_finished_variants_and_never_overwrites(ablation_run, tfds_dir, capsys):
  workdir, rows, _ = ablation_run
  again = run_study(Ablation(), _tiny(tfds_dir), workdir)
  assert 'base models:' not in capsys.readouterr().out
  assert again == rows  # finished variants were reused, not retrained
  assert os.path.exists(os.path.join(workdir, 'ablation', 'table-2.md'))


def test_evaluate_writes_reports_confusion_and_suffixes(ablation_run, tfds_dir):
  workdir, rows, _ = ablation_run
  config = _tiny(tfds_dir)
  dataset = load_dataset(config.data)
  summary = report_workdir(config, workdir, dataset)
  assert set(summary) == {'naive', 'stage1'}
  report = summary['naive']['splits']['test']['report']
  assert report['all'] == by_name(rows)['naive'].test['all']
  confusion = np.loadtxt(os.path.join(workdir, 'evaluation', 'naive', 'confusion_test.csv'), delimiter=',',
                         skiprows=1, usecols=range(1, 21))
  assert confusion.sum() == 2000 and np.trace(confusion) == round(report['all'] * 2000)
  per_class = open(os.path.join(workdir, 'evaluation', 'naive', 'per_class_test.csv')).read().splitlines()
  assert per_class[0] == 'class,name,train_count,group,accuracy,weight_norm' and len(per_class) == 21
  report_workdir(config, workdir, dataset, ['naive'])
  assert os.path.exists(os.path.join(workdir, 'evaluation', 'naive', 'test-2.json'))


def test_sweep_table_and_plot(ablation_run, tfds_dir):
  workdir, _, _ = ablation_run
  grid = run_study(Sweep([0.0, 1.0], [0.01]), _tiny(tfds_dir), workdir)
  assert [row.name for row in grid] == ['alpha=0,lambda=0.01', 'alpha=1,lambda=0.01']
  assert os.path.getsize(os.path.join(workdir, 'figures', 'alpha_sweep_lambda0.01.png')) > 5000
  with pytest.raises(ValueError, match='at least one alpha'):
    run_study(Sweep([], [0.01]), _tiny(tfds_dir), workdir)
  with pytest.raises(ValueError, match=r'alpha values must lie in \[0, 1\]'):
    run_study(Sweep([1.5], [0.01]), _tiny(tfds_dir), workdir)


def test_predict_on_generated_images(ablation_run, tmp_path):
  workdir, _, _ = ablation_run
  images, labels = shapes.draw_split([1] * 20, seed=5)
  for i, image in enumerate(images[:4]):
    Image.fromarray(image).resize((64, 64)).save(tmp_path / f'{i}.png')
  predictions, unreadable = predict_files(os.path.join(workdir, 'ablation', 'cRT'), 'stage2',
                                         image_paths([str(tmp_path)]), 3)
  assert len(predictions) == 4 and unreadable == []
  for _, top in predictions:
    assert len(top) == 3 and all(name in shapes.class_names() for name, _ in top)
    probabilities = [p for _, p in top]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
  best_predictions, _ = predict_files(workdir, 'best', image_paths([str(tmp_path)]), 3)
  assert [p for p, _ in best_predictions] == [p for p, _ in predictions]
  assert all(len(top) == 3 and all(name in shapes.class_names() for name, _ in top) for _, top in best_predictions)
  # A newer best.json naming the naive model with logit adjustment: a prior of 1 image for class 5
  # against 1e9 for the others lifts class 5 to the top for every image, so the correction is applied.
  pointer = os.path.join(workdir, 'ablation', 'best-9.json')
  with open(pointer, 'w') as f:
    json.dump({'source': {'workdir': workdir, 'stage': 'naive', 'posthoc': {'method': 'logit_adjustment', 'tau': 1.0}},
               'train_counts': [1e9] * 5 + [1] + [1e9] * 14}, f)
  os.utime(pointer, (2e9, 2e9))
  adjusted, _ = predict_files(workdir, 'best', image_paths([str(tmp_path)]), 3)
  assert {top[0][0] for _, top in adjusted} == {shapes.class_names()[5]}
  os.remove(pointer)
  (tmp_path / 'broken.png').write_bytes(b'no image')
  good, unreadable = predict_files(os.path.join(workdir, 'ablation', 'cRT'), 'stage2', [str(tmp_path / 'broken.png')])
  assert good == [] and len(unreadable) == 1 and 'cannot read image' in unreadable[0][1]


def test_tools_refuse_missing_or_mismatched_checkpoints(ablation_run, tfds_dir, tmp_path):
  workdir, _, _ = ablation_run
  with pytest.raises(FileNotFoundError, match='no finished stage2 checkpoint'):
    predict_files(str(tmp_path), 'stage2', [])
  other = _tiny(tfds_dir)
  other.data.name = 'folder'
  folder = tmp_path / 'imgs'
  for split in ('train', 'test'):
    for name in ('a', 'b'):
      os.makedirs(folder / split / name)
      Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / split / name / '0.png')
  other.data.folder = str(folder)
  other.data.imbalance_factor = None
  other.data.max_count = None
  with pytest.raises(ValueError, match='trained on embedded with 20 classes; this config has folder with 2'):
    report_workdir(other, workdir, load_dataset(other.data), ['naive'])


def test_evaluate_skips_an_interrupted_stage_and_writes_no_training_files(tfds_dir, tmp_path):
  from bwlm_jax.evaluation.workdir_reports import finished_stages
  from bwlm_jax.run.training_run import train_and_evaluate
  from bwlm_jax.runtime.errors import Interrupted
  config = tiny_config(tfds_dir, epochs=1)
  config.stages = 'naive,stage1'
  steps_per_epoch = -(-311 // 32)
  with pytest.raises(Interrupted):
    train_and_evaluate(config, str(tmp_path), stop_after_steps=steps_per_epoch + 2)  # naive done, stage 1 not
  assert os.path.isdir(tmp_path / 'checkpoints' / 'stage1')
  assert finished_stages(str(tmp_path)) == ['naive']
  os.remove(tmp_path / 'metrics.jsonl')
  summary = report_workdir(config, str(tmp_path), load_dataset(config.data))
  assert set(summary) == {'naive'}
  assert not os.path.exists(tmp_path / 'metrics.jsonl')  # evaluation opens no training log
  with pytest.raises(FileNotFoundError, match='no finished stage1 checkpoint'):
    predict_files(str(tmp_path), 'stage1', [])


def test_class_count_plot_draws_the_shared_shot_limits(monkeypatch):
  from bwlm_jax.evaluation import plots
  monkeypatch.setattr(plots, 'MANY_ABOVE', 150)
  monkeypatch.setattr(plots, 'FEW_BELOW', 7)
  figure = plots.class_counts([300, 100, 5], 'test')
  lines = {line.get_label(): line.get_ydata()[0] for line in figure.axes[0].get_lines()}
  assert lines == {'Many / Medium (150)': 150, 'Medium / Few (7)': 7}
