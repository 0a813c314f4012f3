"""Write a trained model as a state dict of its PyTorch layout.

The tool is bwlm_jax/tools/export.py (its flags and examples there); `bwlm-jax export` runs the same.
"""

from bwlm_jax.runtime import cli
from bwlm_jax.tools.export import main

if __name__ == '__main__':
  cli.run(main)
