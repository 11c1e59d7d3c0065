"""Sweep files: trials declared as products, zips and chains of values for dotted config keys.

A sweep file is plain Python with a `get_sweep(hyper)` function returning a list of trials, each a
dict of dotted config keys to values, built with `hyper` (this module's `HYPER`):

    def get_sweep(hyper):
      return hyper.product([
          hyper.sweep('optimizer.learning_rate', [1e-4, 1e-3, 1e-2]),
          hyper.sweep('seed', range(4)),
      ])

`sweep_trials(base_config, path)` loads it and checks every trial completely (known keys, types,
valid values of the resolved config) before anything runs.

Trials that differ only in replicate keys are replicates of one setting, which the results average
over. The replicate keys are `('seed',)` unless the sweep file names others at module level:

    REPLICATE_KEYS = ('seed', 'model.dropout_rate')  # () : every trial is its own setting.
"""

import copy
import dataclasses
import difflib
import hashlib
import math
import os
import re
import types
from typing import Any, Iterable, Sequence

import ml_collections

from mlp_mnist import config_checks
from mlp_mnist import config_files
from mlp_mnist import errors
from mlp_mnist.sweeps import sampling

Overrides = dict[str, Any]
# Data keys a sweep file may set, with one value for all its trials (hyper.fixed): the validation
# split that chooses between them must be the same for every trial.
FIXED_DATA_KEYS = ('data.validation_split',)


class SweepError(errors.UserError, ValueError):
  """A sweep file is missing, broken, or declares an unknown key, a wrong type or an invalid value."""


def sweep(key: str, values: Iterable[Any]) -> list[Overrides]:
  """One trial per value of `key`."""
  values = list(values)
  if not values:
    raise SweepError(f'hyper.sweep({key!r}, ...) has no values; give at least one.')
  return [{key: v} for v in values]


def fixed(key: str, value: Any) -> list[Overrides]:
  """One trial setting `key` to `value` (to combine with `product`)."""
  return [{key: value}]


def product(sweeps: Sequence[list[Overrides]]) -> list[Overrides]:
  """Every combination of one trial from each sweep (the last varies fastest)."""
  trials = [{}]
  for s in _checked(sweeps, 'product'):
    trials = [_merged(a, b, 'product') for a in trials for b in s]
  return trials


def zip_sweeps(sweeps: Sequence[list[Overrides]]) -> list[Overrides]:
  """`hyper.zip`: the i-th trials of every sweep together; the sweeps must have equal lengths."""
  sweeps = _checked(sweeps, 'zip')
  lengths = [len(s) for s in sweeps]
  if len(set(lengths)) > 1:
    raise SweepError(f'hyper.zip needs sweeps of equal lengths, got lengths {lengths}.')
  return [_merged_all(parts, 'zip') for parts in zip(*sweeps)]


def chain(sweeps: Sequence[list[Overrides]]) -> list[Overrides]:
  """The trials of each sweep, one sweep after another."""
  return [dict(t) for s in _checked(sweeps, 'chain') for t in s]


GRID_FUNCTIONS = dict(sweep=sweep, fixed=fixed, product=product, zip=zip_sweeps, chain=chain)
# Ranges and sampled trial sets (sampling.py): hyper.uniform/loguniform/integer/choice,
# hyper.quasirandom/random.
HYPER = types.SimpleNamespace(**GRID_FUNCTIONS, **sampling.RangeRecorder().functions())


def _checked(sweeps, name: str) -> list[list[Overrides]]:
  single = isinstance(sweeps, list) and sweeps and all(isinstance(t, dict) for t in sweeps)
  if single or not isinstance(sweeps, (list, tuple)):
    got = 'one sweep' if single else type(sweeps).__name__
    raise SweepError(f'hyper.{name} takes a list of sweeps, e.g. hyper.{name}([hyper.sweep(...), '
                     f'hyper.sweep(...)]); got {got}.')
  if not sweeps:
    raise SweepError(f'hyper.{name}([]) has no sweeps: an empty sweep is an error (it would train '
                     'the base config alone); give at least one sweep.')
  for s in sweeps:
    if not isinstance(s, list) or not all(isinstance(t, dict) for t in s):
      raise SweepError(f'hyper.{name} takes sweeps made by hyper.sweep/fixed/product/zip/chain; '
                       f'got {s!r:.80}.')
  return list(sweeps)


