"""One code path for 1..N devices: a 2-device CPU run matches the 1-device run; bad device setups fail clearly."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bwlm_jax.checkpoints import read_latest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = '''
import sys
sys.path.insert(0, 'tests')
import jax
from helpers import tiny_config
from bwlm_jax.run.training_run import train_and_evaluate
config = tiny_config(sys.argv[2], epochs=1)
config.stages = 'stage1,stage2'
config.stage1.learning_rate = 0.01  # small steps keep float reassociation differences small
print('devices', jax.device_count())
train_and_evaluate(config, sys.argv[1])
'''


def _train(workdir, tfds_dir, devices):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  result = subprocess.run([sys.executable, '-c', TRAIN, workdir, tfds_dir], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'devices {devices}' in result.stdout
  state, _ = read_latest(os.path.join(workdir, 'checkpoints', 'stage2'))
  return state


def test_two_devices_match_one(tfds_dir, tmp_path):
  one = _train(str(tmp_path / 'one'), tfds_dir, 1)
  two = _train(str(tmp_path / 'two'), tfds_dir, 2)
  for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(two), strict=True):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-3, atol=1e-4)


def test_batch_must_divide_over_devices(monkeypatch):
  from bwlm_jax.config import base_config
  from bwlm_jax.config import validate_config
  monkeypatch.setattr(jax, 'device_count', lambda: 3)
  config = base_config()
  with pytest.raises(ValueError, match='batch_size=64 must be a positive multiple of the 3 devices'):
    validate_config(config)
