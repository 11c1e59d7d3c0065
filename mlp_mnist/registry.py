"""Components by name (models, losses, optimizers, augmentations), and the researcher's own code.

Each registry maps a name to a `Component`: what builds it, its config keys' defaults and checks
(relative to its config section: `config.model`, `config.loss`, ...) and which of those keys are
per-trial values (arrays in the train state: trials differing only in them share one compiled
program) rather than structure. A component of your own is a function in a file of yours,
registered with the registry's decorator and named in `config.imports`:

    from mlp_mnist import models

    @models.MODELS.register('resmlp', defaults={'resmlp.width': 256}, schema={...})
    def build(model_config, num_classes): ...

`import_user_code(config.imports)` imports those files (or modules) before a config is checked.
"""

import dataclasses
import hashlib
import importlib
import importlib.util
import os
import sys
from typing import Any, Callable, Iterator, Mapping, Sequence

from mlp_mnist import errors

# key -> (accepted types, check, what a valid value is), as config_checks.SCHEMA has them.
Schema = Mapping[str, tuple[tuple[type, ...], Callable[[Any], bool], str]]


class UnknownComponentError(errors.UserError, ValueError):
  """A config names a component no registry holds."""


class ImportFailedError(errors.UserError, ImportError):
  """A module or file of `config.imports` cannot be imported."""


@dataclasses.dataclass(frozen=True)
class Component:
  """A registered component: `build` and its config keys (relative to its section).

  `defaults`: each key's default, merged into a config that selects the component and lacks it.
  `schema`: each key's (types, check, requirement). `per_trial`: keys whose values reach the
  steps as arrays (sweepable in one program). `check(section) -> str | None`: a cross-key check
  returning what is wrong, in one line.
  """
  name: str
  build: Callable[..., Any]
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  schema: Schema = dataclasses.field(default_factory=dict)
  per_trial: tuple[str, ...] = ()
  check: Callable[[Any], str | None] | None = None


class Registry:
  """Name -> `Component` for one kind of component, selected by `config.<section>.name`."""

  def __init__(self, kind: str, section: str):
    self.kind, self.section = kind, section
    self._components: dict[str, Component] = {}

  def register(self, name: str, *, defaults: Mapping[str, Any] | None = None,
               schema: Schema | None = None, per_trial: Sequence[str] = (),
               check: Callable[[Any], str | None] | None = None):
    """Decorator registering `build` under `name`; registering a name again replaces it only
    with the same function (a file imported twice, or its copy), else it is an error."""

    def decorator(build):
      old = self._components.get(name)
      if old is not None and _origin(old.build) != _origin(build) and not _same_code(
          old.build, build):
        raise ValueError(f'{self.kind} {name!r} is already registered (by {_origin(old.build)}); '
                         'choose another name.')
      missing = set(defaults or {}) ^ set(schema or {})
      if missing:
        raise ValueError(f'{self.kind} {name!r}: keys {sorted(missing)} need both a default and '
                         'a schema entry.')
      self._components[name] = Component(name, build, dict(defaults or {}), dict(schema or {}),
                                         tuple(per_trial), check)
      return build

    return decorator

  def __getitem__(self, name: str) -> Component:
    if name not in self._components:
      raise UnknownComponentError(
          f'unknown {self.kind} {name!r} (config.{self.section}.name); choose one of '
          f'{sorted(self._components)}, or register yours in a file named in config.imports.')
    return self._components[name]

  def __contains__(self, name: object) -> bool:
    return name in self._components

  def __iter__(self) -> Iterator[str]:
    return iter(self._components)

  def __len__(self) -> int:
    return len(self._components)

  def components(self) -> list[Component]:
    return list(self._components.values())


def _origin(build) -> str:
  return f'{getattr(build, "__module__", "?")}.{getattr(build, "__qualname__", "?")}'


def _same_code(a, b) -> bool:
  """Whether two builders are the same function (a file and its copy imported in one process)."""
  code = lambda f: getattr(getattr(f, '__code__', None), 'co_code', None)
  return getattr(a, '__qualname__', None) == getattr(b, '__qualname__', None) and (
      code(a) is not None and code(a) == code(b))


_IMPORTED_FILES: dict[str, Any] = {}  # absolute path -> module, so a file runs once per process.


def import_user_code(imports: Sequence[str]) -> None:
  """Imports each module name or `.py` file path of `imports` (`config.imports`), in order.

  A failure is an ImportFailedError naming the entry and the error's first line.
  """
  for entry in imports:
    try:
      if entry.endswith('.py'):
        import_file(entry)
      else:
        importlib.import_module(entry)
    except errors.UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      first_line = (str(e).strip().splitlines() or [''])[0]
      raise ImportFailedError(f'config.imports: cannot import {entry!r}: '
                              f'{type(e).__name__}: {first_line}') from None


def import_file(path: str):
  """The module a `.py` file defines, run once per process (by absolute path)."""
  path = os.path.abspath(os.path.expanduser(path))
  if path in _IMPORTED_FILES:
    return _IMPORTED_FILES[path]
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no such file {path}')
  name = 'mlp_mnist_user_' + hashlib.sha256(path.encode()).hexdigest()[:12] + '_' + (
      os.path.splitext(os.path.basename(path))[0])
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # Pickling and dataclasses look modules up by name.
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise
  _IMPORTED_FILES[path] = module
  return module

