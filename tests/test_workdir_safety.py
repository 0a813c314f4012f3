"""One writer per workdir, damaged run files, untrusted images, and a stop at any moment (exit 143, resumable)."""

import errno
import json
import os
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from bwlm_jax.runtime import workdir_lock
from bwlm_jax.checkpoints import StageCheckpoints, stage_directory
from bwlm_jax.data import images
from bwlm_jax.runtime.errors import Interrupted, RunError, UsageError
from bwlm_jax.run.training_run import train_and_evaluate
from helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(script, *args, **kwargs):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'launch', script), *args], capture_output=True,
                        text=True, cwd=ROOT, timeout=600, **kwargs)


def _quickstart_args(workdir, tfds_dir, epochs):
  return [f'--config={ROOT}/configs/quickstart.py', f'--workdir={workdir}', f'--config.data.data_dir={tfds_dir}',
          '--config.data.max_count=40', '--config.data.imbalance_factor=10', '--config.stages=naive',
          f'--config.naive.epochs={epochs}', '--config.batch_size=32', '--config.log_every_steps=2',
          '--config.eval_every_epochs=0']


def _one_error_line(result, status):
  lines = result.stderr.strip().splitlines()
  assert result.returncode == status, result.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr[-3000:]
  return lines[0]


# ---------------------------------------------------------------- one writer per workdir

def test_a_second_writer_is_refused_and_a_killed_writers_lock_does_not_block_the_next(tfds_dir, tmp_path):
  args = _quickstart_args(tmp_path, tfds_dir, 30)
  first = subprocess.Popen([sys.executable, os.path.join(ROOT, 'launch', 'train.py'), *args], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics, deadline = tmp_path / 'metrics.jsonl', time.time() + 300
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().count('\n') >= 2):
    time.sleep(0.5)
  second = _launch('train.py', *args)
  line = _one_error_line(second, 2)
  assert f'workdir {tmp_path} is in use by process {first.pid} on host {socket.gethostname()} since ' in line
  assert 'train.py' in line and 'one run writes into a workdir at a time' in line
  first.kill()  # kill -9: the lock stays behind
  first.communicate(timeout=60)
  assert json.load(open(tmp_path / workdir_lock.LOCK_NAME))['pid'] == first.pid
  third = _launch('train.py', *args)
  assert third.returncode == 0, third.stderr[-3000:]
  assert f'a stale lock was left by process {first.pid} on host {socket.gethostname()}' in third.stdout
  assert 'no longer runs' in third.stdout and 'this run takes the workdir' in third.stdout
  assert not (tmp_path / workdir_lock.LOCK_NAME).exists() and (tmp_path / 'results.json').exists()


def _write_lock(workdir, **owner):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, workdir_lock.LOCK_NAME), 'w') as f:
    json.dump({'since': '2026-11-30T08:00:00+00:00', 'command': 'train.py --workdir=W', **owner}, f)


def test_stale_foreign_and_unreadable_locks(tmp_path, capsys):
  gone = subprocess.Popen(['true'])
  gone.wait()
  here = socket.gethostname()
  _write_lock(tmp_path, host=here, pid=gone.pid)
  path = workdir_lock.acquire(str(tmp_path))
  assert f'process {gone.pid} no longer runs' in capsys.readouterr().out
  assert os.path.exists(f'{path}.stale-{gone.pid}') and json.load(open(path))['pid'] == os.getpid()
  assert workdir_lock.acquire(str(tmp_path)) == path  # the same process again (nested): no error
  workdir_lock.release(path)
  assert os.path.exists(path)
  workdir_lock.release(path)
  assert not os.path.exists(path)
  _write_lock(tmp_path, host=here, pid=os.getpid(), process_start='1')  # a reused process id
  workdir_lock.release(workdir_lock.acquire(str(tmp_path)))
  assert f'process id {os.getpid()} now belongs to another process' in capsys.readouterr().out
  _write_lock(tmp_path, host='node-17', pid=4242)
  with pytest.raises(UsageError, match=rf'in use by process 4242 on host node-17 since 2026-11-30T08:00:00\+00:00 '
                                       rf'\(train.py --workdir=W\).*\(a lost node\), delete {re.escape(path)} and rerun'):
    workdir_lock.acquire(str(tmp_path))
  with open(path, 'w') as f:
    f.write('{"host": "nod')  # a damaged lock file
  with pytest.raises(UsageError, match='names no owner .* delete that file'):
    workdir_lock.acquire(str(tmp_path))
  os.remove(path)
  evaluation = workdir_lock.acquire(str(tmp_path / 'evaluation'))  # evaluate's lock does not block training's
  workdir_lock.release(workdir_lock.acquire(str(tmp_path)))
  workdir_lock.release(evaluation)


