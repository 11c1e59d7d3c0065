"""What a sweep leaves behind, read back from its trial folders: statuses, tables, leaderboards and
plots.

    WORKDIR/trials/NAME/{config.json, metrics.jsonl, summary.json, status, events.out.tfevents.*}
    WORKDIR/results.csv, WORKDIR/results.jsonl     one row per trial, best first
    WORKDIR/summary.csv, WORKDIR/summary.jsonl     one row per setting (replicates aggregated)
    WORKDIR/plots/*.png                            accuracy against each swept key, heatmap, curves

Everything that ranks or chooses uses the validation metrics (`aggregate.ranking_split`); test is
shown beside them but never used to choose. Trials without validation metrics are not ranked: the
tables keep the sweep's order, show test metrics as results only and say `aggregate.NOT_RANKED`
where a best would be named. Everything
sweep-level is rebuilt from the trial folders, so the folders written by several workers merge into
one table. Paths go through `etils.epath`: the workdir may be a cloud bucket.
"""

import csv
import io
import json
import math
from typing import Any, Sequence

import ml_collections
import numpy as np
from etils import epath

from mlp_mnist import config_checks
from mlp_mnist import early_stopping
from mlp_mnist.records import locks
from mlp_mnist.records import recorder
from mlp_mnist.records import run_files
from mlp_mnist.sweeps import aggregate

# A trial's statuses are a run's (`recorder`).
DONE, DIVERGED, FAILED, RUNNING, PENDING, STOPPED, PRUNED = (
    recorder.DONE, recorder.DIVERGED, recorder.FAILED, recorder.RUNNING, recorder.PENDING,
    recorder.STOPPED, recorder.PRUNED)
INTERRUPTED = recorder.INTERRUPTED
# Final results: a re-run skips them (and reruns the others).
FINISHED = (DONE, DIVERGED, STOPPED, PRUNED)
METRIC_COLUMNS = run_files.METRIC_KEYS + ('grad_norm', 'param_norm', 'learning_rate')
VALIDATION_COLUMNS = ('validation_loss', 'validation_accuracy')
SHORT_SPLIT = {'validation': 'val', 'test': 'test', 'train': 'train'}


def trial_dir(workdir: str, name: str) -> str:
  return str(epath.Path(workdir) / 'trials' / name)


# A trial's status file is a run's (`recorder.Recorder` writes both).
write_status = recorder.write_status
read_status = recorder.read_status
read_status_detail = recorder.read_status_detail


def trial_status(directory: str) -> tuple[str | None, str]:
  """A trial's status and its one-line detail as the tables show them: a trial whose status file
  says `running` while no live process holds its folder's lock (its worker was killed, say) is
  `interrupted`, as one a signal stopped; rerunning the sweep's command resumes it."""
  status = read_status(directory)
  if status == RUNNING and (gone := locks.unheld_reason(directory)):
    return INTERRUPTED, (f'left running by a process that is gone ({gone}); rerun the sweep\'s '
                         'command to resume it from its latest checkpoint.')
  return status, read_status_detail(directory)


def result_rows(workdir: str, trials, keys: Sequence[str]) -> list[dict[str, Any]]:
  """One row per trial, in trial order: name, status, the values of `keys` and its final metrics
  (`final_record`; validation ones too when the trial has them)."""
  rows = []
  for trial in trials:
    directory = trial_dir(workdir, trial.name)
    flat = config_checks.flatten_config(trial.config)
    row = {'trial': trial.name, 'status': trial_status(directory)[0] or PENDING}
    row.update({k: flat[k] for k in keys})
    records = read_records(directory) if row['status'] != RUNNING else []
    if records:
      final = final_record(trial.config, records)
      row.update({k: final.get(k) for k in METRIC_COLUMNS})
      row.update({k: final[k] for k in VALIDATION_COLUMNS if k in final})
    rows.append(row)
  return rows


def final_record(config: ml_collections.ConfigDict, records: Sequence[dict]) -> dict:
  """The record a trial's results are those of: its last epoch's, or with early stopping's
  `restore_best_weights` its best epoch's (the weights it ends with, as its summary.json says)."""
  stopper = early_stopping.EarlyStopping(config)
  best = stopper.best_record(records) if stopper.restore_best_weights else None
  return best or records[-1]


