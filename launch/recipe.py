"""The backbone's training recipe chosen on validation: every candidate of config.recipe (fields of naive
and stage 1: loss, weight decay, epochs, label smoothing, mixup / CutMix, RandAugment, sampler, DRW; and the
image side, data.image_size) trained as a whole run of config.stages, the best validation score of its last
model chosen.

  python launch/recipe.py --config=configs/tiny_imagenet_lt.py:ROOT --workdir=DIR
  python launch/recipe.py --config=... --workdir=DIR --config.recipe.combine=product \\
      --config.recipe.loss=ce,balanced_softmax --config.recipe.weight_decay=5e-4,1e-3
  python launch/recipe.py --config=... --workdir=DIR --config.recipe.combine=product \\
      --config.recipe.epochs=24,48 --config.recipe.image_size=32,64

Trains what is missing (each candidate in DIR/recipe/<changes>/, resumable; `evaluate.py` and `predict.py`
take that folder as their --workdir), then writes DIR/recipe/table.{md,csv,json} and DIR/recipe/chosen.json.
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
    from bwlm_jax.recipes import run_recipes
    run_recipes(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  cli.run(main)
