"""Calibration (ECE / NLL / Brier against hand-computed values, per shot group, temperature scaling) and the
fingerprint that makes results comparable (training-set hash, parameter count)."""

import json
import os

import numpy as np
import pytest

from bwlm_jax.evaluation import calibration

# Four predictions over two classes; class 0 has 200 training images (Many), class 1 has 10 (Few).
PROBABILITIES = np.array([[0.9, 0.1], [0.9, 0.1], [0.62, 0.38], [0.28, 0.72]])
LABELS = np.array([0, 1, 0, 1])
COUNTS = np.array([200, 10])


def test_ece_nll_and_brier_match_the_hand_computed_values():
  report = calibration.calibration_report(np.log(PROBABILITIES), LABELS, COUNTS)
  # bins of 1/15: confidence 0.9 -> bin 13 (one right, one wrong), 0.62 -> bin 9, 0.72 -> bin 10
  assert report['ece'] == pytest.approx(0.5 * 0.4 + 0.25 * 0.38 + 0.25 * 0.28)
  assert report['nll'] == pytest.approx(-np.log([0.9, 0.1, 0.62, 0.72]).mean())
  assert report['brier'] == pytest.approx((0.02 + 1.62 + 2 * 0.38**2 + 2 * 0.28**2) / 4)
  assert [b['count'] for b in report['bins']] == [0] * 9 + [1, 1, 0, 0, 2, 0]
  assert report['bins'][13] == {'count': 2, 'accuracy': 0.5, 'confidence': pytest.approx(0.9)}
  assert report['ece_bins'] == 15 and report['groups']['medium'] is None
  # Few: the examples of class 1 only (confidence 0.9 wrong, 0.72 right)
  assert report['groups']['few']['ece'] == pytest.approx(0.5 * 0.9 + 0.5 * 0.28)
  assert report['groups']['many']['nll'] == pytest.approx(-np.log([0.9, 0.62]).mean())


def test_a_confidence_of_zero_or_one_lands_in_the_end_bins():
  bins = calibration.reliability_bins(np.array([0.0, 1.0]), np.array([False, True]))
  assert bins[0]['count'] == 1 and bins[-1]['count'] == 1


def test_temperature_scaling_fitted_on_val_lowers_an_overconfident_models_nll():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, 2000)
  logits = rng.normal(size=(2000, 10))
  logits[np.arange(2000), labels] += 1.5  # about half right ...
  logits *= 8.0  # ... and far too confident
  temperature = calibration.fit_temperature(logits, labels)
  # With Gaussian noise of unit variance the true posterior is softmax(1.5 z) = softmax((8 z) / (8 / 1.5)).
  assert temperature == pytest.approx(8 / 1.5, rel=0.05)
  assert calibration.nll(logits / temperature, labels) < 0.5 * calibration.nll(logits, labels)
  scaled = calibration.calibration_report(logits / temperature, labels, np.full(10, 50))
  assert scaled['ece'] < calibration.calibration_report(logits, labels, np.full(10, 50))['ece'] / 3


def test_the_training_set_hash_changes_when_one_index_changes(embedded_data_config):
  import dataclasses
  from bwlm_jax.data import load_dataset
  from bwlm_jax.fingerprint import construction, training_set_hash
  dataset = load_dataset(embedded_data_config)
  reference = training_set_hash(dataset)
  assert reference == training_set_hash(load_dataset(embedded_data_config))  # deterministic by seed
  indices = dataset.train_indices.copy()
  indices[5] += 1
  assert training_set_hash(dataclasses.replace(dataset, train_indices=indices)) != reference
  embedded_data_config.subset_seed = 1
  assert training_set_hash(load_dataset(embedded_data_config)) != reference
  assert 'seeded random choice of n_i images per class (data.subset_seed=1)' in construction(embedded_data_config)


def test_the_fingerprint_counts_resnet32_parameters_as_the_literature():
  from bwlm_jax.models import build_model
  assert build_model({'name': 'resnet32', 'dtype': 'float32'}, 100).parameter_count((32, 32, 3)) == 470_004


def _results(values: dict) -> dict:
  return {'models': {model: {'test': {'many': None, 'medium': v, 'few': v / 2, 'all': v, 'top5': 1.0,
                                      'calibration': {'ece': 0.1}}} for model, v in values.items()}}


