"""Makes `pre_redesign/`: workdirs written by bwlm-jax before the redesign of issue 45 (commit d11cc2a: the
flat package, `config.tuning` and `config.recipe` in every run's config.json), so that the tests can check
that the new code evaluates, reuses and resumes them.

  git worktree add /tmp/old d11cc2a && PYTHONPATH=/tmp/old python tests/data/make_pre_redesign_workdirs.py OUT

OUT/finished: naive and stage 2 (select=none, cached features, on the naive backbone) of the tests' tiny run.
OUT/interrupted: the same run stopped after 5 of naive's 20 steps.
OUT/cpu.txt: the CPU that computed them (vendor / family / model / name): a resume is bit-equal to an uninterrupted
run on that CPU only.
"""

import os
import shutil
import sys
import tempfile

import tensorflow_datasets as tfds

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from helpers import cpu_model, tiny_config  # noqa: E402

from bwlm_jax.data import embedded_tfds  # noqa: E402,F401  (registers the builder)
from bwlm_jax.errors import Interrupted  # noqa: E402
from bwlm_jax.pipeline import train_and_evaluate  # noqa: E402


def pre_redesign_config(data_dir: str):
  config = tiny_config(data_dir)
  config.stages = 'naive,stage2'
  config.stage2.augment = False
  config.stage2.backbone = 'naive'
  config.keep_checkpoints = 1
  config.checkpoint_every_steps = 5
  return config


def main(out: str) -> None:
  data_dir = tempfile.mkdtemp()
  tfds.builder('bwlm_shapes', data_dir=data_dir).download_and_prepare()
  train_and_evaluate(pre_redesign_config(data_dir), os.path.join(out, 'finished'))
  try:
    train_and_evaluate(pre_redesign_config(data_dir), os.path.join(out, 'interrupted'), stop_after_steps=5)
  except Interrupted as stop:
    print(stop)
  for workdir in ('finished', 'interrupted'):
    shutil.rmtree(os.path.join(out, workdir, 'tensorboard'), ignore_errors=True)
  with open(os.path.join(out, 'cpu.txt'), 'w') as file:
    file.write(cpu_model() + '\n')
  shutil.rmtree(data_dir)


if __name__ == '__main__':
  main(sys.argv[1])