def test_a_refused_run_leaves_no_workdir_behind(tmp_path):
  new = tmp_path / 'new'
  with workdir_lock.holding(str(new)):
    assert (new / workdir_lock.LOCK_NAME).exists()
  assert not new.exists()


# ---------------------------------------------------------------- files read back

@pytest.mark.parametrize('text,why', [('{"data": {"name": "embed', 'cannot be read: Unterminated string'),
                                      ('[1, 2]', 'is damaged: it holds a JSON list, not a JSON object'),
                                      (b'\xff\xfe\x00', 'cannot be read')])
def test_a_damaged_config_json_is_one_line_for_train_and_evaluate(tmp_path, text, why):
  path = tmp_path / 'config.json'
  path.write_bytes(text if isinstance(text, bytes) else text.encode())
  for script, args in (('train.py', [f'--config={ROOT}/configs/quickstart.py']), ('evaluate.py', [])):
    line = _one_error_line(_launch(script, f'--workdir={tmp_path}', *args), 2)
    assert f'{path} (the config of the workdir\'s run) {why}' in line and 'move it away and rerun' in line
  assert path.read_bytes() == (text if isinstance(text, bytes) else text.encode())  # nothing deleted


def test_damaged_results_best_and_list_files_are_named(tmp_path):
  from bwlm_jax.config import base_config
  from bwlm_jax.data.list_source import read_list
  from bwlm_jax.evaluation.results import with_earlier_results
  from bwlm_jax.predict import best_model
  (tmp_path / 'results.json').write_text('{"models": ')
  with pytest.raises(UsageError, match=r'results.json \(the results of earlier runs in this workdir\) cannot be '
                                       r'read: .* written anew'):
    with_earlier_results(base_config(), str(tmp_path), {'models': {}})
  (tmp_path / 'ablation').mkdir()
  (tmp_path / 'ablation' / 'best.json').write_text('"stage2"')
  with pytest.raises(UsageError, match='best.json .* holds a JSON str, not a JSON object. Rerun the study on the workdir'):
    best_model(str(tmp_path))
  (tmp_path / 'train.txt').write_bytes(b'train/a.jpg 0\n\xff\xd8\xff binary\n')
  with pytest.raises(UsageError, match="list file '.*train.txt' cannot be read as text"):
    read_list(str(tmp_path / 'train.txt'), str(tmp_path))


# ---------------------------------------------------------------- untrusted images

