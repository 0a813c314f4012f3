"""Light fine-tuning of pretrained weights compared on validation: the frozen backbone's heads (BWLM's grid,
the CE linear probe, cRT) and every tuning mode x loss of config.tuning (naive.tune, naive.loss), each
row's settings chosen on the validation split.

  python launch/tune.py --config=configs/pretrained_folder.py:ROOT,WEIGHTS,MODEL --workdir=DIR

Trains what is missing (every candidate in DIR/tuning/<mode>-<loss>/<setting>/, resumable), then writes
DIR/tuning/table.{md,csv,json}.
"""

from absl import flags
from ml_collections import config_flags

from bwlm_jax.runtime import cli, distributed, process_setup

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory.')
_CPU_DEVICES = process_setup.define_cpu_devices_flag()
_DISTRIBUTED = distributed.define_flags()
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  cli.no_arguments(argv)
  process_setup.start_process(_CPU_DEVICES.value)
  distributed.start({name: flag.value for name, flag in _DISTRIBUTED.items()})
  with distributed.workdir_writer(_WORKDIR.value):  # one run writes into a workdir at a time
    from bwlm_jax.fine_tuning import run_tuning
    run_tuning(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  cli.run(main)
