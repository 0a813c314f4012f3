"""`python -m bwlm_jax TOOL --flags` (installed: `bwlm-jax TOOL --flags`): the tools of `launch/`."""

import importlib
import sys

from bwlm_jax.runtime import cli

TOOLS = ('train', 'evaluate', 'predict', 'export', 'ablation', 'sweep', 'recipe', 'tune', 'summarize_data')


def main(argv=None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] not in TOOLS:
    given = f' (got {argv[1]!r})' if len(argv) > 1 else ''
    print(f'error: usage: bwlm-jax TOOL --flags, TOOL one of {", ".join(TOOLS)}{given}; '
          'TOOL --help lists its flags.', file=sys.stderr)
    sys.exit(2)
  tool = importlib.import_module(f'bwlm_jax.tools.{argv[1]}')
  sys.argv = [f'{argv[0]} {argv[1]}', *argv[2:]]
  cli.run(tool.main)


if __name__ == '__main__':
  main()
