"""Evaluate every finished model of a workdir (naive, stage 1, stage 2) on the test (and val) split.

  python launch/evaluate.py --config=configs/quickstart.py --workdir=workdirs/quickstart

Writes WORKDIR/evaluation/<stage>/{split}.json, per_class_{split}.csv and confusion_{split}.csv:
top-1 and top-5, All / Many / Medium / Few, per-class accuracy, confusion matrix, classifier weight
norms; for the naive model also tau-normalisation and post-hoc logit adjustment.
"""

from absl import app, flags
from ml_collections import config_flags

from bwlm_jax import process_setup

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir of a training run.')
_STAGES = flags.DEFINE_list('stages', None, 'Stages to evaluate (default: every one with a checkpoint).')
_CPU_DEVICES = process_setup.define_cpu_devices_flag()
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  process_setup.start_process(_CPU_DEVICES.value)
  from bwlm_jax.config import validate_config
  from bwlm_jax.data import load_dataset
  from bwlm_jax.evaluation.report import results_table
  from bwlm_jax.evaluation.workdir_reports import report_workdir
  config = _CONFIG.value
  validate_config(config)
  summary = report_workdir(config, _WORKDIR.value, load_dataset(config.data), _STAGES.value)
  if not summary:
    raise app.UsageError(f'{_WORKDIR.value} has no checkpoints to evaluate.')
  models = {stage: {split: info['report'] for split, info in s['splits'].items()} for stage, s in summary.items()}
  for split, extra in summary.get('naive', {}).get('splits', {}).items():
    for method, report in extra['posthoc'].items():
      models.setdefault(f'naive+{method}', {})[split] = report
  print(results_table({'models': models}))
  print(f'files in {_WORKDIR.value}/evaluation/')


if __name__ == '__main__':
  app.run(main)
