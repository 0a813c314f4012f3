"""Evaluate the finished models of a workdir: accuracy by group, top-5, per class, confusion, weight norms."""

from __future__ import annotations

import os

import numpy as np

from bwlm_jax.data.long_tail import shot_groups
from bwlm_jax.evaluate import metrics, posthoc
from bwlm_jax.evaluate.report import unique_path, write_csv, write_json

TAU_GRID = tuple(np.round(np.arange(0.0, 2.01, 0.1), 2))


def finished_stages(workdir: str) -> list[str]:
  from bwlm_jax.train.loop import STAGE_TAGS
  return [s for s in STAGE_TAGS if os.path.isdir(os.path.join(workdir, 'checkpoints', s))]


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """counts[true, predicted]."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels, predictions), 1)
  return matrix


def model_outputs(rt, stage: str) -> dict:
  """{split: (features, labels)} and the head of a finished stage."""
  from bwlm_jax.train.loop import restore_variables, split_features
  variables = restore_variables(rt, stage)
  outputs = {name: split_features(rt, variables, split) for name, split in rt.dataset.eval_splits().items()}
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
  kernel = np.asarray(head['dense']['kernel'])
  num_classes = kernel.shape[-1]
  logits = {split: posthoc.linear_logits(features, head) for split, (features, _) in outputs.items()}
  methods = {'tau_norm': lambda split, t: posthoc.tau_normalized_logits(outputs[split][0], kernel, t),
             'logit_adjustment': lambda split, t: posthoc.logit_adjusted(logits[split], train_counts, t)}
  reports = {split: {} for split in outputs}
  for method, method_logits in methods.items():
    if 'val' in outputs:
      val_labels = outputs['val'][1]
      tau, _ = posthoc.choose_tau(
          lambda t: _balanced_accuracy(method_logits('val', t), val_labels, num_classes), TAU_GRID)
    else:
      tau = 1.0
    for split, (_, labels) in outputs.items():
      report = metrics.accuracy_report(posthoc.top_k(method_logits(split, tau), 5), labels, train_counts)
      reports[split][method] = {**report, 'tau': tau, 'chosen_on': 'val' if 'val' in outputs else None}
  return reports


def evaluate_workdir(rt, stages=None) -> dict:
  """Evaluate each requested finished stage on every evaluation split; write JSON and CSV files.

  Files go to `WORKDIR/evaluation/<stage>/`; an existing file is never overwritten (a run suffix is added).
  """
  dataset = rt.dataset
  counts = dataset.train_counts
  groups = shot_groups(counts)
  stages = stages or finished_stages(rt.workdir)
  summary = {}
  for stage in stages:
    model = model_outputs(rt, stage)
    kernel = np.asarray(model['head']['dense']['kernel'])
    norms = metrics.weight_norms(kernel)
    out_dir = os.path.join(rt.workdir, 'evaluation', stage)
    os.makedirs(out_dir, exist_ok=True)
    stage_summary = {}
    extra = posthoc_reports(model['outputs'], model['head'], counts) if stage == 'naive' else {}
    for split, (features, labels) in model['outputs'].items():
      logits = posthoc.linear_logits(features, model['head'])
      top = posthoc.top_k(logits, 5)
      report = metrics.accuracy_report(top, labels, counts)
      confusion = confusion_matrix(top[:, 0], labels, dataset.num_classes)
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
