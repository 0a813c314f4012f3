"""Train and evaluate the configured stages; a rerun resumes.

The tool is bwlm_jax/tools/train.py (its flags and examples there); `bwlm-jax train` runs the same.
"""

from bwlm_jax.runtime import cli
from bwlm_jax.tools.train import main

if __name__ == '__main__':
  cli.run(main)
