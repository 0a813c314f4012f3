"""Reports of trained models on the evaluation splits, and the run's `results.json`."""

from __future__ import annotations

import os

import jax
import numpy as np

from bwlm_jax import checkpoints
from bwlm_jax.stages import NAMES as STAGES, STAGE2
from bwlm_jax.evaluation import calibration, metrics
from bwlm_jax.models import head_logits
from bwlm_jax.models.head import head_kernel
from bwlm_jax.runtime.files import read_json
from bwlm_jax.workdir import stage_config_differences


def split_reports(split_features, variables: dict, dataset) -> dict:
  """{split name: report} of one model (inference variables) on every evaluation split (`logit_reports`)."""
  outputs = {}
  for name, split in dataset.eval_splits().items():
    features, labels = split_features(variables, split)
    outputs[name] = (head_logits(variables['head'], features), labels)
  return logit_reports(outputs, dataset.train_counts)


def logit_reports(outputs: dict, train_counts) -> dict:
  """{split: report} from {split: (logits, labels)}: accuracy and calibration; where there is a 'val'
  split, also the calibration after temperature scaling fitted on it ('temperature_scaled')."""
  reports = {name: metrics.logits_report(logits, labels, train_counts) for name, (logits, labels) in outputs.items()}
  if 'val' in outputs:
    temperature = calibration.fit_temperature(*outputs['val'])
    for name, (logits, labels) in outputs.items():
      reports[name]['temperature_scaled'] = {
          'temperature': temperature, 'fitted_on': 'val',
          **calibration.calibration_report(logits / temperature, labels, train_counts)}
  return reports


def head_at(heads, k: int):
  """Head k of K heads stacked on a leading axis (their parameters or optimizer states; also backbone k of K
  trained at once, `recipes.train_together`)."""
  return jax.tree.map(lambda leaf: leaf[k], heads)


def stacked_head_reports(split_features, variables: dict, split, train_counts, which=None) -> list[dict]:
  """One report per head of `variables['head']` (K heads stacked; `which`: these heads only, in this order),
  on one split; the features once."""
  features, labels = split_features(variables, split)
  heads = jax.device_get(variables['head'])
  which = range(int(np.shape(head_kernel(heads))[0])) if which is None else which
  return [metrics.head_report(features, labels, head_at(heads, k), train_counts) for k in which]


def run_results(dataset, models: dict, split_features, test_views: str = 'none') -> dict:
  """The results.json payload of a run: dataset, counts, groups, the test-time views and, per model (stage name ->
  inference variables), its report on every evaluation split and its classifier weight norms."""
  results = {
      'dataset': dataset.name,
      'test_views': test_views,
      'class_names': list(dataset.class_names),
      'train_counts': dataset.train_counts.tolist(),
      'shot_groups': metrics.shot_groups(dataset.train_counts).tolist(),
      'models': {},
      'weight_norms': {},
  }
  for stage, variables in models.items():
    results['models'][stage] = split_reports(split_features, variables, dataset)
    results['weight_norms'][stage] = metrics.weight_norms(jax.device_get(head_kernel(variables['head'])))
  return results


def with_earlier_results(config, workdir: str, results: dict) -> dict:
  """`results` plus the models of the earlier results.json that this call did not train (e.g. stage 2 when
  ablation.py reruns naive and stage 1), where the workdir still holds their finished checkpoint, trained
  with this config's fields for that stage."""
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    return results
  earlier = read_json(path, 'the results of earlier runs in this workdir', 'Fix it by hand or move it away, then '
                      'rerun: the finished checkpoints are reused and results.json is written anew.')
  carried = set()
  for stage in STAGES:
    if stage in results['models'] or stage not in earlier.get('models', {}):
      continue
    meta = checkpoints.finished_meta(checkpoints.stage_directory(workdir, stage))
    if meta is not None and not stage_config_differences(stage, meta, config.to_dict()):
      carried.add(stage)
  if not carried:
    return results
  order = [s for s in STAGES if s in results['models'] or s in carried]
  merged = {**results, 'models': {}, 'weight_norms': {}}
  for stage in order:
    source = results if stage in results['models'] else earlier
    merged['models'][stage] = source['models'][stage]
    merged['weight_norms'][stage] = source['weight_norms'][stage]
  if STAGE2.name in carried and 'stage2_selection' in earlier:
    merged['stage2_selection'] = earlier['stage2_selection']
  return merged
