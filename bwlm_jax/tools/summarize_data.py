"""Print a dataset's long-tail summary: totals, shot groups, Data Balanced Review sizes.

  python launch/summarize_data.py --config=configs/quickstart.py
  python launch/summarize_data.py --config=configs/cifar100_lt.py:100 --profile_only
"""

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from bwlm_jax.runtime import cli, process_setup
from bwlm_jax.data import long_tail_counts, load_dataset
from bwlm_jax.data.summary import count_summary, eval_split_lines, format_summary

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.DEFINE_bool('profile_only', False, 'Use the long-tail profile counts (CIFAR: 500 or 5000 per '
                  'class) instead of loading the data; works offline.')
_PROFILE_MAX = {'cifar10': (10, 5000), 'cifar100': (100, 500)}


def main(argv):
  cli.no_arguments(argv)
  cfg = _CONFIG.value.data
  if flags.FLAGS.profile_only:
    if cfg.name not in _PROFILE_MAX:
      raise app.UsageError(f'--profile_only knows CIFAR profiles only, not {cfg.name!r}.')
    num_classes, max_count = _PROFILE_MAX[cfg.name]
    counts = long_tail_counts(num_classes, cfg.max_count or max_count, cfg.imbalance_factor)
    # The validation split is carved from the images the profile leaves unused (all of them are in train).
    val = np.minimum(max_count - counts, cfg.val_per_class)
    line = (f'val: {val.sum():,} images ({val.min()}-{val.max()} per class), drawn from the training images '
            f'the long tail leaves unused; {(val < cfg.val_per_class).sum()} classes get fewer than {cfg.val_per_class}')
    print(format_summary(f'{cfg.name}-LT (profile)', count_summary(counts), [line]))
    return
  process_setup.quiet_library_logs()
  dataset = load_dataset(cfg)
  print(format_summary(dataset.name, count_summary(dataset.train_counts), eval_split_lines(dataset, cfg.val_per_class)))
  from bwlm_jax.fingerprint import construction, training_set_hash
  print(f'  training set sha256 (image indices and labels): {training_set_hash(dataset)}')
  print(f'  construction: {construction(cfg)}')

