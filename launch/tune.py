"""Light fine-tuning of pretrained weights compared on validation.

The tool is bwlm_jax/tools/tune.py (its flags and examples there); `bwlm-jax tune` runs the same.
"""

from bwlm_jax.runtime import cli
from bwlm_jax.tools.tune import main

if __name__ == '__main__':
  cli.run(main)
