"""Ranges of config values, and trial sets sampled from them: quasi-random (scrambled Halton or
Sobol, `scipy.stats.qmc`) or random, with a seed, so the same sweep file gives the same trials.

    def get_sweep(hyper):
      return hyper.product([
          hyper.quasirandom([hyper.loguniform('optimizer.learning_rate', 1e-4, 1e-1),
                             hyper.uniform('optimizer.b1', 0.8, 0.99)], num_trials=64, seed=0),
          hyper.sweep('seed', range(2)),  # Replicates combine as with grids.
      ])

Each point of the unit cube maps to one trial: uniform ranges linearly, log ranges linearly in the
logarithm, integer ranges to equal bins of `[low, high]`, categorical ones to equal bins of their
values.
"""

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from mlp_mnist import errors

KINDS = ('uniform', 'log', 'int', 'choice')


class RangeError(errors.UserError, ValueError):
  """A range or a sampled trial set is declared wrongly (empty, inverted, log through zero...)."""


@dataclasses.dataclass(frozen=True)
class Range:
  """Values of one dotted config key: `kind` is one of `KINDS`; `choices` for 'choice'."""
  key: str
  kind: str
  low: float | None = None
  high: float | None = None
  choices: tuple[Any, ...] = ()

  def value(self, unit: float) -> Any:
    """The value at `unit` in [0, 1): a Python float, int or one of the choices."""
    if self.kind == 'uniform':
      return float(self.low + unit * (self.high - self.low))
    if self.kind == 'log':
      return float(math.exp(math.log(self.low) + unit * (math.log(self.high) - math.log(self.low))))
    if self.kind == 'int':
      return int(min(self.high, self.low + math.floor(unit * (self.high - self.low + 1))))
    return self.choices[min(len(self.choices) - 1, math.floor(unit * len(self.choices)))]

  def describe(self) -> dict[str, Any]:
    """What sweep.json records of it (the report draws log ranges on a log axis)."""
    if self.kind == 'choice':
      return {'kind': 'choice', 'choices': list(self.choices)}
    return {'kind': self.kind, 'low': self.low, 'high': self.high}


def _number(value: Any, what: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    raise RangeError(f'{what} must be a finite number; got {value!r}.')
  return value


def _bounds(name: str, key: str, low: Any, high: Any) -> None:
  _number(low, f'hyper.{name}({key!r}, low, high): low')
  _number(high, f'hyper.{name}({key!r}, low, high): high')
  if low >= high:
    raise RangeError(f'hyper.{name}({key!r}, {low!r}, {high!r}) is '
                     f'{"empty" if low == high else "inverted"}; give low < high.')


def uniform(key: str, low: float, high: float) -> Range:
  """Floats between `low` and `high`, spread evenly."""
  _bounds('uniform', key, low, high)
  return Range(key, 'uniform', float(low), float(high))


def loguniform(key: str, low: float, high: float) -> Range:
  """Floats between `low` and `high` (both > 0), spread evenly in their logarithm."""
  _bounds('loguniform', key, low, high)
  if low <= 0:
    raise RangeError(f'hyper.loguniform({key!r}, {low!r}, {high!r}) includes zero or negative '
                     'values; a log range needs 0 < low < high (use hyper.uniform otherwise).')
  return Range(key, 'log', float(low), float(high))


def integer(key: str, low: int, high: int) -> Range:
  """Integers from `low` to `high`, both included."""
  if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
    raise RangeError(f'hyper.integer({key!r}, {low!r}, {high!r}) takes integer bounds.')
  _bounds('integer', key, low, high)
  return Range(key, 'int', low, high)


def choice(key: str, values: Sequence[Any]) -> Range:
  """One of `values` (categorical)."""
  values = tuple(tuple(v) if isinstance(v, list) else v for v in values)
  if not values:
    raise RangeError(f'hyper.choice({key!r}, ...) has no values; give at least one.')
  return Range(key, 'choice', choices=values)


def _checked_ranges(ranges: Sequence[Range], name: str) -> list[Range]:
  if isinstance(ranges, Range) or not isinstance(ranges, (list, tuple)) or not ranges or not all(
      isinstance(r, Range) for r in ranges):
    raise RangeError(f'hyper.{name} takes a non-empty list of ranges (hyper.uniform, loguniform, '
                     f'integer, choice); got {ranges!r:.80}.')
  keys = [r.key for r in ranges]
  repeated = sorted({k for k in keys if keys.count(k) > 1})
  if repeated:
    raise RangeError(f'hyper.{name} has two ranges for {repeated[0]!r}; give one per key.')
  return list(ranges)


def _checked_count(num_trials: Any, seed: Any, name: str) -> None:
  if isinstance(num_trials, bool) or not isinstance(num_trials, int) or num_trials < 1:
    raise RangeError(f'hyper.{name}: num_trials must be a positive integer; got {num_trials!r}.')
  if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
    raise RangeError(f'hyper.{name}: seed must be a non-negative integer; got {seed!r}.')


def trials_from_points(ranges: Sequence[Range], points: np.ndarray) -> list[dict[str, Any]]:
  """One trial (dotted key -> value) per row of `points`, a `[trials, len(ranges)]` array in
  [0, 1)."""
  return [{r.key: r.value(float(u)) for r, u in zip(ranges, row)} for row in points]


def quasirandom(ranges: Sequence[Range], num_trials: int, seed: int = 0,
                method: str = 'halton') -> list[dict[str, Any]]:
  """`num_trials` trials from a scrambled Halton (or Sobol) sequence over `ranges`."""
  ranges = _checked_ranges(ranges, 'quasirandom')
  _checked_count(num_trials, seed, 'quasirandom')
  from scipy.stats import qmc  # pylint: disable=g-import-not-at-top
  if method == 'halton':
    engine = qmc.Halton(len(ranges), scramble=True, seed=seed)
  elif method == 'sobol':
    engine = qmc.Sobol(len(ranges), scramble=True, seed=seed)
  else:
    raise RangeError(f"hyper.quasirandom: method must be 'halton' or 'sobol'; got {method!r}.")
  return trials_from_points(ranges, engine.random(num_trials))


def random(ranges: Sequence[Range], num_trials: int, seed: int = 0) -> list[dict[str, Any]]:
  """`num_trials` trials drawn independently and uniformly over `ranges` (numpy's PCG64)."""
  ranges = _checked_ranges(ranges, 'random')
  _checked_count(num_trials, seed, 'random')
  return trials_from_points(ranges, np.random.default_rng(seed).random((num_trials, len(ranges))))


def optuna_space(ranges: Sequence[Range]) -> list[dict[str, Any]]:
  """One trial holding the ranges themselves: Optuna's sampler fills them in, generation after
  generation (the sweep file's BAYESIAN_SEARCH; sweeps/bayesian.py)."""
  return [{r.key: r for r in _checked_ranges(ranges, 'optuna')}]


class RangeRecorder:
  """Keeps every range a sweep file builds (sweep.json and the report need their kinds)."""

  def __init__(self):
    self.ranges: dict[str, Range] = {}

  def functions(self) -> dict[str, Any]:
    """The `hyper.*` functions of this module, recording the ranges they make."""

    def recorded(make):
      def make_and_record(*args, **kwargs):
        made = make(*args, **kwargs)
        self.ranges[made.key] = made
        return made
      make_and_record.__doc__ = make.__doc__
      return make_and_record

    return {'uniform': recorded(uniform), 'loguniform': recorded(loguniform),
            'integer': recorded(integer), 'choice': recorded(choice),
            'quasirandom': quasirandom, 'random': random, 'optuna': optuna_space}
