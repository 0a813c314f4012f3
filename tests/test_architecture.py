"""The layering of docs/ARCHITECTURE.md: training and evaluation never import each other, inference
needs no training code."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module_file(name: str):
  base = os.path.join(ROOT, *name.split('.'))
  for path in (base + '.py', os.path.join(base, '__init__.py')):
    if os.path.exists(path):
      return path
  return None


def _imports(path: str) -> set[str]:
  """bwlm_jax modules imported anywhere in a file (also inside functions), resolved to files that exist."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      names = [node.module] + [f'{node.module}.{alias.name}' for alias in node.names]
    found.update(n for n in names if n.startswith('bwlm_jax') and _module_file(n))
  return found


def _closure(start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    path = todo.pop()
    for name in _imports(path):
      parts = name.split('.')
      for k in range(2, len(parts) + 1):  # importing a.b.c runs a/b/__init__ too
        module = '.'.join(parts[:k])
        if module not in seen and _module_file(module):
          seen.add(module)
          todo.append(_module_file(module))
  return seen


def _package_files(package: str):
  folder = os.path.join(ROOT, 'bwlm_jax', package)
  return [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith('.py')]


@pytest.mark.parametrize('package,forbidden', [('train', 'bwlm_jax.evaluation'), ('evaluation', 'bwlm_jax.train')])
def test_training_and_evaluation_never_import_each_other(package, forbidden):
  for path in _package_files(package):
    reached = {m for m in _closure(path) if m == forbidden or m.startswith(forbidden + '.')}
    assert not reached, f'{os.path.relpath(path, ROOT)} reaches {sorted(reached)}'


@pytest.mark.parametrize('entry', ['bwlm_jax/predict.py', 'launch/evaluate.py', 'launch/predict.py',
                                   'bwlm_jax/evaluation/workdir_reports.py'])
def test_inference_needs_no_training_code(entry):
  reached = {m for m in _closure(os.path.join(ROOT, entry)) if m.startswith('bwlm_jax.train')}
  assert not reached, f'{entry} reaches {sorted(reached)}'


def test_the_checker_sees_a_forbidden_import():
  assert 'bwlm_jax.train.loop' in _closure(os.path.join(ROOT, 'bwlm_jax', 'pipeline.py'))


def test_bwlm_jax_modules_are_imported_at_the_top():
  """No import of a bwlm_jax module inside a function (an import cycle is broken by moving the shared piece
  down a floor), unless a comment on that line says why."""
  found = []
  for folder, _, files in os.walk(os.path.join(ROOT, 'bwlm_jax')):
    for name in files:
      if not name.endswith('.py'):
        continue
      path = os.path.join(folder, name)
      source = open(path).read()
      lines = source.splitlines()
      for function in ast.walk(ast.parse(source)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
          continue
        for node in ast.walk(function):
          module = node.module if isinstance(node, ast.ImportFrom) else None
          names = [a.name for a in node.names] if isinstance(node, ast.Import) else [module or '']
          if isinstance(node, (ast.Import, ast.ImportFrom)) and any(n.startswith('bwlm_jax') for n in names):
            if '#' not in lines[node.lineno - 1]:
              found.append(f'{os.path.relpath(path, ROOT)}:{node.lineno}')
  assert not found, found


def test_functions_stay_short():
  """No function past 60 lines: a longer one does several jobs."""
  long = []
  for folder, _, files in os.walk(os.path.join(ROOT, 'bwlm_jax')):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        for node in ast.walk(ast.parse(open(path).read())):
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
            long.append(f'{os.path.relpath(path, ROOT)}:{node.name}')
  assert not long, long
