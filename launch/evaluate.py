"""Evaluate every finished model of a workdir.

The tool is bwlm_jax/tools/evaluate.py (its flags and examples there); `bwlm-jax evaluate` runs the same.
"""

from bwlm_jax.runtime import cli
from bwlm_jax.tools.evaluate import main

if __name__ == '__main__':
  cli.run(main)
