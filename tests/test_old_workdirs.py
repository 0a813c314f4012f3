"""Workdirs written before the redesign of issue 45 (tests/data/pre_redesign, made by
tests/data/make_pre_redesign_workdirs.py with the code of commit d11cc2a): a finished one is reused and
evaluates to its own numbers, a half-finished one resumes to exactly the model an uninterrupted run trains (on
the CPU that made the fixture: tests/data/pre_redesign/cpu.txt; to float rounding on another)."""

import json
import os
import shutil

import jax
import numpy as np

from bwlm_jax import checkpoints
from bwlm_jax.data import load_dataset
from bwlm_jax.evaluation.workdir_reports import report_workdir
from bwlm_jax.run.training_run import train_and_evaluate
from bwlm_jax.workdir import run_config
from helpers import assert_trees_equal, cpu_model, tiny_config

PRE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'pre_redesign')


def _config(tfds_dir):
  """The config the workdirs were made with (make_pre_redesign_workdirs.py)."""
  config = tiny_config(tfds_dir)
  config.stages = 'naive,stage2'
  config.stage2.augment = False
  config.stage2.backbone = 'naive'
  config.keep_checkpoints = 1
  config.checkpoint_every_steps = 5
  return config


def test_a_finished_workdir_of_the_old_layout_is_reused_and_evaluates_to_its_own_numbers(tfds_dir, tmp_path, capsys):
  workdir = str(shutil.copytree(os.path.join(PRE, 'finished'), tmp_path / 'finished'))
  saved = json.load(open(os.path.join(workdir, 'results.json')))
  assert {'tuning', 'recipe'} <= set(json.load(open(os.path.join(workdir, 'config.json'))))  # the old config.json
  results = train_and_evaluate(_config(tfds_dir), workdir)
  out = capsys.readouterr().out
  assert 'naive: finished earlier' in out and 'stage2: finished earlier' in out
  for stage in ('naive', 'stage2'):
    for split in ('test', 'val'):
      assert results['models'][stage][split]['all'] == saved['models'][stage][split]['all'], (stage, split)
  config = run_config(workdir)  # evaluate.py's path: the run's own config, old fields and all
  summary = report_workdir(config, workdir, load_dataset(config.data), ['naive', 'stage2'])
  for stage in ('naive', 'stage2'):
    assert summary[stage]['splits']['test']['report']['all'] == saved['models'][stage]['test']['all']


def test_a_half_finished_workdir_of_the_old_layout_resumes_as_an_uninterrupted_run(tfds_dir, tmp_path, capsys):
  workdir = str(shutil.copytree(os.path.join(PRE, 'interrupted'), tmp_path / 'interrupted'))
  resumed = train_and_evaluate(_config(tfds_dir), workdir)
  assert 'naive: resuming at step 5' in capsys.readouterr().out
  fresh = train_and_evaluate(_config(tfds_dir), str(tmp_path / 'fresh'))
  # Bit for bit where the fixture was made (its CPU model recorded beside it), to float rounding elsewhere.
  with open(os.path.join(PRE, 'cpu.txt')) as file:
    same_cpu = file.read().strip() == cpu_model()
  for stage in ('naive', 'stage2'):
    a = checkpoints.read_latest(checkpoints.stage_directory(workdir, stage))[0]
    b = checkpoints.read_latest(checkpoints.stage_directory(str(tmp_path / 'fresh'), stage))[0]
    if same_cpu:
      assert_trees_equal(a['params'], b['params'])
      assert resumed['models'][stage]['test'] == fresh['models'][stage]['test']
    else:  # the fixture's first 5 steps ran on another CPU: their rounding differs from this one's
      for x, y in zip(jax.tree.leaves(a['params']), jax.tree.leaves(b['params']), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3, atol=1e-4)
      assert abs(resumed['models'][stage]['test']['all'] - fresh['models'][stage]['test']['all']) <= 0.01
