"""BWLM over alpha (Figure 4) and/or lambda, from one base run.

  python launch/sweep.py --config=configs/quickstart.py --workdir=workdirs/quickstart
  python launch/sweep.py --config=... --workdir=... --alphas=0.1 --lambdas=0,0.01,0.1

Writes WORKDIR/sweep/table.{md,csv,json} and WORKDIR/figures/alpha_sweep_*.{png,pdf}.
"""

from absl import flags
from ml_collections import config_flags

from bwlm_jax.runtime import cli, distributed, process_setup

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Base run directory.')
_ALPHAS = flags.DEFINE_string('alphas', '0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1', 'Comma-separated alphas.')
_LAMBDAS = flags.DEFINE_string('lambdas', None, 'Comma-separated lambdas (default: config.stage2.weight_decay).')
_VECTORIZED = flags.DEFINE_bool('vectorized', True, 'Train the variants that differ only in the head\'s loss and '
                                  'hyper-parameters as heads of one run (shared features, one jitted step).')
_SEEDS, _VARY_SUBSET = cli.define_seed_flags('the whole sweep')
_CPU_DEVICES = process_setup.define_cpu_devices_flag()
_DISTRIBUTED = distributed.define_flags()
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  cli.no_arguments(argv)
  seeds = cli.whole_numbers(_SEEDS.value, 'seeds') if _SEEDS.value is not None else None
  alphas = cli.number_list(_ALPHAS.value, 'alphas')
  lambdas = (cli.number_list(_LAMBDAS.value, 'lambdas') if _LAMBDAS.value is not None
             else [_CONFIG.value.stage2.weight_decay])
  process_setup.start_process(_CPU_DEVICES.value)
  distributed.start({name: flag.value for name, flag in _DISTRIBUTED.items()})
  with distributed.workdir_writer(_WORKDIR.value):  # one run writes into a workdir at a time
    from bwlm_jax.sweeps import run_sweep
    if seeds is None:
      run_sweep(_CONFIG.value, _WORKDIR.value, alphas, lambdas, _VECTORIZED.value)
    else:
      from bwlm_jax.seeds import rows_over_seeds
      def sweep(config, workdir):
        return run_sweep(config, workdir, alphas, lambdas, _VECTORIZED.value)
      rows_over_seeds(sweep, _CONFIG.value, _WORKDIR.value, seeds, _VARY_SUBSET.value)


if __name__ == '__main__':
  cli.run(main)
