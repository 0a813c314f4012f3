"""The command-line tools: each module has its flags and `main`; `python -m bwlm_jax TOOL` and `launch/TOOL.py` run it."""
