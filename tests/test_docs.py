"""The docs name what exists: every `module.name` of the package in README.md and docs/*.md, and
the recipe for a new metric names the functions an epoch runs."""

import fnmatch
import glob
import importlib
import os
import pkgutil
import re

import mlp_mnist
from mlp_mnist import config_checks
from mlp_mnist import steps

import default
from conftest import REPO

DOCS = [os.path.join(REPO, 'README.md'), *sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))]
FILE_SUFFIXES = ('.py', '.json', '.jsonl', '.png', '.md', '.html', '.csv', '.npz', '.gz', '.txt',
                 '.ipynb', '.yaml', '.toml', '.tmp')
# `module.name` in backticks, e.g. `steps.train_epoch`, `config_checks.RESULT_NEUTRAL_KEYS`.
REFERENCE = re.compile(r'`([a-z_]+(?:\.[A-Za-z_*][\w*]*)+)')
# Module names the docs also use for a value (`dataset.image_shape`: a Dataset's attribute).
VARIABLE_NAMES = ('dataset',)


def _modules() -> dict[str, object]:
  """The package's modules by every dotted suffix of their names (`parallel`, `devices.parallel`)."""
  found = {}
  for info in pkgutil.walk_packages(mlp_mnist.__path__, 'mlp_mnist.'):
    parts = info.name.split('.')[1:]
    for i in range(len(parts)):
      found.setdefault('.'.join(parts[i:]), info.name)
  return found


def _resolves(reference: str, modules: dict[str, str], config_keys) -> bool | None:
  """Whether `reference` names an attribute of a package module (None: not such a reference)."""
  parts = reference.split('.')
  if any(f'.{part}' in FILE_SUFFIXES for part in parts[1:]) or parts[0] in VARIABLE_NAMES:
    return None  # A file name (`provenance.json.damaged-<time>`), or a value's attribute.
  if reference in config_keys:
    return None
  for split in range(len(parts) - 1, 0, -1):
    name = '.'.join(parts[:split])
    if name in modules:
      target = importlib.import_module(modules[name])
      for attribute in parts[split:]:
        matches = fnmatch.filter(dir(target), attribute)
        if not matches:
          return False
        target = getattr(target, matches[0])
      return True
  return None


def test_every_package_reference_in_the_docs_exists():
  modules = _modules()
  config_keys = config_checks.flatten_config(default.get_config())
  missing = []
  for path in DOCS:
    with open(path) as f:
      text = f.read()
    for reference in sorted(set(REFERENCE.findall(text))):
      if _resolves(reference, modules, config_keys) is False:
        missing.append(f'{os.path.relpath(path, REPO)}: `{reference}`')
  assert not missing, missing


def _names_used(function) -> set[str]:
  """The global names `function` and the functions nested in it refer to."""
  names, codes = set(), [function.__code__]
  while codes:
    code = codes.pop()
    names.update(code.co_names)
    codes.extend(c for c in code.co_consts if hasattr(c, 'co_names'))
  return names


def test_the_metric_recipe_names_what_an_epoch_runs():
  """docs/architecture.md's 'A metric' names the step functions a run's epoch and evaluation
  call (a single run scans the step inside `train_epoch`; it never calls `train_step`)."""
  with open(os.path.join(REPO, 'docs', 'architecture.md')) as f:
    text = f.read()
  bullet = text[text.index('- **A metric**'):]
  bullet = bullet[:bullet.index('\n- **')]
  named = re.findall(r'`steps\.(\w+)`', bullet)
  assert named
  run = {'train_epoch', 'evaluate'} | _names_used(steps.train_epoch) | _names_used(steps.evaluate)
  assert set(named) <= run, (named, sorted(run))
