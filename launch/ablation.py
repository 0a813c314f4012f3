"""The paper's Table 2 for any dataset, from one base run: naive, stage-2 CE/CB/BS/BFS with lambda = 0
and lambda > 0 (CEW/CBW/BSW/BWLM), plus comparison methods (tau-norm, logit adjustment, cRT, MaxNorm).

  python launch/ablation.py --config=configs/quickstart.py --workdir=workdirs/quickstart

Trains what is missing (naive and stage 1 in WORKDIR, each variant in WORKDIR/ablation/<row>), then
writes WORKDIR/ablation/table.{md,csv,json} and figures in WORKDIR/figures/.
"""

from absl import flags
from ml_collections import config_flags

from bwlm_jax.runtime import cli, distributed, process_setup

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Base run directory.')
_VECTORIZED = flags.DEFINE_bool('vectorized', True, 'Train the variants that differ only in the head\'s loss and '
                                  'hyper-parameters as heads of one run (shared features, one jitted step).')
_SEEDS, _VARY_SUBSET = cli.define_seed_flags('the whole table')
_CPU_DEVICES = process_setup.define_cpu_devices_flag()
_DISTRIBUTED = distributed.define_flags()
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  cli.no_arguments(argv)
  seeds = cli.whole_numbers(_SEEDS.value, 'seeds') if _SEEDS.value is not None else None
  process_setup.start_process(_CPU_DEVICES.value)
  distributed.start({name: flag.value for name, flag in _DISTRIBUTED.items()})
  with distributed.workdir_writer(_WORKDIR.value):  # one run writes into a workdir at a time
    from bwlm_jax.experiments import run_ablation
    if seeds is None:
      run_ablation(_CONFIG.value, _WORKDIR.value, _VECTORIZED.value)
    else:
      from bwlm_jax.seeds import rows_over_seeds
      def ablation(config, workdir):
        return run_ablation(config, workdir, _VECTORIZED.value)
      rows_over_seeds(ablation, _CONFIG.value, _WORKDIR.value, seeds, _VARY_SUBSET.value)


if __name__ == '__main__':
  cli.run(main)