def _merged(a: Overrides, b: Overrides, name: str) -> Overrides:
  both = sorted(set(a) & set(b))
  if both:
    raise SweepError(f'hyper.{name} combines sweeps that both set {both[0]!r}; set each key in one '
                     'of them (use hyper.chain for alternatives).')
  return {**a, **b}


def _merged_all(parts, name: str) -> Overrides:
  merged = {}
  for part in parts:
    merged = _merged(merged, part, name)
  return merged


@dataclasses.dataclass(frozen=True)
class Trial:
  """One trial of a sweep: its folder name, its swept values and its resolved config."""
  name: str
  overrides: Overrides
  config: ml_collections.ConfigDict


DEFAULT_REPLICATE_KEYS = ('seed',)


def _load_module(path: str) -> types.ModuleType:
  return config_files.load_module(path, '_sweep_file')


def _check_exists(path: str) -> None:
  if not os.path.isfile(path):
    raise SweepError(f'sweep file {path} does not exist; pass a file such as '
                     'configs/sweeps/lr_seed.py.')


def load_sweep(path: str, hyper: types.SimpleNamespace = HYPER) -> list[Overrides]:
  """Runs the sweep file's `get_sweep(hyper)`; returns its trials as dicts of overrides."""
  _check_exists(path)
  try:
    module = _load_module(path)
    get_sweep = getattr(module, 'get_sweep', None)
    if not callable(get_sweep):
      raise SweepError('it defines no get_sweep(hyper) function.')
    trials = get_sweep(hyper)
  except (SweepError, sampling.RangeError) as e:
    raise SweepError(f'sweep file {path}: {e}') from None
  except SyntaxError as e:
    raise SweepError(f'sweep file {path}, line {e.lineno}: {e.msg}.') from None
  except SystemExit as e:
    raise SweepError(f'sweep file {path}: it called sys.exit({e.code!r}); a sweep file must return '
                     'its trials from get_sweep(hyper).') from None
  except Exception as e:  # pylint: disable=broad-except
    raise SweepError(f'sweep file {path}: get_sweep failed with {type(e).__name__}: {e}') from None
  if not isinstance(trials, list) or not all(isinstance(t, dict) for t in trials):
    raise SweepError(f'sweep file {path}: get_sweep must return a list of trials (dicts), as '
                     f'hyper.product/zip/chain/sweep do; it returned {type(trials).__name__}.')
  if not trials:
    raise SweepError(f'sweep file {path}: get_sweep returned no trials.')
  return trials


def sweep_ranges(path: str) -> dict[str, sampling.Range]:
  """The ranges the sweep file samples its trials from, by key (empty for a grid)."""
  recorder = sampling.RangeRecorder()
  load_sweep(path, types.SimpleNamespace(**GRID_FUNCTIONS, **recorder.functions()))
  return recorder.ranges


def module_attribute(path: str, name: str, default: Any = None) -> Any:
  """The sweep file's module-level `name` (e.g. `SUCCESSIVE_HALVING`), or `default`."""
  _check_exists(path)
  try:
    return getattr(_load_module(path), name, default)
  except Exception as e:  # pylint: disable=broad-except
    raise SweepError(f'sweep file {path}: loading it failed with {type(e).__name__}: {e}') from None


def replicate_keys(base_config: ml_collections.ConfigDict, path: str) -> tuple[str, ...]:
  """The sweep file's `REPLICATE_KEYS` (default `('seed',)`), each checked to be a config key."""
  _check_exists(path)
  try:
    keys = getattr(_load_module(path), 'REPLICATE_KEYS', DEFAULT_REPLICATE_KEYS)
  except (Exception, SystemExit) as e:  # pylint: disable=broad-except
    raise SweepError(f'sweep file {path}: loading it failed with {type(e).__name__}: {e}') from None
  if isinstance(keys, str) or not isinstance(keys, (tuple, list)) or not all(
      isinstance(k, str) for k in keys):
    raise SweepError(f'sweep file {path}: REPLICATE_KEYS must be a tuple of dotted config keys, '
                     f"e.g. ('seed',); got {keys!r:.80}.")
  known = config_checks.flatten_config(base_config)
  for key in keys:
    if key not in known:
      close = difflib.get_close_matches(key, list(known), n=1)
      hint = f' (did you mean {close[0]!r}?)' if close else ''
      raise SweepError(f'sweep file {path}: REPLICATE_KEYS names unknown config key {key!r}'
                       f'{hint}; use dotted keys of the config (configs/default.py).')
  return tuple(keys)


