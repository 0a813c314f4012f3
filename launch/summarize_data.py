"""A dataset's counts, shot groups and Data Balanced Review sizes.

The tool is bwlm_jax/tools/summarize_data.py (its flags and examples there); `bwlm-jax summarize_data` runs the same.
"""

from bwlm_jax.runtime import cli
from bwlm_jax.tools.summarize_data import main

if __name__ == '__main__':
  cli.run(main)
