"""Evaluation: accuracy by shot group, per-class accuracy, classifier weight norms, reports."""