def _bomb_png(path, side=20_000):
  """A 1-bit grey PNG of side x side pixels (400 megapixels for 20,000) that takes ~60 KB on disk."""
  def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
  compressor, row, parts = zlib.compressobj(9), b'\0' * (1 + side // 8), []
  for _ in range(side):
    parts.append(compressor.compress(row))
  parts.append(compressor.flush())
  header = struct.pack('>IIBBBBB', side, side, 1, 0, 0, 0, 0)
  with open(path, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', b''.join(parts)) + chunk(b'IEND', b''))
  return str(path)


def test_a_decompression_bomb_and_broken_files_are_refused_by_name(tmp_path):
  from bwlm_jax.data.folder_source import read_arrays, stream_split
  bomb = _bomb_png(tmp_path / 'bomb.png')
  assert os.path.getsize(bomb) < 500_000
  for read in (images.open_rgb, images.check_file, lambda p: read_arrays([p], np.zeros(1, np.int64), 32),
               lambda p: stream_split([p], np.zeros(1, np.int64))):
    with pytest.raises(UsageError, match=rf"image '{bomb}' has more pixels than the limit of 89,478,485 \(PIL: Image "
                                         r"size \(400000000 pixels\) exceeds .*refused, as a decompression bomb"):
      read(bomb)
  (tmp_path / 'text.png').write_text('not an image')
  with pytest.raises(UsageError, match="cannot read image '.*text.png': cannot identify image file"):
    images.open_rgb(str(tmp_path / 'text.png'))


def test_cmyk_16_bit_palette_and_grey_alpha_images_become_8_bit_rgb(tmp_path):
  cmyk = Image.new('CMYK', (4, 4), (0, 255, 255, 0))  # pure red
  grey16 = Image.fromarray(np.full((4, 4), 65535, np.uint16))  # white; PIL's own RGB conversion clips it
  palette = Image.new('P', (4, 4), 1)
  palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
  palette.info['transparency'] = 0
  grey_alpha = Image.new('LA', (4, 4), (128, 0))
  expected = {'cmyk.jpg': (255, 0, 0), 'grey16.png': (255, 255, 255), 'palette.png': (0, 0, 255),
              'grey_alpha.png': (128, 128, 128)}
  for (name, colour), image in zip(expected.items(), (cmyk, grey16, palette, grey_alpha)):
    image.save(tmp_path / name)
    rgb = images.open_rgb(str(tmp_path / name))
    assert rgb.mode == 'RGB' and np.abs(np.asarray(rgb, int)[0, 0] - colour).max() <= 2, (name, rgb.getpixel((0, 0)))


@pytest.fixture(scope='module')
def finished_naive(tfds_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('naive'))
  config = tiny_config(tfds_dir, epochs=1)
  config.stages = 'naive'
  train_and_evaluate(config, workdir)
  return workdir


def test_predict_reports_unreadable_images_by_name_and_predicts_the_rest(finished_naive, tmp_path):
  good = tmp_path / 'good.png'
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(good)
  bomb = _bomb_png(tmp_path / 'bomb.png')
  result = _launch('predict.py', f'--workdir={finished_naive}', f'--images={good},{bomb}', '--stage=naive',
                   f'--output={tmp_path / "preds.csv"}')
  assert result.returncode == 2, result.stderr[-3000:]
  assert f'{good}: ' in result.stdout and 'wrote' in result.stdout
  assert f'{bomb}: not predicted: image ' in result.stderr and '(400000000 pixels)' in result.stderr
  assert result.stderr.strip().splitlines()[-1] == ('error: 1 of 2 images could not be read (listed above, each with '
                                                    'the reason); the other 1 were predicted.')
  assert open(tmp_path / 'preds.csv').read().count('\n') == 2  # header and the good image


# ---------------------------------------------------------------- a stop at any moment

def _stop_config(tfds_dir):
  config = tiny_config(tfds_dir)
  config.stages = 'stage1,stage2'
  config.checkpoint_every_steps = 4
  return config


def _sigterm():
  os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler's preemption would


def test_sigterm_at_a_checkpoint_step_between_stages_and_in_evaluation_ends_in_143_and_resumes(tfds_dir, tmp_path,
                                                                                             monkeypatch):
  from bwlm_jax import features
  from bwlm_jax.run import training_run
  config = _stop_config(tfds_dir)
  reference = train_and_evaluate(config, str(tmp_path / 'reference'))
  workdir = str(tmp_path / 'run')
  real_save, real_stage2, real_features = StageCheckpoints.save, training_run.run_stage2, features.SplitFeatures.__call__

  def save_then_stop(self, step, state, meta):
    real_save(self, step, state, meta)
    if step == 4:
      _sigterm()  # lands while the periodic checkpoint of step 4 is written

  monkeypatch.setattr(StageCheckpoints, 'save', save_then_stop)
  with pytest.raises(Interrupted, match='stage1: stopped after step 4 on SIGTERM') as stop:
    train_and_evaluate(config, workdir)
  assert stop.value.exit_status == 143 and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  assert sorted(os.listdir(stage_directory(workdir, 'stage1'))) == ['4']
  monkeypatch.setattr(StageCheckpoints, 'save', real_save)
  monkeypatch.setattr(training_run, 'run_stage2', lambda *a, **k: (_sigterm(), real_stage2(*a, **k))[1])
  with pytest.raises(Interrupted, match='stopped on SIGTERM before anything unfinished was written'):
    train_and_evaluate(config, workdir)  # stage 1 resumes and finishes; the stop lands before stage 2
  monkeypatch.setattr(training_run, 'run_stage2', real_stage2)
  monkeypatch.setattr(features.SplitFeatures, '__call__', lambda *a: (_sigterm(), real_features(*a))[1])
  with pytest.raises(Interrupted):
    train_and_evaluate(config, workdir)  # stage 2 trains; the stop lands in the evaluation
  assert not os.path.exists(os.path.join(workdir, 'results.json'))
  monkeypatch.setattr(features.SplitFeatures, '__call__', real_features)
  resumed = train_and_evaluate(config, workdir)
  for stage in ('stage1', 'stage2'):
    assert resumed['models'][stage]['test']['per_class'] == reference['models'][stage]['test']['per_class']


@pytest.mark.parametrize('error,disk', [(OSError(errno.ENOSPC, 'No space left on device'), True),
                                        (PermissionError(errno.EACCES, 'Permission denied'), False)])
def test_a_failed_save_names_the_disk_only_when_it_is_the_cause(tmp_path, monkeypatch, error, disk):
  store = StageCheckpoints(str(tmp_path / 'checkpoints'), 2)

  def failing_save(*args, **kwargs):
    raise error

  monkeypatch.setattr(store.manager, 'save', failing_save)
  with pytest.raises(RunError, match='the checkpoints saved before are kept') as failure:
    store.save(1, {'x': np.zeros(2)}, {})
  assert ('free space' in str(failure.value)) == disk and ('permissions' in str(failure.value)) != disk
  store.close()


def test_a_save_past_the_file_size_limit_ends_with_the_error_line_last(tfds_dir, tmp_path):
  def limit_files():
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))  # a checkpoint of this model is larger

  result = _launch('train.py', *_quickstart_args(tmp_path, tfds_dir, 2), '--config.checkpoint_every_steps=3',
                   preexec_fn=limit_files)
  last = result.stderr.strip().splitlines()[-1]
  assert result.returncode == 1, result.stderr[-3000:]
  assert last.startswith('error: saving a checkpoint in ') and 'file-size limit (ulimit -f)' in last
  assert 'future.py' not in result.stderr  # the checkpoint library's thread tracebacks are not shown
  assert not (tmp_path / workdir_lock.LOCK_NAME).exists()


