"""Evaluation: accuracy by shot group, post-hoc corrections, reports, result tables and figures."""
