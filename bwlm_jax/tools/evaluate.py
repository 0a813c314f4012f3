"""Evaluate every finished model of a workdir (naive, stage 1, stage 2) on the test (and val) split.

  python launch/evaluate.py --workdir=workdirs/quickstart

The run's own config (WORKDIR/config.json) says which data and groups to use; a --config given as
well must match it (only fields that change no result, such as data.data_dir, may differ). Writes
WORKDIR/evaluation/<stage>/{split}.json, per_class_{split}.csv and confusion_{split}.csv: top-1 and
top-5, All / Many / Medium / Few, per-class accuracy, confusion matrix, classifier weight norms; for the
naive model also tau-normalisation and post-hoc logit adjustment; calibration (ECE with 15 bins, NLL,
Brier, per shot group, and after temperature scaling fitted on val) in every report, and a reliability
diagram in WORKDIR/figures/reliability_test.png. A stage that has not finished is named and left out.
"""

import os

from absl import flags
from ml_collections import config_flags

from bwlm_jax.runtime import cli, process_setup

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Optional: the config the run was trained with (checked '
                                          'against WORKDIR/config.json).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir of a training run.')
_STAGES = flags.DEFINE_list('stages', None, 'Stages to evaluate (default: every one with a checkpoint).')
_TEST_PRIOR = flags.DEFINE_string('test_prior', None, 'Also report accuracy under this test class prior, as the '
                                  'model is and logit-adjusted to it: uniform, train, or a JSON file with one weight '
                                  'per class.')
_CPU_DEVICES = process_setup.define_cpu_devices_flag()
flags.mark_flags_as_required(['workdir'])


def main(argv):
  cli.no_arguments(argv)
  from bwlm_jax.models.registry import cpu_runtime  # importing the model files starts no JAX backend
  from bwlm_jax.workdir import run_config
  config = run_config(_WORKDIR.value, _CONFIG.value)
  process_setup.start_process(_CPU_DEVICES.value, cpu_runtime(config.model.name))
  from bwlm_jax.runtime.workdir_lock import holding
  with holding(os.path.join(_WORKDIR.value, 'evaluation')):  # one writer of the reports at a time
    from bwlm_jax.config import validate_config
    from bwlm_jax.data import load_dataset
    from bwlm_jax.evaluation.report import results_table
    from bwlm_jax.evaluation.workdir_reports import evaluable_stages, report_workdir
    validate_config(config)
    stages = evaluable_stages(_WORKDIR.value, _STAGES.value)
    from bwlm_jax.weights import eval_transform_of
    summary = report_workdir(config, _WORKDIR.value, load_dataset(config.data, eval_transform_of(config)), stages,
                             _TEST_PRIOR.value)
    models = {stage: {split: info['report'] for split, info in s['splits'].items()} for stage, s in summary.items()}
    for split, extra in summary.get('naive', {}).get('splits', {}).items():
      for method, report in extra['posthoc'].items():
        models.setdefault(f'naive+{method}', {})[split] = report
    print(results_table({'models': models}))
    for stage, s in summary.items():
      for split, info in s['splits'].items():
        if 'prior_shift' in info['report']:
          shift = info['report']['prior_shift']
          print(f'{stage} {split} under test prior {_TEST_PRIOR.value}: accuracy {100 * shift["accuracy"]:.1f} %, '
                f'logit-adjusted to it {100 * shift["adjusted_accuracy"]:.1f} %')
    from bwlm_jax.evaluation import plots
    calibration = {stage: s['splits']['test']['report']['calibration'] for stage, s in summary.items()}
    figure = plots.reliability_diagram(calibration, f'{config.data.name}, test')
    paths = plots.save(figure, os.path.join(_WORKDIR.value, 'figures'), 'reliability_test')
    print(f'files in {_WORKDIR.value}/evaluation/; reliability diagram {paths[0]}')