def test_a_stop_inside_the_checkpoint_reader_is_not_taken_for_a_damaged_checkpoint(tmp_path, monkeypatch):
  store = StageCheckpoints(str(tmp_path / 'checkpoints'), 2)
  store.save(3, {'x': np.arange(4.0)}, {'step': 3})
  store.close()
  store = StageCheckpoints(str(tmp_path / 'checkpoints'), 2)

  def stopped(*args):
    raise Interrupted('stopped on SIGTERM')  # what the SIGTERM handler raises wherever the reader is

  monkeypatch.setattr(store, '_restore', stopped)
  with pytest.raises(Interrupted):
    store.restore_latest()
  store.close()
  assert os.listdir(tmp_path / 'checkpoints') == ['3']  # not moved to checkpoints.damaged/


# ---------------------------------------------------------------- files that cannot be written

def test_an_unwritable_result_a_damaged_checkpoint_and_a_late_sigterm_are_one_line_each(tfds_dir, tmp_path):
  workdir = tmp_path / 'run'
  args = [*_quickstart_args(workdir, tfds_dir, 2), '--config.checkpoint_every_steps=3']
  assert _launch('train.py', *args).returncode == 0
  os.remove(workdir / 'results.json')
  (workdir / 'results.json.tmp').mkdir()  # any write the system refuses: a permission, a read-only mount
  result = _launch('train.py', *args)
  _one_error_line(result, 1)
  line = result.stderr.strip()
  assert line.startswith(f'error: writing {workdir / "results.json"} failed (IsADirectoryError: ') and \
      'nothing finished is lost' in line and 'free space' not in line
  assert 'naive: finished earlier' in result.stdout  # the finished checkpoint was reused, and is still there
  (workdir / 'results.json.tmp').rmdir()
  newest = os.path.join(stage_directory(str(workdir), 'naive'), max(os.listdir(stage_directory(str(workdir), 'naive')),
                                                                   key=int))
  for folder, _, names in os.walk(os.path.join(newest, 'state')):
    for name in names:
      if os.sep + 'd' == folder[-2:]:  # the array data, not the metadata: a crash mid-write
        with open(os.path.join(folder, name), 'r+b') as f:
          f.truncate(os.path.getsize(os.path.join(folder, name)) // 2)
  result = _launch('train.py', *args)
  assert result.returncode == 0 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert 'naive: newest checkpoint unreadable' in result.stdout and (workdir / 'results.json').exists()
  # A SIGTERM while the finished process shuts down: the project's own line and status 0.
  late = ("import atexit, os, runpy, signal, sys, time; "
          "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(5))); "
          f"sys.argv = [{os.path.join(ROOT, 'launch', 'train.py')!r}] + sys.argv[1:]; "
          "runpy.run_path(sys.argv[0], run_name='__main__')")
  result = subprocess.run([sys.executable, '-c', late, *args], capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == ('SIGTERM after the run finished: every result was written; '
                                                    'exiting with status 0.')


def test_a_figure_or_a_table_that_cannot_be_written_is_one_write_error(tmp_path):
  import matplotlib.pyplot as plt
  from bwlm_jax.runtime.errors import WriteError
  from bwlm_jax.evaluation import plots
  from bwlm_jax.runtime.files import write_json
  (tmp_path / 'curves.png').mkdir()
  figure = plt.figure()
  with pytest.raises(WriteError, match=r'writing .*curves.png failed \(IsADirectoryError: .*nothing finished is '
                                       r'lost. Check that folder'):
    plots.save(figure, str(tmp_path), 'curves')
  assert figure.number not in plt.get_fignums()  # the figure is closed all the same
  if os.geteuid() != 0:  # root writes into a read-only folder
    (tmp_path / 'locked').mkdir(mode=0o555)
    with pytest.raises(WriteError, match=r'writing .*table.json failed \(PermissionError: '):
      write_json(str(tmp_path / 'locked' / 'table.json'), {})
