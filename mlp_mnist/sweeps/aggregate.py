"""Replicates of a sweep: trials that differ only in replicate keys (`seed` by default) are one
setting, summarized by the mean, standard deviation and 95% confidence interval of its final
metrics.

Only trials that finished with results (`done`, `stopped`) enter the statistics; diverged, failed,
unfinished or unknown statuses are counted per setting and shown, never averaged in. A setting with
one such trial has an undefined interval (NaN here, None in JSON, '-' in tables), not a zero one.
"""

import math
from typing import Any, Sequence

import numpy as np

from mlp_mnist.records import recorder
from mlp_mnist.sweeps import sweep_files

# A trial's status, in its `status` file (a run's: `recorder`).
DONE, DIVERGED, FAILED, RUNNING, PENDING, STOPPED, PRUNED = (
    recorder.DONE, recorder.DIVERGED, recorder.FAILED, recorder.RUNNING, recorder.PENDING,
    recorder.STOPPED, recorder.PRUNED)
WITH_RESULTS = (DONE, STOPPED)  # Final statuses whose metrics are valid results.
CONFIDENCE = 0.95
NUM_BEST_CURVES = 3
NAN = float('nan')
NOT_RANKED = ('not ranked: the trials hold out no validation split (set data.validation_split to '
              'rank and choose)')


def t_quantile(p: float, df: float) -> float:
  """The `p` quantile of Student's t distribution with `df` degrees of freedom."""
  if not 0 < p < 1 or not df > 0:
    raise ValueError(f't_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}.')
  from scipy import stats  # pylint: disable=g-import-not-at-top  (a fraction of a second)
  return float(stats.t.ppf(p, df))


def describe(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, Any]:
  """n, mean, standard deviation (ddof=1) and the t interval of the mean of `values`.

  With fewer than two values the deviation and interval are NaN (undefined), never zero.
  """
  values = np.asarray(values, dtype=np.float64)
  n = len(values)
  mean = float(values.mean()) if n else NAN
  std = float(values.std(ddof=1)) if n > 1 else NAN
  half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n) if n > 1 else NAN
  return {'n': n, 'mean': mean, 'std': std, 'ci_low': mean - half, 'ci_high': mean + half}


