"""What every study shares (studies/base.py): the whole grid checked before anything trains, list values read
one way from the command line, a failed candidate reported and never chosen while the others are, and a rerun
that neither retrains what finished nor loops on what failed."""

import json
import os

import pytest
from absl import flags
from ml_collections import config_flags

from bwlm_jax.runtime.errors import CandidatesFailed, UsageError
from bwlm_jax.studies import recipe, seeds, tune
from bwlm_jax.studies.base import FAILED_FILE, run_study
from helpers import tiny_config


def _grids(argv):
  """The tuning and recipe grids as the tools parse `argv` (`--tuning.*`, `--recipe.*`)."""
  values = flags.FlagValues()
  config_flags.DEFINE_config_dict('tuning', tune.default_grid(), flag_values=values, lock_config=True, sys_argv=argv)
  config_flags.DEFINE_config_dict('recipe', recipe.default_grid(), flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.tuning, values.recipe


def test_every_study_reads_list_values_from_the_command_line_one_way(tfds_dir):
  tuning, grid = _grids(['prog', '--tuning.modes=bias,last', '--tuning.learning_rate=0.001,0.01',
                         '--recipe.loss=ce,balanced_softmax', '--recipe.epochs=1,3', '--recipe.label_smoothing=None',
                         '--recipe.mixup_alpha=None', '--recipe.randaugment_layers=None', '--recipe.sampler=None'])
  study = tune.Tune(tuning)
  assert study.values('modes') == ('bias', 'last') and study.values('learning_rate') == (0.001, 0.01)
  assert [c.name for c in study.candidates('W:0')] == ['bias + balanced_softmax (LP-FT)', 'last + balanced_softmax (LP-FT)']
  config = tiny_config(tfds_dir)
  found = recipe.candidates(config, grid)  # None keeps the configured value: no candidate for those fields
  assert [c.folder for c in found] == ['default', 'loss=balanced_softmax', 'epochs=1', 'epochs=3']  # ce, 2: as configured
  tuning, _ = _grids(['prog', '--tuning.modes=None'])
  with pytest.raises(UsageError, match=r'tuning.modes=None: this field needs values, e.g. --tuning.modes=V1,V2'):
    tune.Tune(tuning).values('modes')


@pytest.mark.parametrize('argv,message', [
    (['--tuning.learning_rate=0.001,-0.01'], r'tuning.learning_rate: -0.01 is not > 0; every value of the grid'),
    (['--tuning.epochs=2,-1'], r'tuning.epochs: -1 is not a whole number >= 0 \(0: the start itself\)'),
    (['--tuning.epochs=2,0', '--tuning.head_inits=random'],
     r"tuning candidate bias \+ balanced_softmax, lr=0.001 epochs=0: naive.epochs=0 keeps the starting model "
     r"untrained, which with head_init=random is a random head"),
    (['--tuning.modes=bias,lora'], r"tuning candidate lora \+ balanced_softmax \(LP-FT\), lr=0.001 epochs=2: "
                                   r"naive.tune='lora' tunes a ViT's attention or MLPs"),
    (['--tuning.losses=balanced_softmax,focal'], r"tuning.losses: 'focal' is not one of"),
])
def test_the_whole_tuning_grid_is_checked_before_the_first_candidate_trains(tmp_path, argv, message):
  from test_pretrained import _config
  tuning, _ = _grids(['prog', *argv])
  config = _config(tmp_path / 'data', tmp_path / 'r18.safetensors')
  with pytest.raises(UsageError, match=message):
    run_study(tune.Tune(tuning), config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists() and not (tmp_path / 'data').exists()  # nothing read, nothing written


def test_a_diverging_candidate_is_reported_never_chosen_and_not_retrained(tfds_dir, tmp_path, capsys):
  config = tiny_config(tfds_dir, epochs=1)
  config.stages = 'naive'
  grid = recipe.default_grid()
  for field in recipe.FIELDS:
    grid[field] = None
  grid.learning_rate = (0.05, 1e6)  # the second diverges (non-finite loss) within its epoch
  study = recipe.Recipe(grid)
  with pytest.raises(CandidatesFailed, match=r'1 candidate\(s\) of the recipe study failed \(learning_rate=1e\+06\)'
                                            r'.* never chosen; the others were compared and chosen as usual'):
    seeds.run(study, config, str(tmp_path / 'run'))
  assert CandidatesFailed.exit_status == 3
  table = open(tmp_path / 'run' / 'recipe' / 'table.md').read()
  assert '| learning_rate=1e+06 | - | - | - | - | - | - | failed: naive: the loss became non-finite' in table
  best = json.load(open(tmp_path / 'run' / 'recipe' / 'best.json'))
  assert best['recipe'] in ({}, {'learning_rate': 0.05}) and best['val_score'] is not None
  assert [c['val_score'] is None for c in best['candidates']] == [False, False, True]
  failed = tmp_path / 'run' / 'recipe' / 'learning_rate=1e+06' / FAILED_FILE
  assert 'non-finite' in json.load(open(failed))['error']
  capsys.readouterr()
  rows = run_study(recipe.Recipe(grid), config, str(tmp_path / 'run'))  # the rerun: nothing trains again
  out = capsys.readouterr().out
  assert out.count('naive: finished earlier') == 2 and 'failed earlier' in out
  assert [row.kind for row in rows] == ['model', 'model', 'failed', 'best']
  os.remove(failed)  # deleting the record retries the candidate (and it diverges again)
  rows = run_study(recipe.Recipe(grid), config, str(tmp_path / 'run'))
  assert 'this candidate failed' in capsys.readouterr().out and rows[2].kind == 'failed'


def test_the_ablation_reads_a_grid_of_none_as_the_command_line_gives_it(tfds_dir):
  from bwlm_jax.studies.ablation import ablation_variants
  config = tiny_config(tfds_dir)
  config.stage2.weight_decay, config.stage2.grid.weight_decay = 0.0, (None,)  # --config.stage2.grid.weight_decay=None
  with pytest.raises(UsageError, match=r'the ablation compares lambda = 0 with lambda > 0'):  # a TypeError before
    ablation_variants(config)
  config.stage2.weight_decay = 0.01
  assert ablation_variants(config)['+BWLM']['weight_decay'] == 0.01


def test_a_tuning_row_whose_every_setting_failed_is_a_failed_row_not_the_end_of_the_study(monkeypatch):
  from bwlm_jax.evaluation.table_rows import Row
  grid = tune.default_grid()
  grid.learning_rate = (1e3, 1e4)
  trained = []

  def failing(config, run_dir, dataset, name, stage, metric, setting=''):
    trained.append(setting)
    return Row(name, 'failed', {}, setting='failed: naive: the loss became non-finite')

  monkeypatch.setattr(tune, 'train_candidate', failing)
  study = tune.Tune(grid)
  run = type('Run', (), {'workdir': '/nowhere', 'config': None, 'dataset': None, 'metric': 'balanced_accuracy'})()
  monkeypatch.setattr(tune, 'candidate_config', lambda *args: None)
  row = study.tuned_row(run, study.candidates('W:0')[0])
  assert row.kind == 'failed' and row.name == 'bias + balanced_softmax (LP-FT)' and trained == [
      'lr=1000 epochs=2', 'lr=10000 epochs=2']


def test_a_grid_field_that_does_not_exist_or_a_value_of_the_wrong_type_is_one_line(tfds_dir):
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run([sys.executable, os.path.join(root, 'launch', 'tune.py'),
                         f'--config={root}/configs/quickstart.py', '--workdir=/nonexistent/w', '--tuning.loss=ce'],
                        capture_output=True, text=True, timeout=300)  # read as the tool is imported: a traceback before
  assert done.returncode == 2 and done.stderr.strip().splitlines() == [
      'error: --tuning.loss=ce: no config field \'loss\'. Did you mean "losses" instead of "loss"?']
  _, grid = _grids(['prog', '--recipe.epochs=abc'])
  with pytest.raises(UsageError, match=r"recipe candidate epochs=abc \(recipe.epochs\): Could not override field"):
    recipe.candidates(tiny_config(tfds_dir), grid)