def sweep_trials(base_config: ml_collections.ConfigDict, path: str,
                 recorded: bool = False) -> list[Trial]:
  """The trials of the sweep file at `path` over `base_config`, each one checked (`recorded`: as
  `config_checks.validate_config` takes it, for reporting a sweep already trained)."""
  return expand(base_config, load_sweep(path), source=f'sweep file {path}', recorded=recorded)


def expand(base_config: ml_collections.ConfigDict, trials: list[Overrides],
           source: str = 'sweep', recorded: bool = False) -> list[Trial]:
  """Applies each trial's overrides to a copy of `base_config` and checks the result."""
  if not trials:
    raise SweepError(f'{source}: the sweep has no trials.')
  known = config_checks.flatten_config(base_config)
  normalized = []
  for overrides in trials:
    normalized.append({k: _normalized(v) for k, v in overrides.items()})
    for key, value in normalized[-1].items():
      _check_key(key, value, known, source)
  _check_unique(normalized, source)
  _check_fixed_data_keys(base_config, normalized, source)
  names = trial_names(normalized)
  result = []
  for index, (name, overrides) in enumerate(zip(names, normalized)):
    config = with_overrides(base_config, overrides)
    try:
      config_checks.validate_config(config, recorded=recorded)
    except config_checks.ConfigError as e:
      raise SweepError(f'{source}: trial {index} ({name}): {e}') from None
    result.append(Trial(name=name, overrides=overrides, config=config))
  return result


def with_overrides(config: ml_collections.ConfigDict,
                   overrides: Overrides) -> ml_collections.ConfigDict:
  """A copy of `config` with the dotted keys of `overrides` set."""
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    *sections, leaf = key.split('.')
    node = config
    for section in sections:
      node = node[section]
    node[leaf] = value
  return config


def _normalized(value: Any) -> Any:
  if hasattr(value, 'item') and getattr(value, 'shape', None) == ():  # numpy scalars
    return value.item()
  if isinstance(value, list):
    return tuple(value)
  return value


def _check_key(key: str, value: Any, known: dict[str, Any], source: str) -> None:
  if key not in known:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f' (did you mean {close[0]!r}?)' if close else ''
    raise SweepError(f'{source}: unknown config key {key!r}{hint}; sweep keys are the dotted keys '
                     'of the config (configs/default.py).')
  if isinstance(value, sampling.Range):
    raise SweepError(f'{source}: {key!r} is a range to search (hyper.optuna), which needs '
                     "BAYESIAN_SEARCH = {'generations': ..., 'trials_per_generation': ...} in the "
                     'sweep file; use hyper.quasirandom or hyper.random to sample a sweep.')
  if key.startswith('data.') and key not in FIXED_DATA_KEYS:
    raise SweepError(f'{source}: {key!r} cannot be swept: every trial trains on the dataset of the '
                     'base config; set it with --config.' + key + '.')
  if key in config_checks.SCHEMA and not config_checks.has_valid_type(key, value):
    requirement = config_checks.SCHEMA[key][2]
    raise SweepError(f'{source}: {key}={value!r} has type {type(value).__name__}; it must be '
                     f'{requirement}.')


def _check_fixed_data_keys(base_config: ml_collections.ConfigDict, trials: list[Overrides],
                           source: str) -> None:
  known = config_checks.flatten_config(base_config)
  for key in FIXED_DATA_KEYS:
    values = {repr(t.get(key, known[key])) for t in trials}
    if len(values) > 1:
      shown = ', '.join(sorted(values))
      raise SweepError(f'{source}: {key!r} takes {len(values)} values ({shown}); '
                       'it must be one value for every trial (hyper.fixed), so that all trials '
                       'are chosen between on the same examples.')


