"""Classify image files or folders with a trained model.

  python launch/predict.py --workdir=workdirs/quickstart --images=cat.png,photos/ --top_k=3
  python launch/predict.py --workdir=... --images=photos/ --output=preds.csv

The model's architecture, classes and preprocessing come from its checkpoint. --stage picks the model
(default: stage2 if the workdir has one, else naive); --stage=best takes the model a study chose on the
validation split (WORKDIR/<study>/best.json of ablation.py, tune.py or recipe.py; --stage=best:tuning names the
study where a workdir holds several), post-hoc correction included. A file that cannot be
read as an image (damaged, not an image, a decompression bomb) is reported by name and costs only itself;
the exit status is then non-zero.
"""

import os
import sys

from absl import app, flags

from bwlm_jax.runtime import cli, process_setup
from bwlm_jax.runtime.errors import UsageError

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir of a training run.')
_IMAGES = flags.DEFINE_list('images', None, 'Image files and/or folders.')
_STAGE = flags.DEFINE_string('stage', None, 'naive, stage1, stage2, or best (the best on validation of the '
                             "workdir's study: WORKDIR/<study>/best.json), or best:STUDY (ablation, tuning, recipe).")
_TOP_K = flags.DEFINE_integer('top_k', 5, 'Classes to show per image.')
_OUTPUT = flags.DEFINE_string('output', None, 'CSV file to write (refuses to overwrite).')
flags.mark_flags_as_required(['workdir', 'images'])


def main(argv):
  cli.no_arguments(argv)
  # The arguments first, then the workdir's model, whose family names the CPU settings (none of these imports
  # starts a JAX backend).
  from bwlm_jax.models.registry import cpu_runtime
  from bwlm_jax.predict import check_stage, image_paths, predict_files
  from bwlm_jax.runtime.files import write_csv
  from bwlm_jax.workdir import run_config
  if _STAGE.value is not None:
    check_stage(_STAGE.value)
  if _TOP_K.value < 1:
    raise app.UsageError('--top_k must be >= 1.')
  if _OUTPUT.value and os.path.exists(_OUTPUT.value):
    raise app.UsageError(f'{_OUTPUT.value} exists; choose another --output (results are never overwritten).')
  process_setup.start_process(family_runtime=cpu_runtime(run_config(_WORKDIR.value, None).model.name))
  stage = _STAGE.value or ('stage2' if os.path.isdir(os.path.join(_WORKDIR.value, 'checkpoints', 'stage2'))
                           else 'naive')
  paths = image_paths(_IMAGES.value)
  predictions, unreadable = predict_files(_WORKDIR.value, stage, paths, _TOP_K.value)
  for path, top in predictions:
    print(f'{path}: ' + ', '.join(f'{name} {probability:.3f}' for name, probability in top))
  if _OUTPUT.value and predictions:
    header = ['path'] + [f'{kind}_{rank}' for rank in range(1, _TOP_K.value + 1) for kind in ('class', 'prob')]
    write_csv(_OUTPUT.value, header, [[path] + [v for pair in top for v in pair] for path, top in predictions])
    print(f'wrote {_OUTPUT.value} ({len(predictions)} images)')
  for path, why in unreadable:
    print(f'{path}: not predicted: {why}', file=sys.stderr)
  if unreadable:
    raise UsageError(f'{len(unreadable)} of {len(paths)} images could not be read (listed above, each with the '
                     f'reason); the other {len(predictions)} were predicted.')

