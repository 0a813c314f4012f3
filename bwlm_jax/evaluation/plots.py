"""The paper's figures for our runs (matplotlib, PNG and PDF): Figures 3, 4, 5a, 6 and 7."""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bwlm_jax.data.long_tail import FEW_BELOW, MANY_ABOVE  # noqa: E402
from bwlm_jax.runtime.files import make_directory, writing  # noqa: E402

GROUP_COLUMNS = ('all', 'many', 'medium', 'few')


def save(figure, directory: str, name: str) -> list[str]:
  """Write `name`.png and `name`.pdf in `directory`; returns the paths."""
  make_directory(directory)
  paths = [os.path.join(directory, f'{name}.{ext}') for ext in ('png', 'pdf')]
  try:
    for path in paths:
      with writing(path):
        figure.savefig(path, dpi=150, bbox_inches='tight')
  finally:
    plt.close(figure)
  return paths


def _by_count(train_counts):
  return np.argsort(-np.asarray(train_counts), kind='stable')


def class_counts(train_counts, title: str):
  """Figure 3: training images per class, classes sorted by count."""
  counts = np.asarray(train_counts)[_by_count(train_counts)]
  figure, axis = plt.subplots(figsize=(6, 3.5))
  axis.bar(np.arange(counts.size), counts, width=1.0, color='tab:blue', label='training images')
  axis.axhline(MANY_ABOVE, color='gray', ls='--', lw=0.8, label=f'Many / Medium ({MANY_ABOVE})')
  axis.axhline(FEW_BELOW, color='gray', ls=':', lw=0.8, label=f'Medium / Few ({FEW_BELOW})')
  axis.set_xlabel('class index (sorted by training count)')
  axis.set_ylabel('training images')
  axis.set_title(f'Class distribution: {title}')
  axis.legend()
  return figure


def _per_class_lines(values_by_method: dict, train_counts, scale: float, ylabel: str, title: str, **style):
  """One line per method over the classes sorted by training count; None values are gaps."""
  order = _by_count(train_counts)
  figure, axis = plt.subplots(figsize=(7, 3.8))
  for method, values in values_by_method.items():
    values = np.array([np.nan if v is None else v for v in values], float)[order]
    axis.plot(np.arange(values.size), scale * values, label=method, **style)
  axis.set_xlabel('class index (sorted by training count)')
  axis.set_ylabel(ylabel)
  axis.set_title(title)
  return figure, axis, order


def per_class_accuracy(accuracy_by_method: dict, train_counts, title: str):
  """Figure 7: per-class test accuracy, classes sorted by training count, one line per method."""
  figure, axis, _ = _per_class_lines(accuracy_by_method, train_counts, 100.0, 'test accuracy (%)',
                                     f'Per-class accuracy: {title}', marker='.', lw=1)
  axis.legend()
  return figure


def weight_norms(norms_by_method: dict, train_counts, title: str):
  """Figure 5a: classifier weight norm per class, classes sorted by training count."""
  figure, axis, order = _per_class_lines(norms_by_method, train_counts, 1.0, 'weight norm ||w_c||',
                                         f'Classifier weight norms: {title}', lw=1.2)
  counts_axis = axis.twinx()
  counts_axis.plot(np.arange(len(order)), np.asarray(train_counts)[order], 'k--', lw=0.8, label='training count')
  counts_axis.set_ylabel('training images')
  lines, labels = axis.get_legend_handles_labels()
  more_lines, more_labels = counts_axis.get_legend_handles_labels()
  axis.legend(lines + more_lines, labels + more_labels)
  return figure


def accuracy_vs_parameter(values, reports, parameter: str, title: str):
  """Figure 4: All / Many / Medium / Few accuracy against alpha (or lambda); the best All is starred."""
  figure, axes = plt.subplots(1, 4, figsize=(13, 3.2), sharex=True)
  for axis, column in zip(axes, GROUP_COLUMNS):
    ys = np.array([np.nan if r[column] is None else 100 * r[column] for r in reports], float)
    axis.plot(values, ys, marker='o', label=column.capitalize())
    if not np.all(np.isnan(ys)):
      best = int(np.nanargmax(ys))
      axis.plot(values[best], ys[best], marker='*', color='tab:blue', ms=14, ls='none', label='best')
    axis.set_title(column.capitalize())
    axis.set_xlabel(parameter)
    axis.set_ylabel('accuracy (%)')
    axis.legend()
  figure.suptitle(f'Accuracy against {parameter}: {title}')
  figure.tight_layout()
  return figure


def training_curves(metrics_jsonl: str, title: str):
  """Figure 6: training loss and accuracy per epoch for each stage of a run.

  The accuracy is the validation split's where the run had one, else the test split's.
  """
  rows, damaged = [], 0
  with open(metrics_jsonl, encoding='utf-8', errors='replace') as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:  # e.g. the last line of a process killed while writing it
        damaged += 1
  if damaged:
    print(f'{metrics_jsonl}: {damaged} damaged line(s) left out of the training curves.')
  rows = [row for row in rows if isinstance(row, dict) and 'stage' in row]
  split = 'val' if any('val_accuracy' in r for r in rows) else 'test'
  figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 3.6))
  for stage in dict.fromkeys(r['stage'] for r in rows):
    losses = [(r['epoch'], r['loss']) for r in rows if r['stage'] == stage and 'loss' in r and 'epoch' in r]
    if losses:
      loss_axis.plot(*zip(*losses), label=stage)
    accuracy = [(r['epoch'], 100 * r[f'{split}_accuracy']) for r in rows
                if r['stage'] == stage and f'{split}_accuracy' in r and 'epoch' in r]
    if accuracy:
      accuracy_axis.plot(*zip(*accuracy), marker='o', label=stage)
  loss_axis.set_xlabel('epoch')
  loss_axis.set_ylabel('training loss')
  loss_axis.set_title('Training loss')
  accuracy_axis.set_xlabel('epoch')
  accuracy_axis.set_ylabel(f'{split} accuracy (%)')
  accuracy_axis.set_title(f'{split.capitalize()} accuracy')
  for axis in (loss_axis, accuracy_axis):
    if axis.get_legend_handles_labels()[0]:
      axis.legend()
  figure.suptitle(f'Training curves: {title}')
  figure.tight_layout()
  return figure


def reliability_diagram(calibration_by_model: dict, title: str):
  """Accuracy against confidence in the 15 equal-width bins of each model's calibration report, with the
  diagonal of perfect calibration; the legend gives each model's ECE."""
  figure, axis = plt.subplots(figsize=(4.5, 4.5))
  axis.plot([0, 1], [0, 1], color='gray', ls='--', lw=0.8, label='perfectly calibrated')
  for label, report in calibration_by_model.items():
    used = [b for b in report['bins'] if b['count']]
    axis.plot([b['confidence'] for b in used], [b['accuracy'] for b in used], marker='o', ms=3,
              label=f'{label} (ECE {100 * report["ece"]:.1f} %)')
  axis.set_xlim(0, 1)
  axis.set_ylim(0, 1)
  axis.set_xlabel(f'confidence (top-1 probability, {len(next(iter(calibration_by_model.values()))["bins"])} bins)')
  axis.set_ylabel('accuracy')
  axis.set_title(title, fontsize=9)
  axis.legend(fontsize=7)
  return figure
