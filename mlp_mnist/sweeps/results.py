"""What a sweep leaves behind, read back from its trial folders: statuses, tables, leaderboard, plots.

    WORKDIR/trials/NAME/{config.json, metrics.jsonl, summary.json, status}   one folder per trial
    WORKDIR/results.csv, WORKDIR/results.jsonl                                one row per trial
    WORKDIR/plots/test_accuracy_vs_KEY.png                                    one plot per swept key

Everything sweep-level is rebuilt from the trial folders, so the folders written by several workers
merge into one table. Paths go through `etils.epath`: the workdir may be a cloud bucket.
"""

import csv
import io
import json
import math
from typing import Any, Sequence

from etils import epath

from mlp_mnist import config_checks
from mlp_mnist.records import run_files

DONE, DIVERGED, FAILED, RUNNING, PENDING = 'done', 'diverged', 'failed', 'running', 'pending'
STOPPED = 'stopped'  # Ended by early stopping.
FINISHED = (DONE, DIVERGED, STOPPED)  # Final results: a re-run skips them (and reruns the others).
METRIC_COLUMNS = run_files.METRIC_KEYS + ('grad_norm', 'param_norm', 'learning_rate')


def trial_dir(workdir: str, name: str) -> str:
  return str(epath.Path(workdir) / 'trials' / name)


def write_status(directory: str, status: str, detail: str = '') -> None:
  """Writes `status`: the status on the first line, then what happened (for diverged/failed)."""
  (epath.Path(directory) / 'status').write_text(status + ('\n' + detail if detail else '') + '\n')


def read_status(directory: str) -> str | None:
  """The trial's status, or None when it has not started."""
  path = epath.Path(directory) / 'status'
  return (path.read_text().split('\n', 1)[0].strip() or None) if path.exists() else None


def result_rows(workdir: str, trials, keys: Sequence[str]) -> list[dict[str, Any]]:
  """One row per trial: name, status, the values of `keys` and its last epoch's metrics."""
  rows = []
  for trial in trials:
    directory = trial_dir(workdir, trial.name)
    flat = config_checks.flatten_config(trial.config)
    row = {'trial': trial.name, 'status': read_status(directory) or PENDING}
    row.update({k: flat[k] for k in keys})
    records = _read_records(directory) if row['status'] != RUNNING else []
    if records:
      row.update({k: records[-1].get(k) for k in METRIC_COLUMNS})
    rows.append(row)
  return rows


def _read_records(directory: str) -> list[dict]:
  try:
    return run_files.read_metrics(directory)
  except (FileNotFoundError, json.JSONDecodeError):
    return []


def write_tables(workdir: str, rows: list[dict[str, Any]], keys: Sequence[str]) -> list[str]:
  """Writes `results.csv` and `results.jsonl`; returns their paths."""
  columns = ['trial', 'status', *keys, *METRIC_COLUMNS]
  text = io.StringIO()
  writer = csv.DictWriter(text, columns, extrasaction='ignore', lineterminator='\n')
  writer.writeheader()
  for row in rows:
    writer.writerow({k: _csv_value(row.get(k)) for k in columns})
  root = epath.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  (root / 'results.csv').write_text(text.getvalue())
  (root / 'results.jsonl').write_text(
      ''.join(json.dumps({k: row.get(k) for k in columns}) + '\n' for row in rows))
  return [str(root / 'results.csv'), str(root / 'results.jsonl')]


def _csv_value(value: Any) -> Any:
  if value is None:
    return ''
  if isinstance(value, tuple):
    return json.dumps(list(value))
  return value


def _accuracy(row) -> float:
  value = row.get('test_accuracy')
  return value if isinstance(value, (int, float)) and math.isfinite(value) else -1.0


def leaderboard(rows: list[dict[str, Any]], top: int = 10) -> str:
  """The best trials by final test accuracy, and how many trials are in each status."""
  counts = {}
  for row in rows:
    counts[row['status']] = counts.get(row['status'], 0) + 1
  lines = [f'{len(rows)} trials: ' + ', '.join(f'{n} {s}' for s, n in sorted(counts.items()))]
  ranked = sorted((r for r in rows if _accuracy(r) >= 0), key=_accuracy, reverse=True)[:top]
  if ranked:
    lines.append(f'{"rank":>4}  {"test acc":>8}  {"test loss":>9}  {"epoch":>5}  {"status":8}  trial')
    for rank, row in enumerate(ranked, 1):
      lines.append(f'{rank:>4}  {row["test_accuracy"]:>8.2%}  {row["test_loss"]:>9.4f}  '
                   f'{row["epoch"]:>5}  {row["status"]:8}  {row["trial"]}')
  return '\n'.join(lines)


def _display(value: Any) -> str:
  if isinstance(value, tuple):
    return '(' + ','.join(map(str, value)) + ')'
  return str(value)


def write_plots(workdir: str, rows: list[dict[str, Any]], keys: Sequence[str]) -> list[str]:
  """One PNG per swept key: final test accuracy against its values, a line per other setting."""
  from mlp_mnist.records import plots  # pylint: disable=g-import-not-at-top
  rows = [r for r in rows if _accuracy(r) >= 0]
  paths = []
  for key in keys:
    values = list(dict.fromkeys(r[key] for r in rows))
    if len(values) < 2:
      continue
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    position = {v: (v if numeric else i) for i, v in enumerate(values)}
    lines = {}
    for row in rows:
      label = ', '.join(f'{k.rpartition(".")[2]}={_display(row[k])}' for k in keys if k != key)
      lines.setdefault(label, []).append((position[row[key]], row['test_accuracy']))
    log_x = numeric and min(values) > 0 and max(values) >= 10 * min(values)
    paths.append(plots.save_sweep_plot(
        key, lines, str(epath.Path(workdir) / 'plots' / f'test_accuracy_vs_{key}.png'),
        log_x=log_x, categories=None if numeric else [_display(v) for v in values]))
  return paths
