"""Reports of the finished models saved in a workdir: accuracy by group, top-5, per class, confusion,
weight norms, and the post-hoc corrections of the naive model."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from bwlm_jax import checkpoints
from bwlm_jax.runtime import distributed
from bwlm_jax.stages import get as get_stage
from bwlm_jax.stages import NAMES as STAGES
from bwlm_jax.data.long_tail import shot_groups
from bwlm_jax.evaluation import metrics, posthoc, prior_shift
from bwlm_jax.evaluation.results import logit_reports
from bwlm_jax.runtime.files import make_directory, unique_path, write_csv, write_json
from bwlm_jax.features import SplitFeatures
from bwlm_jax.models import build_model, head_logits
from bwlm_jax.models.head import head_kernel
from bwlm_jax.runtime.errors import UsageError

TAU_GRID = tuple(np.round(np.arange(0.0, 2.01, 0.1), 2))
POSTHOC_METHODS = ('tau_norm', 'logit_adjustment')


def finished_stages(workdir: str) -> list[str]:
  """The stages of `workdir` with a finished checkpoint, in training order."""
  return [s for s in STAGES if checkpoints.is_finished(workdir, s)]


def evaluable_stages(workdir: str, requested=None) -> list[str]:
  """The finished stages among `requested` (default: every stage); each stage that is not finished is
  named on the terminal. An error if none is finished or a requested name is not a stage."""
  unknown = [s for s in requested or () if s not in STAGES]
  if unknown:
    raise UsageError(f'--stages: unknown {unknown}; expected some of {", ".join(STAGES)}.')
  finished = []
  for stage in requested or STAGES:
    if checkpoints.is_finished(workdir, stage):
      finished.append(stage)
    elif requested or os.path.isdir(checkpoints.stage_directory(workdir, stage)):
      print(f'{stage}: not finished in {workdir}, so not evaluated (rerun launch/train.py to finish it).')
  if not finished:
    raise UsageError(f'{workdir} has no finished model to evaluate' + (f' among {requested}.' if requested else '.'))
  return finished


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """counts[true, predicted]."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, predictions), 1)
  return matrix


def saved_model_features(config, workdir: str, stage: str, dataset) -> dict:
  """The head of a finished stage of `workdir` and {split: (features, labels)} of its backbone."""
  variables, meta = checkpoints.load_finished(workdir, stage)
  num_classes = head_kernel(variables['head']).shape[-1]
  saved = meta['config']['data']['name']
  if saved != config.data.name or num_classes != dataset.num_classes:
    raise UsageError(f'the {stage} checkpoint in {workdir} was trained on {saved} with {num_classes} classes; '
                     f'this config has {config.data.name} with {dataset.num_classes} classes.')
  # The normalisation the model was trained with (ImageNet's for pretrained weights), from its checkpoint.
  normalized = dataclasses.replace(dataset, mean=tuple(meta['mean']), std=tuple(meta['std']))
  split_features = SplitFeatures(build_model(meta['config']['model'], num_classes), normalized, distributed.make_mesh(),
                                 config.eval_batch_size, meta['config']['model']['dtype'],
                                 meta['config']['data'].get('test_views', 'none'))
  outputs = {name: split_features(variables, split) for name, split in dataset.eval_splits().items()}
  return {'head': variables['head'], 'outputs': outputs}


def _balanced_accuracy(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
  """Mean per-class top-1 accuracy over the classes present in `labels` (the selection score)."""
  correct = logits.argmax(-1) == labels
  return float(np.nanmean(metrics.per_class_accuracy(correct, labels, num_classes)))


def posthoc_reports(outputs: dict, head: dict, train_counts) -> dict:
  """tau-normalised and logit-adjusted reports of every split.

  Each temperature is chosen on the 'val' split by balanced (mean per-class) accuracy when there is
  one, else it is the method's published default (1 for both); the test split never chooses.
  """
  num_classes = int(np.shape(head_kernel(head))[-1])
  reports = {split: {} for split in outputs}
  for method in POSTHOC_METHODS:
    def logits(split, tau):
      return posthoc.posthoc_logits(outputs[split][0], head, method, tau, train_counts)
    if 'val' in outputs:
      val_labels = outputs['val'][1]
      tau, _ = posthoc.choose_tau(lambda t: _balanced_accuracy(logits('val', t), val_labels, num_classes), TAU_GRID)
    else:
      tau = 1.0
    for split, (_, labels) in outputs.items():
      report = metrics.logits_report(logits(split, tau), labels, train_counts)
      reports[split][method] = {**report, 'tau': tau, 'chosen_on': 'val' if 'val' in outputs else None}
  return reports


def report_workdir(config, workdir: str, dataset, stages=None, test_prior: str | None = None) -> dict:
  """Evaluate each requested finished stage on every evaluation split; write JSON and CSV files.

  Files go to `WORKDIR/evaluation/<stage>/`; an existing file is never overwritten (a run suffix is added).
  """
  counts = dataset.train_counts
  groups = shot_groups(counts)
  prior = prior_shift.class_prior(test_prior, counts) if test_prior else None
  stages = stages or finished_stages(workdir)
  summary = {}
  for stage in stages:
    model = saved_model_features(config, workdir, stage, dataset)
    head = model['head']
    norms = metrics.weight_norms(np.asarray(head_kernel(head)))
    out_dir = os.path.join(workdir, 'evaluation', stage)
    make_directory(out_dir)
    stage_summary = {}
    extra = posthoc_reports(model['outputs'], head, counts) if get_stage(stage).posthoc_corrected else {}
    outputs = {split: (head_logits(head, features), labels) for split, (features, labels) in model['outputs'].items()}
    reports = logit_reports(outputs, counts)
    for split, (logits, labels) in outputs.items():
      report = reports[split]
      if prior is not None:
        report['prior_shift'] = {'test_prior': test_prior, **prior_shift.prior_shift_report(logits, labels, counts,
                                                                                            prior)}
      confusion = confusion_matrix(logits.argmax(-1), labels, dataset.num_classes)
      payload = {'stage': stage, 'split': split, 'report': report, 'weight_norms': norms,
                 'train_counts': counts.tolist(), 'class_names': list(dataset.class_names),
                 'posthoc': extra.get(split, {})}
      write_json(unique_path(os.path.join(out_dir, f'{split}.json')), payload)
      write_csv(unique_path(os.path.join(out_dir, f'per_class_{split}.csv')),
                ['class', 'name', 'train_count', 'group', 'accuracy', 'weight_norm'],
                [[c, dataset.class_names[c], int(counts[c]), groups[c], report['per_class'][c], norms[c]]
                 for c in range(dataset.num_classes)])
      write_csv(unique_path(os.path.join(out_dir, f'confusion_{split}.csv')),
                ['true \\ predicted'] + list(dataset.class_names),
                [[dataset.class_names[c]] + row.tolist() for c, row in enumerate(confusion)])
      stage_summary[split] = {'report': report, 'posthoc': extra.get(split, {})}
    summary[stage] = {'splits': stage_summary, 'weight_norms': norms}
  return summary
