"""Run a launch script as `python SCRIPT ARGS...` would, with TensorFlow and tensorflow-datasets hidden from
every import finder (as if not installed: `importlib.util.find_spec` says None); with --allow, visible. Either
way, prints whether they were imported as the last line (`tensorflow imported: True|False`)."""

import atexit
import runpy
import sys

HIDDEN = ('tensorflow', 'tensorflow_datasets')


class _Hidden:
  """An import finder that knows nothing of the hidden packages."""

  def __init__(self, finder):
    self.finder = finder

  def find_spec(self, name, path=None, target=None):
    if name.partition('.')[0] in HIDDEN:
      return None
    return self.finder.find_spec(name, path, target)

  def __getattr__(self, attr):
    return getattr(self.finder, attr)


def main():
  args = sys.argv[1:]
  if args and args[0] == '--allow':
    args = args[1:]
  else:
    sys.meta_path[:] = [_Hidden(finder) for finder in sys.meta_path]
  atexit.register(lambda: print(f'tensorflow imported: {any(n in sys.modules for n in HIDDEN)}', flush=True))
  sys.argv = args
  sys.path.insert(0, '.')
  runpy.run_path(args[0], run_name='__main__')


if __name__ == '__main__':
  main()
