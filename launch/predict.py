"""Classify image files or folders with a trained model.

The tool is bwlm_jax/tools/predict.py (its flags and examples there); `bwlm-jax predict` runs the same.
"""

from bwlm_jax.runtime import cli
from bwlm_jax.tools.predict import main

if __name__ == '__main__':
  cli.run(main)
