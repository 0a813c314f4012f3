"""The backbone's training recipe chosen on validation.

The tool is bwlm_jax/tools/recipe.py (its flags and examples there); `bwlm-jax recipe` runs the same.
"""

from bwlm_jax.runtime import cli
from bwlm_jax.tools.recipe import main

if __name__ == '__main__':
  cli.run(main)
