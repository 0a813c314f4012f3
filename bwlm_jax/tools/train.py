"""Train and evaluate: naive CE, BWLM stage 1 and stage 2, as the config says; a rerun resumes.

  python launch/train.py --config=configs/quickstart.py --workdir=/tmp/bwlm_quickstart
  python launch/train.py --config=configs/cifar100_lt.py:100 --workdir=DIR --config.stage2.alpha=0.2
  python launch/train.py --config=configs/quickstart.py --workdir=DIR --seeds=0,1,2   # mean ± std over seeds
"""

from bwlm_jax.runtime import cli

_RUN = cli.define_run_flags('the configured stages')


def main(argv):
  from bwlm_jax.models.registry import cpu_runtime  # importing the model files starts no JAX backend
  with cli.started(_RUN, argv, cpu_runtime) as seeds:
    import jax
    from bwlm_jax.studies.seeds import train_over_seeds
    from bwlm_jax.run.training_run import train_and_evaluate
    print(f'JAX {jax.__version__}: {jax.device_count()} {jax.default_backend()} device(s), '
          f'process {jax.process_index()} of {jax.process_count()}')
    if seeds is None:
      train_and_evaluate(_RUN.config.value, _RUN.workdir.value)
    else:
      train_over_seeds(_RUN.config.value, _RUN.workdir.value, seeds, _RUN.vary_subset.value)

