"""The train CLI and the config files, as a user runs them."""

import json
import os
import subprocess
import sys

import pytest

from helpers import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('spec,name,imbalance,model', [
    ('configs/quickstart.py', 'embedded', 50.0, 'resnet8'),
    ('configs/cifar100_lt.py:200', 'cifar100', 200.0, 'resnet32'),
    ('configs/cifar10_lt.py:100', 'cifar10', 100.0, 'resnet32'),
    ('configs/imagenet_lt.py', 'imagenet_lt', None, 'resnext50'),
])
def test_config_files(spec, name, imbalance, model):
  config = load_config_file(spec)
  assert (config.data.name, config.data.imbalance_factor, config.model.name) == (name, imbalance, model)
  assert config.batch_size == 64 and config.stage2.loss == 'bfs' and config.stage2.alpha == 0.1


def _run(args, env_extra=None):
  env = dict(os.environ, **(env_extra or {}))
  return subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'train.py')] + args,
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_train_cli_runs_prints_the_table_and_resumes(tfds_dir, tmp_path):
  args = [f'--config={ROOT}/configs/quickstart.py', f'--workdir={tmp_path}',
          f'--config.data.data_dir={tfds_dir}', '--config.data.max_count=30', '--config.data.imbalance_factor=10', '--config.stages=naive',
          '--config.naive.epochs=1', '--config.batch_size=32']
  first = _run(args)
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'Many Medium    Few    All' in first.stdout
  results = json.load(open(tmp_path / 'results.json'))
  assert list(results['models']) == ['naive']
  second = _run(args)
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'naive: finished earlier' in second.stdout
  assert json.load(open(tmp_path / 'results.json'))['models'] == results['models']


def test_train_cli_rejects_a_mistyped_field(tmp_path):
  result = _run([f'--config={ROOT}/configs/quickstart.py', f'--workdir={tmp_path}', '--config.stage2.alphaa=0.3'])
  assert result.returncode != 0
  assert 'alphaa' in result.stderr


def test_train_cli_rejects_an_unknown_convolution_gradient_mode(tmp_path):
  result = _run([f'--config={ROOT}/configs/quickstart.py', f'--workdir={tmp_path}'],
                {'BWLM_CONV_WEIGHT_GRADIENT': 'fast'})
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: BWLM_CONV_WEIGHT_GRADIENT='fast': expected one of auto, xla, chunked.")
  assert 'Traceback' not in result.stderr and not os.listdir(tmp_path)


def test_sigterm_saves_a_checkpoint_and_a_rerun_resumes(tfds_dir, tmp_path):
  import signal
  import time
  args = [f'--config={ROOT}/configs/quickstart.py', f'--workdir={tmp_path}', f'--config.data.data_dir={tfds_dir}',
          '--config.data.max_count=40', '--config.data.imbalance_factor=10', '--config.stages=naive',
          '--config.naive.epochs=30', '--config.batch_size=32', '--config.log_every_steps=2',
          '--config.eval_every_epochs=0', '--config.checkpoint_every_steps=100000']
  process = subprocess.Popen([sys.executable, os.path.join(ROOT, 'launch', 'train.py')] + args, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = tmp_path / 'metrics.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('\n') >= 3):
    time.sleep(0.5)
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 143, stderr[-3000:]
  assert 'stopped after step' in stdout and 'on SIGTERM' in stdout
  steps = os.listdir(tmp_path / 'checkpoints' / 'naive')
  [saved] = [int(s) for s in steps if s.isdigit()]
  assert 0 < saved < 300  # saved mid-run although no periodic checkpoint was due
  resumed = _run(args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'naive: resuming at step {saved} of 300.' in resumed.stdout