def read_records(directory: str) -> list[dict]:
  """A trial's `metrics.jsonl`, or [] when it is missing or half-written."""
  try:
    return run_files.read_metrics(directory)
  except (FileNotFoundError, json.JSONDecodeError):
    return []


def _columns(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[str]:
  metrics = list(METRIC_COLUMNS)
  if any(k in row for row in rows for k in VALIDATION_COLUMNS):
    metrics += [k for k in VALIDATION_COLUMNS if k not in metrics]
  return ['trial', 'status', *keys, *metrics]


def write_tables(workdir: str, rows: list[dict[str, Any]], keys: Sequence[str]) -> list[str]:
  """Writes `results.csv` and `results.jsonl`, best trial first (in sweep order when not ranked);
  returns their paths."""
  columns = _columns(rows, keys)
  rows = aggregate.ranked_rows(rows)
  root = epath.Path(workdir)
  run_files.write_text_atomic(root / 'results.csv', _csv_text(rows, columns))
  run_files.write_text_atomic(root / 'results.jsonl', _jsonl_text(rows, columns))
  return [str(root / 'results.csv'), str(root / 'results.jsonl')]


def _csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
  text = io.StringIO()
  writer = csv.DictWriter(text, columns, extrasaction='ignore', lineterminator='\n')
  writer.writeheader()
  for row in rows:
    writer.writerow({k: _csv_value(row.get(k)) for k in columns})
  return text.getvalue()


def _jsonl_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
  return ''.join(json.dumps({k: _json_value(row.get(k)) for k in columns}) + '\n' for row in rows)


def _csv_value(value: Any) -> Any:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return ''
  if isinstance(value, (tuple, list)):
    return json.dumps(list(value))
  if isinstance(value, dict):
    return aggregate.status_summary(value)
  return value


def _json_value(value: Any) -> Any:
  """JSON has no NaN: undefined statistics are null."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, (tuple, list)):
    return [_json_value(v) for v in value]
  return value


def leaderboard(rows: list[dict[str, Any]], top: int = 10) -> str:
  """The best trials by final validation accuracy, and how many are in each status; without
  validation metrics, `aggregate.NOT_RANKED` and the first trials in sweep order with their test
  metrics (results only)."""
  counts = {}
  for row in rows:
    counts[row['status']] = counts.get(row['status'], 0) + 1
  lines = [f'{len(rows)} trials: ' + ', '.join(f'{n} {s}' for s, n in sorted(counts.items()))]
  split = aggregate.ranking_split(rows)
  if split is None:
    lines.append(aggregate.NOT_RANKED)
  shown = aggregate.shown_split(split)
  listed = [r for r in aggregate.ranked_rows(rows) if aggregate.has_results(r, shown)][:top]
  if listed:
    short = SHORT_SPLIT[shown]
    rank = f'{"rank":>4}  ' if split else ''
    beside = f'  {"test acc":>8}' if split else ''
    lines.append(f'{rank}{short + " acc":>8}  {short + " loss":>9}{beside}  {"epoch":>5}  '
                 f'{"status":8}  trial')
    for i, row in enumerate(listed, 1):
      rank = f'{i:>4}  ' if split else ''
      beside = f'  {aggregate.percent(row.get("test_accuracy")):>8}' if split else ''
      lines.append(f'{rank}{row[f"{shown}_accuracy"]:>8.2%}  {row[f"{shown}_loss"]:>9.4f}'
                   f'{beside}  {row.get("epoch", "-"):>5}  {row["status"]:8}  {row["trial"]}')
  return '\n'.join(lines)


def settings_table(entries: Sequence[dict[str, Any]],
                   split: str | None) -> tuple[list[str], list[list[str]]]:
  """The aggregated leaderboard as a header and rows of text cells (for the console and report);
  without a ranking split (None), the settings' test statistics with no rank and no best."""
  shown = aggregate.shown_split(split)
  short = SHORT_SPLIT[shown]
  header = ['rank'] if split else []
  header += [f'{short} acc mean', '± 95% CI', 'std', 'n', f'{short} loss mean']
  if split:
    header += ['test acc mean', 'test ± 95% CI', 'vs best', 'overlaps best']
  header += ['trials', 'setting']
  table = []
  for e in entries:
    half = (e[f'{shown}_accuracy_ci_high'] - e[f'{shown}_accuracy_mean'])
    cells = [str(e['rank'] or '-')] if split else []
    cells += [aggregate.percent(e[f'{shown}_accuracy_mean']), aggregate.percent(half),
              aggregate.percent(e[f'{shown}_accuracy_std']), str(e['n']),
              aggregate.number(e[f'{shown}_loss_mean'])]
    if split:
      delta = e['delta_vs_best']
      cells += [aggregate.percent(e['test_accuracy_mean']),
                aggregate.percent(e['test_accuracy_ci_high'] - e['test_accuracy_mean']),
                '-' if not aggregate.finite(delta) or e['rank'] == 1 else f'{100 * delta:+.2f} pp',
                aggregate.overlap_mark(e)]
    cells += [aggregate.status_summary(e['statuses']), e['setting']]
    table.append(cells)
  return header, table


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], rule: bool = False) -> str:
  """Columns aligned: the first and last (names) left, the others (numbers) right; `rule`: a
  line of dashes under the header."""
  widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
  lines = []
  for cells in (header, *rows):
    lines.append('  '.join(str(c).rjust(w) if 0 < i < len(cells) - 1 else str(c).ljust(w)
                           for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
  if rule:
    lines.insert(1, '  '.join('-' * w for w in widths))
  return '\n'.join(lines)


def settings_leaderboard(entries: Sequence[dict[str, Any]], split: str | None,
                         replicate_keys: Sequence[str], keys: Sequence[str]) -> str:
  """The aggregated leaderboard with a line saying what it averages and what the marks mean;
  without a ranking split, `aggregate.NOT_RANKED` and the settings in sweep order."""
  swept = [k for k in replicate_keys if k in keys]
  over = (f'mean over {"/".join(swept)}' if swept else
          'no replicate key swept (each setting has one trial, so no intervals; sweep the seed '
          "too, e.g. hyper.sweep('seed', range(3)))")
  if split is None:
    lines = [aggregate.NOT_RANKED,
             f'{len(entries)} settings in sweep order, final test accuracy as a result only '
             f'({over}); 95% CI of the mean (Student t):']
  else:
    lines = [f'{len(entries)} settings ranked by final {split} accuracy ({over}); 95% CI of the '
             "mean (Student t); overlaps best: '*' interval overlaps the best's, '?' undefined "
             '(n < 2):']
  lines.append(text_table(*settings_table(entries, split)))
  return '\n'.join(lines)


def summary_columns(entries: Sequence[dict[str, Any]], keys: Sequence[str],
                    replicate_keys: Sequence[str], split: str | None) -> list[str]:
  """The summary tables' columns; without a ranking split, no rank and nothing against a best."""
  setting_keys = [k for k in keys if k not in replicate_keys]
  splits = (split, 'test') if split else ('test',)
  stats = [f'{s}_{m}_{k}' for s in splits for m in ('accuracy', 'loss')
           for k in ('mean', 'std', 'ci_low', 'ci_high')]
  if split is None:
    return ['setting', *setting_keys, 'n', *stats, 'statuses', 'replicates', 'trials']
  return ['rank', 'setting', *setting_keys, 'n', *stats, 'delta_vs_best', 'overlaps_best',
          'statuses', 'replicates', 'trials']


def write_summary_tables(workdir: str, entries: Sequence[dict[str, Any]], keys: Sequence[str],
                         replicate_keys: Sequence[str], split: str | None) -> list[str]:
  """Writes `summary.csv` and `summary.jsonl`: one row per setting, ranked (in sweep order when
  `split` is None); returns their paths."""
  columns = summary_columns(entries, keys, replicate_keys, split)
  root = epath.Path(workdir)
  run_files.write_text_atomic(root / 'summary.csv', _csv_text(entries, columns))
  run_files.write_text_atomic(root / 'summary.jsonl', _jsonl_text(entries, columns))
  return [str(root / 'summary.csv'), str(root / 'summary.jsonl')]


def _log_scale(key: str, values: Sequence[Any]) -> bool:
  numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
  if not numeric or min(values) <= 0:
    return False
  rate_like = any(word in key for word in ('learning_rate', 'weight_decay', 'eps'))
  return rate_like or max(values) >= 10 * min(values)


def write_plots(workdir: str, rows: list[dict[str, Any]], entries: Sequence[dict[str, Any]],
                keys: Sequence[str], replicate_keys: Sequence[str],
                split: str | None) -> list[str]:
  """The sweep's figures in `plots/`; returns their paths.

  Per swept non-replicate key, `{split}_accuracy_vs_{key}.png`: the mean final accuracy with its
  95% interval as a band, one line per setting of the other keys; with exactly two such keys,
  `{split}_accuracy_heatmap.png`; and `curves_best.png`, the per-epoch curves of the best settings.
  Without a ranking split (None), the first two on test accuracy (results only) and no best curves.
  """
  from mlp_mnist.records import plots  # pylint: disable=g-import-not-at-top
  ranking, split = split, aggregate.shown_split(split)
  entries = [e for e in entries if e['n']]
  setting_keys = [k for k in keys if k not in replicate_keys]
  plots_dir = epath.Path(workdir) / run_files.PLOTS_DIR
  paths = []
  varied = [k for k in setting_keys if len({repr(e[k]) for e in entries}) > 1]
  for key in varied:
    values = _values_in_order(rows, entries, key)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    position = {v: (v if numeric else i) for i, v in enumerate(values)}
    lines = {}
    for e in entries:
      label = aggregate.setting_label({k: e[k] for k in setting_keys if k != key})
      lines.setdefault('' if label == 'all trials' else label, []).append(
          (position[e[key]], e[f'{split}_accuracy_mean'],
           *np.clip([e[f'{split}_accuracy_ci_low'], e[f'{split}_accuracy_ci_high']], 0.0, 1.0)))
    paths.append(plots.save_mean_plot(
        key, lines, str(plots_dir / f'{split}_accuracy_vs_{key}.png'),
        ylabel=f'final {split} accuracy', log_x=_log_scale(key, values),
        categories=None if numeric else [aggregate.display(v) for v in values],
        title=_band_title(rows, replicate_keys, keys)))
  if len(varied) == 2:
    paths.append(_heatmap(plots, rows, entries, varied, split, plots_dir))
  best = entries[:aggregate.NUM_BEST_CURVES] if ranking else []
  if best:
    curves = {}
    statuses = {r['trial']: r['status'] for r in rows}
    for e in best:
      histories = [read_records(trial_dir(workdir, name)) for name in e['trials']
                   if statuses.get(name) in aggregate.WITH_RESULTS]
      curves[e['setting']] = {f'{s}_{m}': aggregate.epoch_curves(histories, f'{s}_{m}')
                              for s in ('train', split) for m in ('loss', 'accuracy')}
  if best and any(len(c['epoch']) for series in curves.values() for c in series.values()):
    paths.append(plots.save_mean_curves(curves, split, str(plots_dir / 'curves_best.png'),
                                        title=_band_title(rows, replicate_keys, keys)))
  return paths


def _band_title(rows, replicate_keys, keys) -> str:
  swept = [k for k in replicate_keys if k in keys]
  if not swept:
    return 'one trial per setting (no replicate key swept)'
  return f'mean and 95% CI over {"/".join(swept)}'


def _values_in_order(rows, entries, key: str) -> list[Any]:
  """The values of `key` that have results: numbers ascending, others in the sweep file's order."""
  present = {repr(e[key]) for e in entries}
  values = list(dict.fromkeys(r[key] for r in rows if repr(r.get(key)) in present))
  if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
    values.sort()
  return values


def _heatmap(plots, rows, entries, varied: Sequence[str], split: str, plots_dir) -> str:
  row_key, column_key = varied
  row_values = _values_in_order(rows, entries, row_key)
  column_values = _values_in_order(rows, entries, column_key)
  means = [[math.nan] * len(column_values) for _ in row_values]
  texts = [[''] * len(column_values) for _ in row_values]
  for e in entries:
    i = row_values.index(e[row_key])
    j = column_values.index(e[column_key])
    means[i][j] = e[f'{split}_accuracy_mean']
    half = e[f'{split}_accuracy_ci_high'] - e[f'{split}_accuracy_mean']
    texts[i][j] = (f'{means[i][j]:.2%}\n±{half:.2%}' if aggregate.finite(half)
                   else f'{means[i][j]:.2%}') + f'\nn={e["n"]}'
  return plots.save_heatmap(
      row_key, column_key, [aggregate.display(v) for v in row_values],
      [aggregate.display(v) for v in column_values], means, texts,
      str(plots_dir / f'{split}_accuracy_heatmap.png'),
      title=f'mean final {split} accuracy (± 95% CI half-width)')
