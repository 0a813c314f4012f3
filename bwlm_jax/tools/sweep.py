"""BWLM over alpha (Figure 4) and/or lambda, from one base run.

  python launch/sweep.py --config=configs/quickstart.py --workdir=workdirs/quickstart
  python launch/sweep.py --config=... --workdir=... --alphas=0.1 --lambdas=0,0.01,0.1

Writes WORKDIR/sweep/table.{md,csv,json} and WORKDIR/figures/alpha_sweep_*.{png,pdf}.
"""

from absl import flags

from bwlm_jax.runtime import cli
from bwlm_jax.tools import study_main

_RUN = cli.define_run_flags('the whole sweep', 'Base run directory.')
_ALPHAS = flags.DEFINE_string('alphas', '0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1', 'Comma-separated alphas.')
_LAMBDAS = flags.DEFINE_string('lambdas', None, 'Comma-separated lambdas (default: config.stage2.weight_decay).')
_VECTORIZED = flags.DEFINE_bool('vectorized', True, 'Train the variants that differ only in the head\'s loss and '
                                  'hyper-parameters as heads of one run (shared features, one jitted step).')


def _study():
  alphas = cli.number_list(_ALPHAS.value, 'alphas')
  lambdas = (cli.number_list(_LAMBDAS.value, 'lambdas') if _LAMBDAS.value is not None
             else [_RUN.config.value.stage2.weight_decay])
  from bwlm_jax.studies.sweep import Sweep
  return Sweep(alphas, lambdas, _VECTORIZED.value)


main = study_main(_RUN, _study)
