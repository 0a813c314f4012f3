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


@pytest.mark.parametrize('entry', ['bwlm_jax/predict.py', 'bwlm_jax/tools/evaluate.py', 'bwlm_jax/tools/predict.py',
                                   'bwlm_jax/evaluation/workdir_reports.py'])
def test_inference_needs_no_training_code(entry):
  reached = {m for m in _closure(os.path.join(ROOT, entry)) if m.startswith('bwlm_jax.train')}
  assert not reached, f'{entry} reaches {sorted(reached)}'


def test_the_checker_sees_a_forbidden_import():
  assert 'bwlm_jax.train.loop' in _closure(os.path.join(ROOT, 'bwlm_jax', 'run', 'training_run.py'))


def test_bwlm_jax_modules_are_imported_at_the_top():
  """No import of a bwlm_jax module inside a function (an import cycle is broken by moving the shared piece
  down a floor), unless a comment on that line says why."""
  found = []
  for folder, _, files in os.walk(os.path.join(ROOT, 'bwlm_jax')):
    if os.path.basename(folder) == 'tools':  # the tools import the library after setting the process up
      continue
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


def _graph() -> dict[str, set[str]]:
  """{module: the bwlm_jax modules it imports} (also inside functions; `from package import module` counts as
  the module, not the package)."""
  modules = {}
  for folder, _, files in os.walk(os.path.join(ROOT, 'bwlm_jax')):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        modules[os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.').removesuffix('.__init__')] = path
  graph = {}
  for module, path in modules.items():
    targets = set()
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.Import):
        targets.update(a.name for a in node.names if a.name in modules)
      elif isinstance(node, ast.ImportFrom) and node.module in modules:
        for alias in node.names:
          targets.add(f'{node.module}.{alias.name}' if f'{node.module}.{alias.name}' in modules else node.module)
    graph[module] = targets - {module}
  return graph


def _room(module: str) -> str:
  """A module's room: its subpackage (bwlm_jax.run, ...), or the module itself at the package root."""
  parts = module.split('.')
  return '.'.join(parts[:2]) if os.path.isdir(os.path.join(ROOT, *parts[:2])) else module


def _cycles(graph: dict) -> list[list[str]]:
  """The strongly connected components of more than one node (Tarjan)."""
  index, low, stack, found, counter = {}, {}, [], [], [0]

  def visit(node):
    index[node] = low[node] = counter[0]
    counter[0] += 1
    stack.append(node)
    for target in graph.get(node, ()):
      if target not in index:
        visit(target)
        low[node] = min(low[node], low[target])
      elif target in stack:
        low[node] = min(low[node], index[target])
    if low[node] == index[node]:
      component = []
      while True:
        member = stack.pop()
        component.append(member)
        if member == node:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for node in list(graph):
    if node not in index:
      visit(node)
  return found


def test_no_import_circle_between_modules_or_rooms():
  graph = _graph()
  assert not _cycles(graph)
  rooms = {}
  for module, targets in graph.items():
    rooms.setdefault(_room(module), set()).update(_room(t) for t in targets if _room(t) != _room(module))
  assert not _cycles(rooms), 'rooms that import each other (an import back up)'


def test_the_checker_sees_a_circle():
  assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]


def test_the_plumbing_imports_nothing_above_it_and_studies_stand_side_by_side():
  graph = _graph()
  for module, targets in graph.items():
    if module.startswith('bwlm_jax.runtime'):
      assert all(t.startswith('bwlm_jax.runtime') for t in targets), (module, targets)
    if not module.startswith(('bwlm_jax.studies', 'bwlm_jax.tools', 'bwlm_jax.__main__')):
      assert not any(t.startswith('bwlm_jax.studies') for t in targets), f'{module} imports a study'
  shared = {'bwlm_jax.studies.base', 'bwlm_jax.studies.head_variants'}
  for module, targets in graph.items():
    if module.startswith('bwlm_jax.studies.') and module not in shared and module != 'bwlm_jax.studies.seeds':
      studies = {t for t in targets if t.startswith('bwlm_jax.studies.')} - shared
      assert not studies, f'{module} imports another study: {studies}'


def test_model_families_are_read_through_their_records():
  """Outside models/, nothing imports a family's model file (to test a name against its list): the family
  record (`models.family_of`) is the one place a model's properties are read."""
  family_files = {'bwlm_jax.models.vit', 'bwlm_jax.models.efficientnet_lite', 'bwlm_jax.models.resnet_cifar',
                  'bwlm_jax.models.resnet_imagenet'}
  for module, targets in _graph().items():
    if not module.startswith('bwlm_jax.models'):
      assert not targets & family_files, f'{module} imports {sorted(targets & family_files)}'
  from bwlm_jax.models import registry
  assert {f'bwlm_jax.models.{m}' for m in ('vit', 'efficientnet_lite', 'resnet_cifar', 'resnet_imagenet')} == (
      family_files)
  assert len(registry.MODEL_NAMES) == len(set(registry.MODEL_NAMES)) == 46
