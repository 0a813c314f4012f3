"""BWLM over alpha and lambda (Figure 4) from one base run.

The tool is bwlm_jax/tools/sweep.py (its flags and examples there); `bwlm-jax sweep` runs the same.
"""

from bwlm_jax.runtime import cli
from bwlm_jax.tools.sweep import main

if __name__ == '__main__':
  cli.run(main)
