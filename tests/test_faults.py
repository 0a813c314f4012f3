"""Faults injected into runs: a diverging loss, damaged checkpoints, a full disk, reruns that must keep
finished results, bad input at the command line (one `error:` line, before any training)."""

import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from bwlm_jax.checkpoints import finished_meta, read_latest, stage_directory
from bwlm_jax.runtime.errors import MissingFileError, RunError, UsageError
from bwlm_jax.runtime.files import write_json_keeping_earlier, write_text_keeping_earlier
from bwlm_jax.run.training_run import train_and_evaluate
from helpers import assert_trees_equal, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _naive_config(tfds_dir):
  config = tiny_config(tfds_dir, epochs=1)  # 10 steps of batch 32
  config.stages = 'naive'
  config.checkpoint_every_steps = 3
  config.log_every_steps = 2
  return config


def _finished_state(workdir, stage='naive'):
  state, meta = read_latest(stage_directory(workdir, stage))
  assert meta['finished']
  return jax.device_get(state['params'])


@pytest.fixture(scope='module')
def naive_run(tfds_dir, tmp_path_factory):
  """A finished naive run (checkpoints at steps 9 and 10) and its final parameters; tests copy it."""
  workdir = str(tmp_path_factory.mktemp('naive_run'))
  results = train_and_evaluate(_naive_config(tfds_dir), workdir)
  return workdir, _finished_state(workdir), results


def test_a_diverging_loss_stops_the_stage_and_keeps_the_last_good_checkpoint(tfds_dir, tmp_path):
  config = _naive_config(tfds_dir)
  config.naive.learning_rate = 1e6
  config.checkpoint_every_steps = 1
  with pytest.raises(RunError, match=r'naive: the loss became non-finite \(NaN or Inf\) at step \d+ of 10.*'
                                     r'naive.learning_rate=1e\+06 is too high') as stop:
    train_and_evaluate(config, str(tmp_path))
  bad_step = int(str(stop.value).split(' at step ')[1].split()[0])
  restored = read_latest(stage_directory(str(tmp_path), 'naive'))
  if restored is not None:  # a checkpoint is saved only while everything is finite
    state, meta = restored
    assert meta['step'] < bad_step and not meta['finished']
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state['params']))
  assert not os.path.exists(tmp_path / 'results.json')


@pytest.mark.parametrize('damage', ['truncated files', 'meta deleted', 'empty step directory'])
def test_a_damaged_newest_checkpoint_falls_back_and_resumes_like_an_uninterrupted_run(naive_run, tfds_dir, tmp_path,
                                                                                      damage, capsys):
  source, reference, _ = naive_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(source, workdir)
  newest = os.path.join(stage_directory(workdir, 'naive'), '10')
  if damage == 'truncated files':
    for path in glob.glob(os.path.join(newest, '**'), recursive=True):
      if os.path.isfile(path):
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 2)
  elif damage == 'meta deleted':
    shutil.rmtree(os.path.join(newest, 'meta'))
  else:
    shutil.rmtree(newest)
    os.makedirs(newest)
  os.remove(os.path.join(workdir, 'results.json'))
  train_and_evaluate(_naive_config(tfds_dir), workdir)
  out = capsys.readouterr().out
  assert 'naive: newest checkpoint unreadable, step 10' in out and 'naive: resuming at step 9 of 10.' in out
  assert os.listdir(stage_directory(workdir, 'naive') + '.damaged') == ['10']
  assert_trees_equal(_finished_state(workdir), reference)


