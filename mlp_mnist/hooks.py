"""Hooks: the researcher's own code, run on the host after each evaluated epoch.

A hook is a function `hook(record, state) -> dict[str, float] | None`: `record` is the epoch's record
(the keys of `metrics.jsonl`), `state` the train state (`state.params`, `state.step`, ...). The
scalars it returns join the record, so they reach `metrics.jsonl`, TensorBoard (tagged by their
key) and `summary.json` like the built-in metrics. Hooks run outside compiled code, after the
epoch's evaluation; a run without hooks does no extra work.

Select them in the config, by a name registered in `HOOKS` or a 'module:function' path
(`--config.hooks="('per_layer_weight_norms', 'my_project.probes:dead_units')"`, or a file:
'probes.py:dead_units'), or pass callables
to `train.train_and_evaluate(..., hooks=[...])`.
"""

import importlib
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from mlp_mnist import errors
from mlp_mnist import registry

Hook = Callable[[dict, Any], Mapping[str, float] | None]


class HookError(errors.UserError, ValueError):
  """A hook cannot be found, or returned something that is not a dict of new scalar metrics."""


def per_layer_weight_norms(record: dict, state) -> dict[str, float]:
  """The L2 norm of each layer's parameters, as `weight_norm/<layer>` (e.g. weight_norm/Dense_0)."""
  del record
  params = jax.device_get(state.params)
  return {f'weight_norm/{layer}': float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                                                      for x in jax.tree.leaves(tree))))
          for layer, tree in params.items()}


# name -> hook, for `config.hooks`.
HOOKS: dict[str, Hook] = {
    'per_layer_weight_norms': per_layer_weight_norms,
}


def resolve(name: str) -> Hook:
  """The hook `name` stands for: a key of `HOOKS` or a 'module:function' path."""
  if name in HOOKS:
    return HOOKS[name]
  module_name, _, function = name.rpartition(':')
  if not module_name or not function:
    raise HookError(f'{name!r} is neither a registered hook ({sorted(HOOKS)}) nor a '
                    "'module:function' path.")
  try:
    module = (registry.import_file(module_name) if module_name.endswith('.py')
              else importlib.import_module(module_name))
  except (ImportError, OSError) as e:
    raise HookError(f'cannot import module {module_name!r} of hook {name!r} ({e}); check the '
                    'name and that it is on PYTHONPATH.') from None
  hook = getattr(module, function, None)
  if not callable(hook):
    raise HookError(f'module {module_name!r} has no function {function!r} (hook {name!r}).')
  return hook


def resolve_all(names: Sequence[str], extra: Sequence[Hook] = ()) -> list[Hook]:
  """The config's hooks, by name, then the callables passed from Python."""
  return [resolve(n) for n in names] + list(extra)


def run_hooks(hooks: Sequence[Hook], record: dict, state) -> dict:
  """`record` with the metrics every hook returns added; a name clash or a non-scalar value is a
  HookError naming the hook."""
  record = dict(record)
  for hook in hooks:
    added = hook(record, state) or {}
    name = getattr(hook, '__name__', repr(hook))
    if not isinstance(added, Mapping):
      raise HookError(f'hook {name} returned {type(added).__name__}; return a dict of scalars.')
    for key, value in added.items():
      if key in record:
        raise HookError(f'hook {name} returned {key!r}, which the epoch record already has; '
                        'choose another name.')
      if np.ndim(value) != 0 or not np.issubdtype(np.asarray(value).dtype, np.number):
        raise HookError(f'hook {name} returned {key!r}={value!r}; metrics must be scalars.')
      record[key] = float(value)
  return record
