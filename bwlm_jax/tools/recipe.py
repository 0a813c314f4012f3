"""The backbone's training recipe chosen on validation: every candidate of the recipe grid (--recipe.*: fields
of naive and stage 1: loss, weight decay, epochs, label smoothing, mixup / CutMix, RandAugment, sampler, DRW;
and the image side, data.image_size) trained as a whole run of config.stages, the best validation score of its
last model chosen.

  python launch/recipe.py --config=configs/tiny_imagenet_lt.py:ROOT --workdir=DIR
  python launch/recipe.py --config=... --workdir=DIR --recipe.combine=product \\
      --recipe.loss=ce,balanced_softmax --recipe.weight_decay=5e-4,1e-3
  python launch/recipe.py --config=... --workdir=DIR --recipe.combine=product \\
      --recipe.epochs=24,48 --recipe.image_size=32,64

Trains what is missing (each candidate in DIR/recipe/<changes>/, resumable; `evaluate.py` and `predict.py`
take that folder as their --workdir), then writes DIR/recipe/table.{md,csv,json} and DIR/recipe/best.json.
"""

from bwlm_jax.runtime import cli
from bwlm_jax.tools import study_main
from bwlm_jax.studies.recipe import Recipe, default_grid

_RUN = cli.define_run_flags('the whole recipe search', 'Run directory.')
_GRID = cli.define_grid_flag('recipe', default_grid(), 'The recipe grid: --recipe.FIELD=V1,V2.')


main = study_main(_RUN, lambda: Recipe(_GRID.value))

