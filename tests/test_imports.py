"""The package's import graph: no cycles inside cnn_jax/ (function-level imports included), and the
models never import the CPU layer set."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'cnn_jax'


def _modules() -> dict[str, pathlib.Path]:
  mods = {}
  for path in PACKAGE.rglob('*.py'):
    name = '.'.join(path.relative_to(ROOT).with_suffix('').parts)
    mods[name.removesuffix('.__init__')] = path
  return mods


def _graph(mods) -> dict[str, set[str]]:
  """module -> the cnn_jax modules it imports anywhere in its file."""
  def resolve(name):
    while name and name not in mods:
      name = name.rpartition('.')[0]
    return name or None

  graph = {m: set() for m in mods}
  for module, path in mods.items():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [resolve(a.name) for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        targets = [resolve(f'{node.module}.{a.name}') or resolve(node.module) for a in node.names]
      else:
        continue
      graph[module] |= {t for t in targets if t and t != module}
  return graph


def _cycle(graph) -> list[str] | None:
  """One import cycle, or None (depth-first search with colours)."""
  state, path = {}, []

  def visit(node):
    state[node] = 'open'
    path.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 'open':
        return path[path.index(nxt):] + [nxt]
      if nxt not in state and (found := visit(nxt)):
        return found
    state[node] = 'done'
    path.pop()
    return None

  for node in sorted(graph):
    if node not in state and (found := visit(node)):
      return found
  return None


def test_no_import_cycles_inside_the_package():
  assert _cycle(_graph(_modules())) is None


def test_the_cycle_finder_finds_a_cycle():
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']


def test_models_never_import_the_cpu_layer_set():
  graph = _graph(_modules())
  for module, imports in graph.items():
    if module.startswith('cnn_jax.models'):
      assert not {i for i in imports if i.startswith('cnn_jax.kernels')}, module
