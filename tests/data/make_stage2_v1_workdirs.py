"""Makes `stage2_v1/`: workdirs written by the single-head stage 2 that bwlm-jax had before every stage 2
became a grid of heads (commit 23d1aac), so that the tests can check that such workdirs still evaluate
and resume, and that a grid of one head gives the old single head's result.

  git worktree add /tmp/v1 23d1aac && PYTHONPATH=/tmp/v1 python tests/data/make_stage2_v1_workdirs.py OUT

OUT/finished: stage 1 and stage 2 (select=none, cached features) of the tests' tiny run, finished.
OUT/interrupted: stage 2 alone on OUT/finished's stage 1, stopped after 2 of its 12 steps.
"""

import os
import shutil
import sys
import tempfile

import tensorflow_datasets as tfds

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from helpers import tiny_config  # noqa: E402

from bwlm_jax.data import embedded_tfds  # noqa: E402,F401  (registers the builder)
from bwlm_jax.errors import Interrupted  # noqa: E402
from bwlm_jax.pipeline import train_and_evaluate  # noqa: E402


def v1_config(data_dir: str):
  config = tiny_config(data_dir)
  config.stages = 'stage1,stage2'
  config.stage2.augment = False
  config.keep_checkpoints = 1
  return config


def main(out: str) -> None:
  data_dir = tempfile.mkdtemp()
  tfds.builder('bwlm_shapes', data_dir=data_dir).download_and_prepare()
  finished = os.path.join(out, 'finished')
  train_and_evaluate(v1_config(data_dir), finished)
  config = v1_config(data_dir)
  config.stages = 'stage2'
  config.stage1_checkpoint = finished
  try:
    train_and_evaluate(config, os.path.join(out, 'interrupted'), stop_after_steps=2)
  except Interrupted as stop:
    print(stop)
  for workdir in (finished, os.path.join(out, 'interrupted')):
    shutil.rmtree(os.path.join(workdir, 'tensorboard'), ignore_errors=True)
  shutil.rmtree(data_dir)


if __name__ == '__main__':
  main(sys.argv[1])
