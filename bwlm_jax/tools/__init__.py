"""The command-line tools: each module has its flags and `main`; `python -m bwlm_jax TOOL` and `launch/TOOL.py` run
it."""

from bwlm_jax.runtime import cli


def study_main(run: cli.RunFlags, make_study):
  """A study tool's `main`: the shared opening (`cli.started`), then the study `make_study()` builds, run once or
  once per --seeds (`studies.seeds.run`: exit status 3 where some candidates failed)."""
  def main(argv):
    from bwlm_jax.models.registry import cpu_runtime  # importing the model files starts no JAX backend
    with cli.started(run, argv, cpu_runtime) as seeds:
      from bwlm_jax.studies import seeds as seeds_lib  # after the process set-up, as every tool imports its work
      seeds_lib.run(make_study(), run.config.value, run.workdir.value, seeds, run.vary_subset.value)
  return main
