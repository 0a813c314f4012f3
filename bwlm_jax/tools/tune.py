"""Light fine-tuning of pretrained weights compared on validation: the frozen backbone's heads (BWLM's grid,
the CE linear probe, cRT) and every tuning mode x loss x head start of the tuning grid (--tuning.*), each
row's settings chosen on the validation split.

  python launch/tune.py --config=configs/pretrained_folder.py:ROOT,WEIGHTS,MODEL --workdir=DIR
  python launch/tune.py --config=... --workdir=DIR --tuning.modes=bias,last --tuning.learning_rate=0.001,0.01

Trains what is missing (every candidate in DIR/tuning/<mode>-<loss>/<setting>/, resumable), then writes
DIR/tuning/table.{md,csv,json} and best.json.
"""

from bwlm_jax.runtime import cli
from bwlm_jax.tools import study_main
from bwlm_jax.studies.tune import Tune, default_grid

_RUN = cli.define_run_flags('the whole tuning table', 'Run directory.')
_GRID = cli.define_grid_flag('tuning', default_grid(), 'The tuning grid: --tuning.FIELD=V1,V2.')


main = study_main(_RUN, lambda: Tune(_GRID.value))

