"""The paper's Table 2 for any dataset, from one base run: naive, stage-2 CE/CB/BS/BFS with lambda = 0
and lambda > 0 (CEW/CBW/BSW/BWLM), plus comparison methods (tau-norm, logit adjustment, cRT, MaxNorm).

  python launch/ablation.py --config=configs/quickstart.py --workdir=workdirs/quickstart

Trains what is missing (naive and stage 1 in WORKDIR, each variant in WORKDIR/ablation/<row>), then
writes WORKDIR/ablation/table.{md,csv,json}, best.json and figures in WORKDIR/figures/.
"""

from absl import flags

from bwlm_jax.runtime import cli
from bwlm_jax.tools import study_main

_RUN = cli.define_run_flags('the whole table', 'Base run directory.')
_VECTORIZED = flags.DEFINE_bool('vectorized', True, 'Train the variants that differ only in the head\'s loss and '
                                  'hyper-parameters as heads of one run (shared features, one jitted step).')


def _study():
  from bwlm_jax.studies.ablation import Ablation
  return Ablation(_VECTORIZED.value)


main = study_main(_RUN, _study)

