"""The package's imports run one way: every module imports (at module level or inside a function)
only modules of its own layer or the layers below it, and no set of modules imports itself in a
circle. docs/architecture.md draws the same layers.

Read from the source with ``ast``: a lazy import inside a function counts as much as one at the
top of a file, because it runs all the same."""
import ast
import os

from train_helpers import REPO

PACKAGE = os.path.join(REPO, 'mindcoat')
# bottom to top; a module may import its own layer and any layer listed before it
LAYERS = [
    ('leaves', ['mindcoat.errors', 'mindcoat.fileio', 'mindcoat.typed']),
    ('ops', ['mindcoat.ops']),
    ('models', ['mindcoat.models']),
    ('weights', ['mindcoat.weights']),
    ('factory', ['mindcoat.factory']),
    ('data, optim, engine', ['mindcoat.data', 'mindcoat.optim', 'mindcoat.engine']),
    ('config', ['mindcoat.config']),
    ('entry points', ['mindcoat.cli', 'mindcoat.train', 'mindcoat.validate', 'mindcoat.predict',
                      'mindcoat.detect',
                      'mindcoat.export', 'mindcoat.convert', 'mindcoat.benchmark',
                      'mindcoat.demo', 'mindcoat.plot', 'mindcoat.ops.__main__',
                      'mindcoat.config.__main__', 'mindcoat']),
]


def modules():
    """{dotted name: path} of every module in the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
                found[rel[:-len('.__init__')] if rel.endswith('.__init__') else rel] = path
    return found


def imports_of(name, path, known):
    """The package modules ``name`` imports, anywhere in its file."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')
                base = base[:len(base) - node.level + 1]
                module = '.'.join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ''
            # 'from . import x' imports the submodule x when there is one
            targets = [f'{module}.{a.name}' if f'{module}.{a.name}' in known else module
                       for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known)
    out.discard(name)
    return out


def layer_of(name):
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if name == prefix or name.startswith(prefix + '.'):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    return best[0] if best else None


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer_of(m) is None] == []


def test_imports_only_point_down():
    known = modules()
    upward = []
    for name, path in known.items():
        for target in imports_of(name, path, known):
            if layer_of(target) > layer_of(name):
                upward.append(f'{name} ({LAYERS[layer_of(name)][0]}) imports {target} '
                              f'({LAYERS[layer_of(target)][0]})')
    assert upward == []


def find_cycles(graph):
    """Circles in ``graph`` ({module: modules it imports}); a package's __init__ counts as the
    package, so a submodule importing its package back closes a circle."""
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = 'active'
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 'active':
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 'done'

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycles():
    known = modules()
    assert find_cycles({name: imports_of(name, path, known) for name, path in known.items()}) \
        == []


def test_the_checks_find_what_they_look_for(tmp_path):
    """The checks above fail on real violations (so their passing means something): a model
    module importing weights, and two engine modules importing each other."""
    known = {'mindcoat.models.coat': 'a', 'mindcoat.weights.hub': 'b', 'mindcoat.engine.x': 'c',
             'mindcoat.engine.y': 'd', 'mindcoat.engine': 'e'}
    path = tmp_path / 'm.py'
    path.write_text('def f():\n    from ..weights import hub\n')
    assert imports_of('mindcoat.models.coat', str(path), known) == {'mindcoat.weights.hub'}
    assert layer_of('mindcoat.weights.hub') > layer_of('mindcoat.models.coat')
    path.write_text('from .y import f\n')
    graph = {'mindcoat.engine.x': imports_of('mindcoat.engine.x', str(path), known),
             'mindcoat.engine.y': {'mindcoat.engine.x'}}
    assert find_cycles(graph) == [['mindcoat.engine.x', 'mindcoat.engine.y', 'mindcoat.engine.x']]
    # a package re-exporting its submodule is no circle; the submodule importing it back is
    assert find_cycles({'mindcoat.engine': {'mindcoat.engine.x'}, 'mindcoat.engine.x': set()}) \
        == []
    assert find_cycles({'mindcoat.engine': {'mindcoat.engine.x'},
                        'mindcoat.engine.x': {'mindcoat.engine'}}) != []
