"""The package's layers, read from its imports (docs/architecture.md): no import cycles, no module
importing one from a higher layer, and the installed package never reaching into the checkout."""

import ast
import os
import subprocess
import sys

import pytest

from conftest import REPO, synthetic_dataset, write_dataset_cache

PACKAGE = os.path.join(REPO, 'mlp_mnist')
# Bottom to top. A module may import its own unit (package or module) and any lower layer; units
# of one layer never import each other.
LAYERS = (
    ('errors', 'configs', 'workarounds'),
    ('config_files', 'registry'),
    ('models', 'optimizers', 'losses', 'augmentations', 'data', 'devices', 'epochs',
     'early_stopping', 'hooks', 'preemption'),
    ('config_checks',),
    ('steps', 'records'),
    ('driver',),
    ('train', 'sweeps'),
    ('tools', 'cli'),
)
LAYER = {unit: i for i, units in enumerate(LAYERS, 1) for unit in units}


def _modules() -> dict[str, str]:
  """Dotted module name -> path, for every module of the package."""
  found = {}
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(root, name)
        parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
        found['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
  return found


def _imported(path: str, modules) -> set[str]:
  """The package's modules that the file at `path` imports, at module level or inside functions."""
  names = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names.update(f'{node.module}.{a.name}' for a in node.names)
  return {n for n in names if n in modules}


def _unit(module: str) -> str:
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else ''


def test_every_module_has_a_layer():
  units = {_unit(m) for m in _modules()} - {''}
  assert units <= set(LAYER), f'place {sorted(units - set(LAYER))} in LAYERS (docs/architecture.md)'


def _import_graph() -> dict[str, set[str]]:
  modules = _modules()
  return {m: _imported(p, modules) - {m} for m, p in modules.items()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
  """Imports of a higher layer's module, or of a neighbour unit in the same layer."""
  wrong = []
  for module, targets in graph.items():
    unit = _unit(module)
    for target in sorted(targets):
      other = _unit(target)
      if unit and other and other != unit and LAYER[other] >= LAYER[unit]:
        wrong.append(f'{module} (layer {LAYER[unit]}) imports {target} (layer {LAYER[other]})')
  return wrong


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as a list of modules, or None. A package's `__init__` importing its own
  modules is not a cycle through them."""
  graph = {m: {t for t in ts if not t.startswith(m + '.')} for m, ts in graph.items()}
  state = {}

  def visit(module, trail):
    state[module] = 'open'
    for target in sorted(graph.get(module, ())):
      if state.get(target) == 'open':
        return trail + [module, target]
      if target not in state:
        cycle = visit(target, trail + [module])
        if cycle:
          return cycle
    state[module] = 'done'
    return None

  for module in sorted(graph):
    if module not in state:
      cycle = visit(module, [])
      if cycle:
        return cycle
  return None


def test_no_module_imports_a_higher_layer_or_a_neighbour():
  assert not layer_violations(_import_graph())


def test_no_import_cycles():
  assert find_cycle(_import_graph()) is None


def test_the_checks_catch_wrong_imports_and_cycles():
  graph = {'mlp_mnist.data.pipeline': {'mlp_mnist.train'}, 'mlp_mnist.train': set(),
           'mlp_mnist.steps': {'mlp_mnist.records.workdirs'}, 'mlp_mnist.records.workdirs': set()}
  assert layer_violations(graph) == [
      'mlp_mnist.data.pipeline (layer 3) imports mlp_mnist.train (layer 7)',
      'mlp_mnist.steps (layer 5) imports mlp_mnist.records.workdirs (layer 5)']
  cyclic = {'mlp_mnist.a': {'mlp_mnist.b'}, 'mlp_mnist.b': {'mlp_mnist.c'},
            'mlp_mnist.c': {'mlp_mnist.a'}}
  assert find_cycle(cyclic) == ['mlp_mnist.a', 'mlp_mnist.b', 'mlp_mnist.c', 'mlp_mnist.a']
  assert find_cycle({'mlp_mnist.models': {'mlp_mnist.models.mlp'}, 'mlp_mnist.models.mlp': set()}) is None


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """The package installed the ordinary way (a non-editable wheel) into a fresh virtual environment
  whose other packages come from this one, with nothing of the checkout on its path."""
  root = tmp_path_factory.mktemp('installed')
  venv = root / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
  python = str(venv / 'bin' / 'python')
  site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                        capture_output=True, text=True, check=True).stdout.strip()
  deps = [p for p in sys.path if p.endswith('site-packages') and os.path.isdir(p)]
  with open(os.path.join(site, 'dependencies.pth'), 'w') as f:  # No editable finder: not a site dir.
    f.write('\n'.join(deps) + '\n')
  subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps',
                  '--no-build-isolation', '--target', site, REPO], check=True,
                 cwd=str(root))
  return {'python': python, 'root': root}


def _run(installed, *args):
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'XLA_FLAGS')}
  env['JAX_PLATFORMS'] = 'cpu'
  result = subprocess.run([installed['python'], *args], capture_output=True, text=True, env=env,
                          cwd=str(installed['root']), timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_a_regular_install_runs_every_tool_from_any_directory(installed):
  root = installed['root']
  where = _run(installed, '-c', 'import mlp_mnist; print(mlp_mnist.__file__)')
  assert not where.startswith(REPO), where
  assert not os.path.exists(os.path.join(os.path.dirname(where), '..', 'benchmarks', '__init__.py'))
  dataset = synthetic_dataset(num_train=256, num_test=100)
  write_dataset_cache(root / 'cache', dataset)
  common = [f'--config.data.cache_dir={root / "cache"}', '--jax_cache_dir=',
            '--config.num_epochs=1', '--config.eval_batch_size=50']
  scripts = os.path.join(REPO, 'scripts')
  out = _run(installed, os.path.join(scripts, 'train.py'),
             f'--config={os.path.join(REPO, "configs", "fast.py")}', *common,
             f'--workdir={root / "run"}')
  assert 'Final test accuracy' in out
  out = _run(installed, os.path.join(scripts, 'evaluate.py'), f'--workdir={root / "run"}')
  assert 'per-class accuracy' in out
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(dataset['test'][0][0]).save(root / 'digit.png')
  out = _run(installed, os.path.join(scripts, 'predict.py'), f'--workdir={root / "run"}',
             str(root / 'digit.png'))
  assert 'digit.png' in out
  sweep_file = root / 'two.py'
  sweep_file.write_text("def get_sweep(hyper):\n"
                        "  return hyper.sweep('optimizer.learning_rate', [1e-3, 2e-3])\n")
  # A config file outside the checkout builds on the shipped default by name.
  (root / 'mine.py').write_text('from mlp_mnist import config_files\n\n\ndef get_config():\n'
                                "  config = config_files.shipped_config('default')\n"
                                '  config.model.hidden_sizes = (32,)\n  return config\n')
  out = _run(installed, os.path.join(scripts, 'sweep.py'), f'--config={root / "mine.py"}', *common,
             f'--sweep={sweep_file}', f'--workdir={root / "sweep"}', '--cpu_devices=1')
  assert (root / 'sweep' / 'results.csv').exists(), out
  assert (root / 'sweep' / 'report.html').exists(), out
  out = _run(installed, os.path.join(scripts, 'compare.py'), str(root / 'run'),
             str(root / 'sweep' / 'trials' / 'learning_rate=0.002'),
             f'--output={root / "compare.png"}')
  assert 'optimizer.learning_rate' in out and (root / 'compare.png').exists()