def test_mean_and_std_over_seeds_and_the_paired_difference():
  from bwlm_jax.studies.seeds import aggregate, seeds_table
  per_seed = {0: _results({'naive': 0.40, 'stage2': 0.50}), 1: _results({'naive': 0.44, 'stage2': 0.50}),
              2: _results({'naive': 0.42, 'stage2': 0.56})}
  summary = aggregate(per_seed)
  naive = summary['models']['naive']['test']
  assert naive['all'] == {'mean': pytest.approx(0.42), 'std': pytest.approx(0.02), 'n': 3}
  assert naive['many'] is None and naive['top5']['std'] == 0.0
  paired = summary['paired']['stage2 - naive']['test']['all']  # differences 0.10, 0.06, 0.14
  assert paired == {'mean': pytest.approx(0.10), 'std': pytest.approx(0.04), 'n': 3}
  table = seeds_table(summary)
  assert '| naive | test | - | 42.0 ± 2.0 | 21.0 ± 1.0 | 42.0 ± 2.0 | 100.0 ± 0.0 | 10.0 ± 0.0 |' in table
  assert '| stage2 - naive | test | - | 10.0 ± 4.0 |' in table


def test_two_seeds_train_in_their_own_workdirs_and_differ(tfds_dir, tmp_path):
  from helpers import tiny_config
  from bwlm_jax.studies.seeds import train_over_seeds
  config = tiny_config(tfds_dir, epochs=1)
  config.stages = 'naive'
  summary = train_over_seeds(config, str(tmp_path), [0, 1])
  assert sorted(os.listdir(tmp_path)) == ['seed-0', 'seed-1', 'seeds.json', 'seeds.md']
  cell = summary['models']['naive']['test']['all']
  assert cell['n'] == 2 and cell['std'] > 0  # another initialisation and order: another model
  with open(tmp_path / 'seed-1' / 'config.json') as f:
    assert json.load(f)['seed'] == 1


def test_accuracy_under_a_test_prior_and_logit_adjustment_to_it(tmp_path):
  from bwlm_jax.runtime.errors import UsageError
  from bwlm_jax.evaluation.prior_shift import prior_shift_report, class_prior
  counts = np.array([90, 10])
  labels = np.array([0, 0, 1, 1])
  # The model always favours class 0 a little; class 1's examples are right only once.
  logits = np.log(np.array([[0.6, 0.4], [0.7, 0.3], [0.55, 0.45], [0.4, 0.6]]))
  train = class_prior('train', counts)
  assert train.tolist() == [0.9, 0.1] and class_prior('uniform', counts).tolist() == [0.5, 0.5]
  report = prior_shift_report(logits, labels, counts, train)
  assert report['accuracy'] == pytest.approx(0.9 * 1.0 + 0.1 * 0.5)
  # Moving from the training prior to itself changes nothing; to uniform it adds log 9 to class 1.
  assert report['adjusted_accuracy'] == report['accuracy']
  uniform = prior_shift_report(logits, labels, counts, class_prior('uniform', counts))
  assert uniform['accuracy'] == pytest.approx(0.75) and uniform['adjusted_accuracy'] == pytest.approx(0.5)
  path = tmp_path / 'prior.json'
  path.write_text('[3, 1]')
  assert class_prior(str(path), counts).tolist() == [0.75, 0.25]
  path.write_text('[1, 2, 3]')
  with pytest.raises(UsageError, match='expected 2 non-negative weights'):
    class_prior(str(path), counts)


def test_table_rows_over_seeds_match_by_name_whatever_each_seed_chose(tmp_path):
  from bwlm_jax.config import base_config
  from bwlm_jax.evaluation.table_rows import Row
  from bwlm_jax.studies.seeds import rows_over_seeds
  seen = []

  def run_rows(config, workdir):
    seen.append((config.seed, os.path.basename(workdir)))
    tau = 0.1 * (config.seed + 1)
    return [Row('naive', 'model', {'all': 0.4, 'few': 0.1}),
            Row('naive+tau-norm', 'posthoc', {'all': 0.4 + config.seed / 100}, setting=f'tau={tau:g}'),
            Row('best on validation', 'best', {'all': 0.5}, setting=f'+B{config.seed}')]

  summary = rows_over_seeds(run_rows, base_config(), str(tmp_path), [3, 5])
  assert seen == [(3, 'seed-3'), (5, 'seed-5')]
  assert list(summary['models']) == ['naive', 'naive+tau-norm', 'best on validation']
  assert summary['models']['naive+tau-norm']['test']['all']['mean'] == pytest.approx(0.44)
  assert summary['paired']['naive+tau-norm - naive']['test']['all']['mean'] == pytest.approx(0.04)
  assert os.path.exists(tmp_path / 'seeds.md')


def test_the_terminal_table_shows_ece_and_a_temperature_scaled_row():
  from bwlm_jax.evaluation.report import results_table
  report = {'many': 0.5, 'medium': None, 'few': 0.1, 'all': 0.3, 'calibration': {'ece': 0.2},
            'temperature_scaled': {'temperature': 1.5, 'ece': 0.03}}
  lines = results_table({'models': {'naive': {'test': report}}}).splitlines()
  assert lines[1].split() == ['naive', 'test', '50.0', '-', '10.0', '30.0', '20.0']
  assert lines[2].split() == ['naive+temperature', '(1.50)', 'test', '50.0', '-', '10.0', '30.0', '3.0']