def finite(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def percent(value: Any, digits: int = 2) -> str:
  """`value` as a percentage, '-' when it is not a finite number."""
  return f'{value:.{digits}%}' if finite(value) else '-'


def number(value: Any, digits: int = 4) -> str:
  """`value` with `digits` decimals, '-' when it is not a finite number."""
  return f'{value:.{digits}f}' if finite(value) else '-'


def has_results(row: dict[str, Any], split: str = 'test') -> bool:
  """Whether a trial finished with valid final metrics (a done or stopped trial)."""
  return (row.get('status') in WITH_RESULTS and finite(row.get(f'{split}_accuracy'))
          and finite(row.get(f'{split}_loss')))


def ranking_split(rows: Sequence[dict[str, Any]]) -> str | None:
  """'validation' when the trials with results carry validation metrics, else None: nothing ranks
  or chooses on the test set (README, issue 23).

  Everything that ranks or chooses uses this split; test metrics are shown beside it, never used
  to choose. Without it, tables keep the sweep's order and say `NOT_RANKED`.
  """
  valid = [r for r in rows if r.get('status') in WITH_RESULTS]
  return 'validation' if valid and all(has_results(r, 'validation') for r in valid) else None


def shown_split(split: str | None) -> str:
  """The split whose metrics the tables show: the ranking split, else test (a result only)."""
  return split or 'test'


def ranked_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Trials with results first, by the ranking split's accuracy (then loss), then the others in
  their order; without a ranking split, all in their order."""
  split = ranking_split(rows)
  if split is None:
    return list(rows)
  valid = [r for r in rows if has_results(r, split)]
  valid.sort(key=lambda r: (-r[f'{split}_accuracy'], r[f'{split}_loss']))
  return valid + [r for r in rows if not has_results(r, split)]


def setting_label(values: dict[str, Any]) -> str:
  """`learning_rate=0.001,width=64`: the leaf names of the keys (dotted where leaves repeat)."""
  leaves = [k.rpartition('.')[2] for k in values]
  return ','.join(f'{leaf if leaves.count(leaf) == 1 else k}={display(v)}'
                  for (k, v), leaf in zip(values.items(), leaves)) or 'all trials'


def display(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(map(str, value)) + (',' if len(value) == 1 else '') + ')'
  return sweep_files.short_value(value)  # Sampled floats to a few significant digits.


def settings(rows: Sequence[dict[str, Any]], keys: Sequence[str],
             replicate_keys: Sequence[str] = sweep_files.DEFAULT_REPLICATE_KEYS
             ) -> list[dict[str, Any]]:
  """One entry per setting of the non-replicate `keys`, ranked (see module docstring).

  Each holds: `setting` (its label), the values of the non-replicate keys, `trials` (their names),
  `statuses` (counts), `replicates` (the replicate values of the trials with results), `n`,
  `{split}_{accuracy,loss}_{mean,std,ci_low,ci_high}` for the ranking split and for `test`,
  `rank` (None without results), `delta_vs_best` (accuracy) and `overlaps_best` (True for the best
  one and those whose interval overlaps it, False, or None where an interval is undefined).
  Without a ranking split, the settings keep the sweep's order, none ranked (`rank` None).
  """
  split = ranking_split(rows)
  splits = (split, 'test') if split else ('test',)
  setting_keys = [k for k in keys if k not in replicate_keys]
  groups = {}
  for row in rows:
    identity = tuple(repr(row.get(k)) for k in setting_keys)
    groups.setdefault(identity, []).append(row)
  result = []
  for members in groups.values():
    values = {k: members[0].get(k) for k in setting_keys}
    entry = {'setting': setting_label(values), **values,
             'trials': [r['trial'] for r in members], 'statuses': {}}
    for row in members:
      entry['statuses'][row['status']] = entry['statuses'].get(row['status'], 0) + 1
    valid = [r for r in members if has_results(r, shown_split(split))]
    entry['replicates'] = [tuple(r.get(k) for k in replicate_keys if k in keys) for r in valid]
    entry['n'] = len(valid)
    for s in splits:
      for metric in ('accuracy', 'loss'):
        stats = describe([r[f'{s}_{metric}'] for r in valid])
        entry.update({f'{s}_{metric}_{k}': v for k, v in stats.items() if k != 'n'})
    result.append(entry)
  return _ranked(result, split)


def _ranked(entries: list[dict[str, Any]], split: str | None) -> list[dict[str, Any]]:
  if split is None:
    for entry in entries:
      entry.update(rank=None, delta_vs_best=NAN, overlaps_best=None)
    return entries
  mean, loss = f'{split}_accuracy_mean', f'{split}_loss_mean'
  with_results = sorted((e for e in entries if e['n']), key=lambda e: (-e[mean], e[loss]))
  best = with_results[0] if with_results else None
  for rank, entry in enumerate(with_results, 1):
    entry['rank'] = rank
    entry['delta_vs_best'] = entry[mean] - best[mean]
    entry['overlaps_best'] = True if entry is best else overlaps(best, entry, split)
  without = [e for e in entries if not e['n']]
  for entry in without:
    entry.update(rank=None, delta_vs_best=NAN, overlaps_best=None)
  return with_results + without


def overlaps(a: dict[str, Any], b: dict[str, Any], split: str) -> bool | None:
  """Whether the accuracy intervals of settings `a` and `b` overlap; None when one is undefined."""
  low, high = f'{split}_accuracy_ci_low', f'{split}_accuracy_ci_high'
  if not all(finite(e[k]) for e in (a, b) for k in (low, high)):
    return None
  return a[low] <= b[high] and b[low] <= a[high]


def overlap_mark(entry: dict[str, Any]) -> str:
  """'best', '*' (interval overlaps the best one's), '' (it does not) or '?' (undefined)."""
  if entry.get('rank') == 1:
    return 'best'
  return {True: '*', False: '', None: '?'}[entry.get('overlaps_best')]


def status_summary(statuses: dict[str, int]) -> str:
  return ', '.join(f'{n} {s}' for s, n in sorted(statuses.items(), key=lambda x: (-x[1], x[0])))


def epoch_curves(histories: Sequence[Sequence[dict]], key: str) -> dict[str, np.ndarray]:
  """Per epoch, `describe` of `key` over the replicates' histories (each a list of records).

  Epochs a replicate has not logged are left out of that epoch's statistics.
  """
  by_epoch = {}
  for history in histories:
    for record in history:
      if finite(record.get(key)):
        by_epoch.setdefault(record['epoch'], []).append(record[key])
  epochs = sorted(by_epoch)
  stats = [describe(by_epoch[e]) for e in epochs]
  curves = {'epoch': np.asarray(epochs),
            **{k: np.asarray([s[k] for s in stats], dtype=np.float64)
               for k in ('n', 'mean', 'ci_low', 'ci_high')}}
  low, high = metric_bounds(key)
  for bound in ('ci_low', 'ci_high'):
    curves[bound] = np.clip(curves[bound], low, high)
  return curves


def metric_bounds(key: str) -> tuple[float, float]:
  """The values a metric can take (an interval band is drawn within them): accuracies [0, 1],
  losses [0, inf)."""
  if key.endswith('accuracy'):
    return 0.0, 1.0
  return (0.0, math.inf) if key.endswith('loss') else (-math.inf, math.inf)