def test_no_readable_checkpoint_is_one_clear_error(naive_run, tfds_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(naive_run[0], workdir)
  for step in ('9', '10'):
    shutil.rmtree(os.path.join(stage_directory(workdir, 'naive'), step, 'meta'))
  with pytest.raises(RunError, match=r'no checkpoint in .*naive can be read: step 10 .*; step 9 .*Delete that '
                                     'directory'):
    train_and_evaluate(_naive_config(tfds_dir), workdir)
  assert sorted(os.listdir(stage_directory(workdir, 'naive'))) == ['10', '9']  # nothing moved or deleted


def test_a_failed_save_is_one_line_and_keeps_the_earlier_checkpoints(naive_run, tfds_dir, tmp_path, monkeypatch):
  import orbax.checkpoint as ocp
  workdir = str(tmp_path / 'run')
  config = _naive_config(tfds_dir)
  config.naive.epochs = 2
  calls = []
  real_save = ocp.CheckpointManager.save

  def save_until_the_disk_is_full(self, step, *args, **kwargs):
    calls.append(step)
    if len(calls) > 2:
      raise OSError(28, 'No space left on device')
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', save_until_the_disk_is_full)
  with pytest.raises(RunError, match=r'saving a checkpoint in .*naive failed \(OSError: \[Errno 28\] No space left '
                                     r'on device\); the checkpoints saved before are kept'):
    train_and_evaluate(config, workdir)
  assert sorted(int(s) for s in os.listdir(stage_directory(workdir, 'naive')) if s.isdigit()) == [3, 6]


@pytest.fixture(scope='module')
def three_stage_run(tfds_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('three_stages'))
  config = tiny_config(tfds_dir, epochs=1)
  return workdir, train_and_evaluate(config, workdir)


def _json(path):
  with open(path) as f:
    return json.load(f)


def test_a_rerun_of_fewer_stages_keeps_the_other_models_results(three_stage_run, tfds_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(three_stage_run[0], workdir)
  before = _json(os.path.join(workdir, 'results.json'))
  assert list(before['models']) == ['naive', 'stage1', 'stage2']
  # What ablation.py's base run, a naive-only rerun and a rerun of the same command do.
  for stages in ('naive,stage1', 'naive', 'naive,stage1,stage2'):
    config = tiny_config(tfds_dir, epochs=1)
    config.stages = stages
    train_and_evaluate(config, workdir)
    after = _json(os.path.join(workdir, 'results.json'))
    assert after['models'] == before['models'] and after['weight_norms'] == before['weight_norms']
  assert sorted(os.listdir(workdir)) == sorted(os.listdir(three_stage_run[0]))  # no extra results file


def test_a_changed_report_keeps_the_earlier_one_and_the_same_one_is_not_copied(tmp_path):
  table = str(tmp_path / 'stage2_selection.md')
  write_text_keeping_earlier(table, 'first\n')
  write_text_keeping_earlier(table, 'first\n')
  assert sorted(os.listdir(tmp_path)) == ['stage2_selection.md']
  write_text_keeping_earlier(table, 'second\n')
  assert open(table).read() == 'second\n' and open(str(tmp_path / 'stage2_selection-2.md')).read() == 'first\n'
  results = str(tmp_path / 'results.json')
  write_json_keeping_earlier(results, {'all': 0.5})
  write_json_keeping_earlier(results, {'all': 0.5})
  write_json_keeping_earlier(results, {'all': 0.6})
  assert _json(results) == {'all': 0.6} and _json(str(tmp_path / 'results-2.json')) == {'all': 0.5}
  assert not os.path.exists(str(tmp_path / 'results-3.json'))


def test_results_hold_calibration_and_temperature_scaling_fitted_on_val(three_stage_run):
  _, results = three_stage_run
  for model, splits in results['models'].items():
    val = splits['val']
    scaled = val['temperature_scaled']
    assert scaled['fitted_on'] == 'val' and scaled['temperature'] > 0
    assert scaled['nll'] <= val['calibration']['nll'] + 1e-9, model  # fitted to minimise the val NLL
    assert splits['test']['temperature_scaled']['temperature'] == scaled['temperature']
    assert sum(b['count'] for b in splits['test']['calibration']['bins']) == splits['test']['num_examples']
  fingerprint = results['fingerprint']
  assert fingerprint['parameters'] == 75_940 and fingerprint['backbone'] == 'resnet8'  # ResNet-8, 20 classes
  assert sum(fingerprint['train_counts']) == 311 and len(fingerprint['train_indices_sha256']) == 64
  assert fingerprint['global_batch'] == 32 and fingerprint['devices']['count'] == jax.device_count()
  assert finished_meta(stage_directory(three_stage_run[0], 'naive'))['fingerprint'] == fingerprint


def test_a_finished_stage_is_never_relabelled_by_a_changed_config(three_stage_run, tfds_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(three_stage_run[0], workdir)
  before = {name: _json(os.path.join(workdir, name)) for name in ('config.json', 'results.json')}
  config = tiny_config(tfds_dir, epochs=1)
  config.stage2.alpha = 0.5
  with pytest.raises(UsageError, match='resuming it would mix results.*stage2.alpha: 0.1 -> 0.5'):
    train_and_evaluate(config, workdir)
  config.allow_config_change = True
  with pytest.raises(UsageError, match=r'stage2: the finished checkpoint in .*stage2 was trained with another config '
                                       r'\(stage2.alpha: 0.1 -> 0.5\); it is kept as it is and not relabelled'):
    train_and_evaluate(config, workdir)
  for name, content in before.items():
    assert _json(os.path.join(workdir, name)) == content
  config.stages = 'naive,stage1'  # the changed alpha is no input of these stages: they are reused
  train_and_evaluate(config, workdir)
  after = _json(os.path.join(workdir, 'results.json'))
  assert list(after['models']) == ['naive', 'stage1']  # stage 2's result is not carried under alpha 0.5 ...
  assert after['models'] == {k: before['results.json']['models'][k] for k in ('naive', 'stage1')}
  assert _json(os.path.join(workdir, 'results-2.json')) == before['results.json']  # ... but kept, with its config
  assert _json(os.path.join(workdir, 'config-2.json')) == before['config.json']


def test_a_failed_start_writes_nothing_in_the_workdir(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir, epochs=1)
  config.data.name, config.data.folder = 'folder', str(tmp_path / 'nonexistent')
  workdir = tmp_path / 'run'
  with pytest.raises(MissingFileError, match='nonexistent/train.* does not exist'):
    train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


@pytest.mark.parametrize('field,value,message', [
    ('checkpoint_every_steps', 0, 'checkpoint_every_steps must be a whole number >= 1, got 0'),
    ('log_every_steps', 0, 'log_every_steps must be a whole number >= 1, got 0'),
    ('keep_checkpoints', 0, r'keep_checkpoints must be a whole number >= 1, got 0 \(the finished checkpoint'),
])
def test_run_fields_that_would_fail_mid_run_are_refused_first(tfds_dir, tmp_path, field, value, message):
  config = tiny_config(tfds_dir)
  config[field] = value
  with pytest.raises(UsageError, match=message):
    train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('make,message', [
    (lambda p: '', 'the workdir is empty'),
    (lambda p: (p / 'file').write_text('x') and str(p / 'file'), 'is a file, not a directory'),
    (lambda p: (p / 'file').write_text('x') and str(p / 'file' / 'run'), 'cannot be created: .* is a file'),
])
def test_unusable_workdirs(tmp_path, make, message):
  from bwlm_jax.workdir import check_workdir_path
  with pytest.raises(UsageError, match=message):
    check_workdir_path(make(tmp_path))


def test_a_diverged_head_is_never_chosen():
  from bwlm_jax import selection
  assert selection.choose([0.5, None, float('nan'), 0.7, float('inf')]) == 3
  with pytest.raises(RunError, match='every candidate diverged'):
    selection.choose([None, float('nan')])


def test_images_in_subfolders_of_a_class_are_read(tmp_path):
  from PIL import Image
  from bwlm_jax.data.folder_source import list_split
  for path in ('train/dog/a.png', 'train/dog/batch2/b.png', 'train/dog/batch2/deeper/c.png', 'train/cat/d.png'):
    os.makedirs(os.path.dirname(tmp_path / path), exist_ok=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / path)
  names, paths, labels = list_split(str(tmp_path), 'train')
  assert names == ('cat', 'dog')
  assert [os.path.relpath(p, tmp_path) for p in paths] == [
      'train/cat/d.png', 'train/dog/a.png', 'train/dog/batch2/b.png', 'train/dog/batch2/deeper/c.png']
  assert labels.tolist() == [0, 1, 1, 1]


def test_a_truncated_jpeg_is_named_before_streaming(tmp_path):
  from PIL import Image
  from bwlm_jax.data.folder_source import stream_split
  good, cut, padded = (str(tmp_path / f'{n}.jpg') for n in ('good', 'cut', 'padded'))
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(good, quality=90)
  data = open(good, 'rb').read()
  open(cut, 'wb').write(data[:len(data) // 2])
  open(padded, 'wb').write(data + b'\0' * 100)  # bytes after the end marker: still a complete image
  stream_split([good, padded], np.zeros(2, np.int64))
  with pytest.raises(UsageError, match=f"cannot read image '{cut}': image file is truncated"):
    stream_split([good, cut], np.zeros(2, np.int64))


def test_evaluate_reads_the_runs_own_config_and_refuses_a_mismatch(naive_run, tfds_dir, tmp_path, capsys):
  from bwlm_jax.evaluation.workdir_reports import evaluable_stages
  from bwlm_jax.workdir import run_config
  workdir = naive_run[0]
  config = run_config(workdir)
  assert config.data.imbalance_factor == 10.0 and config.data.max_count == 40 and config.model.name == 'resnet8'
  given = _naive_config(tfds_dir)
  given.eval_batch_size = 100  # changes no result: allowed, and used
  assert run_config(workdir, given).eval_batch_size == 100
  given.data.imbalance_factor = 50.0
  with pytest.raises(UsageError, match=r'--config does not match the run .*data.imbalance_factor: 10.0 -> 50.0'):
    run_config(workdir, given)
  with pytest.raises(UsageError, match='holds no training run'):
    run_config(str(tmp_path / 'mistyped'))
  assert not (tmp_path / 'mistyped').exists()
  assert evaluable_stages(workdir, ['naive', 'stage1']) == ['naive']
  assert 'stage1: not finished' in capsys.readouterr().out


def _cli(script, *args):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'launch', script), *args], capture_output=True, text=True,
                        cwd=ROOT, timeout=300)


@pytest.mark.parametrize('script,args,status,message', [
    ('train.py', ['--config=configs/quickstart.py', '--workdir=W', '--config.stage2.lossx=1'], 2,
     '--config.stage2.lossx=1: no config field \'lossx\'. Did you mean "loss" instead of "lossx"?'),
    ('train.py', ['--config=configs/nope.py', '--workdir=W'], 2, "--config: config file 'configs/nope.py' does not "
     'exist.'),
    ('train.py', ['--config=configs/quickstart.py', '--workdir=W', '--config.data.image_size=0'], 2,
     'data.image_size must be at least 8 pixels, got 0.'),
    ('sweep.py', ['--config=configs/quickstart.py', '--workdir=W', '--alphas=0.1,high'], 2,
     "--alphas=0.1,high: 'high' is not a number; expected e.g. --alphas=0,0.1,0.5."),
    ('predict.py', ['--workdir=W', '--images=x.png', '--stage=stage3'], 2,
     '--stage=stage3: expected one of naive, stage1, stage2, best, best:STUDY.'),
    ('evaluate.py', ['--workdir=W'], 2, "'W' holds no training run (no config.json)"),
])
def test_user_errors_are_one_line_without_traceback(script, args, status, message, tmp_path):
  args = [a.replace('=W', f'={tmp_path / "W"}') for a in args]
  result = _cli(script, *args)
  assert result.returncode == status, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr[-2000:]
  assert message.replace("'W'", repr(str(tmp_path / 'W'))) in lines[0]
  assert not (tmp_path / 'W').exists()


def test_verbose_shows_the_traceback():
  result = _cli('train.py', '--config=configs/quickstart.py', '--workdir=/nonexistent/W', '--config.stage2.lossx=1',
                '--verbose')
  assert result.returncode != 0 and 'Traceback (most recent call last)' in result.stderr


def test_predict_refuses_more_classes_than_the_model_has(naive_run, tmp_path):
  from PIL import Image
  from bwlm_jax.predict import predict_files
  image = str(tmp_path / 'x.png')
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
  with pytest.raises(UsageError, match=r'--top_k=21 is more than the 20 classes of the naive model'):
    predict_files(naive_run[0], 'naive', [image], top_k=21)


def test_sigterm_stops_k_heads_with_a_checkpoint_and_a_rerun_resumes(naive_run, tfds_dir, tmp_path, monkeypatch,
                                                                      capsys):
  import signal
  from bwlm_jax.runtime.errors import Interrupted
  from bwlm_jax.run.training_run import train_rows_and_evaluate
  from bwlm_jax.train.interval_metrics import IntervalMetrics
  config = _naive_config(tfds_dir)
  config.stages, config.stage2.backbone, config.stage2.augment = 'stage2', 'naive', False
  config.stage1_checkpoint = naive_run[0]
  from bwlm_jax.head_setting import HeadSetting
  settings = [HeadSetting.from_config(config.stage2).replace(learning_rate=lr, epochs=1) for lr in (0.1, 0.3)]
  real_add, calls = IntervalMetrics.add, []

  def add_then_terminate(self, *args):
    real_add(self, *args)
    calls.append(1)
    if len(calls) == 2:
      os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler's preemption would

  monkeypatch.setattr(IntervalMetrics, 'add', add_then_terminate)
  rows = {'lr=0.1': settings[:1], 'lr=0.3': settings[1:]}
  with pytest.raises(Interrupted, match='stage2: stopped after step 2 on SIGTERM'):
    train_rows_and_evaluate(config, str(tmp_path), rows, None)
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the run
  monkeypatch.setattr(IntervalMetrics, 'add', real_add)
  results = train_rows_and_evaluate(config, str(tmp_path), rows, None)
  assert 'stage2_grid_naive: resuming at step 2 of' in capsys.readouterr().out
  assert [r['source']['head'] for r in results.values()] == [0, 1]
  assert all(r['models']['stage2']['test']['all'] > 0 for r in results.values())


def test_of_k_heads_only_all_diverging_stops_and_the_step_is_exact(capsys):
  import jax.numpy as jnp
  from bwlm_jax.train.interval_metrics import IntervalMetrics, NonFiniteWatch

  class Writer:
    def write_scalars(self, step, values):
      self.values = values

  class Progress:
    def set_postfix(self, **kwargs):
      pass

  writer = Writer()
  interval = IntervalMetrics(writer, 4, Progress(), NonFiniteWatch('stage2', 'lower it.'), total_steps=40)
  for loss in ([1.0, 1.0], [1.0, np.nan], [1.0, np.inf]):  # steps 11, 12, 13
    interval.add({'loss': jnp.asarray(loss)}, batch_size=8)
  interval.close_interval(13)
  interval.flush()
  assert 'stage2: heads [1] diverged (non-finite loss from step 12)' in capsys.readouterr().out
  assert writer.values['loss'] == 1.0  # the mean of the finite heads
  interval.add({'loss': jnp.asarray([np.nan, np.nan])}, batch_size=8)  # step 14
  with pytest.raises(RunError, match='stage2: the loss became non-finite .* at step 14 of 40.*lower it.'):
    interval.check_open_interval(14)
