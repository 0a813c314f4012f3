"""The paper's Table 2 and the comparison methods from one base run.

The tool is bwlm_jax/tools/ablation.py (its flags and examples there); `bwlm-jax ablation` runs the same.
"""

from bwlm_jax.runtime import cli
from bwlm_jax.tools.ablation import main

if __name__ == '__main__':
  cli.run(main)
