"""Train and evaluate: naive CE, BWLM stage 1 and stage 2, as the config says; a rerun resumes.

  python launch/train.py --config=configs/quickstart.py --workdir=/tmp/bwlm_quickstart
  python launch/train.py --config=configs/cifar100_lt.py:100 --workdir=DIR --config.stage2.alpha=0.2
  python launch/train.py --config=configs/quickstart.py --workdir=DIR --seeds=0,1,2   # mean ± std over seeds
"""

from absl import flags
from ml_collections import config_flags

from bwlm_jax.runtime import cli, distributed, process_setup

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
_DISTRIBUTED = distributed.define_flags()
_SEEDS, _VARY_SUBSET = cli.define_seed_flags('the configured stages')
_CPU_DEVICES = process_setup.define_cpu_devices_flag()
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  cli.no_arguments(argv)
  seeds = cli.whole_numbers(_SEEDS.value, 'seeds') if _SEEDS.value is not None else None
  process_setup.start_process(_CPU_DEVICES.value)
  distributed.start({name: flag.value for name, flag in _DISTRIBUTED.items()})
  with distributed.workdir_writer(_WORKDIR.value):  # one run writes into a workdir at a time
    import jax
    from bwlm_jax.pipeline import train_and_evaluate
    print(f'JAX {jax.__version__}: {jax.device_count()} {jax.default_backend()} device(s), '
          f'process {jax.process_index()} of {jax.process_count()}')
    if seeds is None:
      train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    else:
      from bwlm_jax.seeds import train_over_seeds
      train_over_seeds(_CONFIG.value, _WORKDIR.value, seeds, _VARY_SUBSET.value)


if __name__ == '__main__':
  cli.run(main)