def _same_value(value: Any) -> Any:
  """`value` as trials compare it: numbers by value (1 and 1.0 set the same config), bools apart."""
  if isinstance(value, float) and value.is_integer():
    return int(value)
  return value


def _check_unique(trials: list[Overrides], source: str) -> None:
  seen = {}
  for index, overrides in enumerate(trials):
    identity = repr(sorted((k, _same_value(v)) for k, v in overrides.items()))
    if identity in seen:
      raise SweepError(f'{source}: trials {seen[identity]} and {index} are identical '
                       f'({_describe(overrides)}); each trial must differ.')
    seen[identity] = index


def swept_keys(trials: Sequence[Overrides]) -> list[str]:
  """The keys whose values differ between trials, in order of first appearance."""
  keys = list(dict.fromkeys(k for t in trials for k in t))
  missing = object()
  return [k for k in keys if len({repr(t.get(k, missing)) for t in trials}) > 1]


def trial_names(trials: Sequence[Overrides], legacy: bool = False) -> list[str]:
  """Readable, unique folder names from the swept values, e.g. `learning_rate=0.001,seed=0`.

  A float that needs more than `SHORT_DIGITS` significant digits (a sampled one, or `1e-4*1.06**3`)
  is shown with `NAME_DIGITS`, more where two values of its key would read the same; the full
  value stays in the trial's config.json. `legacy`: the names of sweeps recorded before (every
  value as `str` writes it).
  """
  keys = swept_keys(trials) or list(dict.fromkeys(k for t in trials for k in t))
  leaves = [k.rpartition('.')[2] for k in keys]
  short = {k: (leaf if leaves.count(leaf) == 1 else k) for k, leaf in zip(keys, leaves)}
  digits = {k: None if legacy else _name_digits([t[k] for t in trials if k in t]) for k in keys}
  names = []
  for overrides in trials:
    name = ','.join(f'{short[k]}={_format_value(overrides[k], digits[k])}' for k in keys
                    if k in overrides)
    name = re.sub(r'[^A-Za-z0-9._,=+-]', '_', name) or 'trial'
    if len(name) > 120:
      name = f'{name[:100]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}'
    names.append(name)
  # Different values can read the same ('a b' and 'a_b'): number those names.
  repeated = {n for n in names if names.count(n) > 1}
  seen = {}
  for i, name in enumerate(names):
    if name in repeated:
      seen[name] = seen.get(name, 0) + 1
      names[i] = f'{name}-{seen[name]}'
  return names


SHORT_DIGITS, NAME_DIGITS = 6, 4


def _name_digits(values: Sequence[Any]) -> int:
  """The fewest significant digits (from NAME_DIGITS) that keep the key's values apart."""
  distinct = {repr(v): v for v in values}
  for digits in range(NAME_DIGITS, 18):
    if len({_format_value(v, digits) for v in distinct.values()}) == len(distinct):
      return digits
  return 17


def _format_value(value: Any, digits: int | None = None) -> str:
  """`str(value)`; with `digits`, a float that `SHORT_DIGITS` digits do not hold exactly is shown
  with `digits` significant digits."""
  if isinstance(value, tuple):
    return 'x'.join(_format_value(v, digits) for v in value) if value else 'none'
  if (digits is not None and isinstance(value, float) and math.isfinite(value)
      and float(f'{value:.{SHORT_DIGITS}g}') != value):
    return f'{value:.{digits}g}'
  return str(value)


def short_value(value: Any) -> str:
  """How tables, plots and names show a value: long floats to `NAME_DIGITS` significant digits."""
  return _format_value(value, NAME_DIGITS)


def adopt_recorded_names(trials: Sequence[Trial], recorded: set[str]) -> list[Trial]:
  """`trials`, each named as a sweep recorded before named it where only that folder exists
  (`recorded`: the names of the folders in the workdir), so older sweeps resume and report."""
  legacy_names = trial_names([t.overrides for t in trials], legacy=True)
  return [dataclasses.replace(t, name=old)
          if old != t.name and old in recorded and t.name not in recorded else t
          for t, old in zip(trials, legacy_names)]


def _describe(overrides: Overrides) -> str:
  return ', '.join(f'{k}={v!r}' for k, v in overrides.items()) or 'no overrides'
