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


def posthoc_reports(outputs: dict, head: dict, train_counts) -> dict:
  """tau-normalised (tau chosen on 'val' when there is one, else 1) and logit-adjusted reports."""
  kernel = np.asarray(head['dense']['kernel'])
  if 'val' in outputs:
    val_features, val_labels = outputs['val']
    tau, _ = posthoc.choose_tau(
        lambda t: float((posthoc.tau_normalized_logits(val_features, kernel, t).argmax(-1) == val_labels).mean()),
        TAU_GRID)
  else:
    tau = 1.0
  reports = {}
  for split, (features, labels) in outputs.items():
    tau_logits = posthoc.tau_normalized_logits(features, kernel, tau)
    adjusted = posthoc.logit_adjusted(posthoc.linear_logits(features, head), train_counts)
    reports[split] = {
        'tau_norm': {**metrics.accuracy_report(posthoc.top_k(tau_logits, 5), labels, train_counts), 'tau': tau},
        'logit_adjustment': {**metrics.accuracy_report(posthoc.top_k(adjusted, 5), labels, train_counts),
                             'tau': 1.0},
    }
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
