"""The sweep's report: `report.md`, and the same as a self-contained `report.html` (images inline).

Built from what the trial folders hold, so it can be rebuilt at any time (`scripts/sweep.py
--report_only`), also while the sweep is partly finished. It gives the sweep file and command, the
base config's differences from the reference (default) config, the aggregated leaderboard, the
plots, the timings and the trials' statuses.
"""

import base64
import dataclasses
import datetime
import html
import json
import re
from typing import Any, Sequence

import ml_collections
from etils import epath

from mlp_mnist import config_checks
from mlp_mnist.records import run_files
from mlp_mnist.sweeps import aggregate
from mlp_mnist.sweeps import results

REPORT_MD, REPORT_HTML = 'report.md', 'report.html'


@dataclasses.dataclass
class Block:
  """One piece of the report: kind is 'h1', 'h2', 'p', 'code', 'table' or 'image'."""
  kind: str
  text: str = ''
  header: Sequence[str] = ()
  rows: Sequence[Sequence[str]] = ()


def config_differences(config: ml_collections.ConfigDict,
                       reference: ml_collections.ConfigDict) -> list[list[str]]:
  """[key, reference value, value] for every dotted key whose values differ."""
  flat, base = config_checks.flatten_config(config), config_checks.flatten_config(reference)
  missing = '(absent)'
  return [[key, aggregate.display(base.get(key, missing)),
           aggregate.display(flat.get(key, missing))]
          for key in config_checks.differing_keys(base, flat)]


def timings(workdir: str, rows: Sequence[dict[str, Any]]) -> dict[str, float] | None:
  """Seconds compiling, training, evaluating and in all, summed over the program runs that wrote
  the trials' `summary.json` (each trial there holds its program's timings), and trials per second.
  """
  runs = {}
  for row in rows:
    path = epath.Path(results.trial_dir(workdir, row['trial'])) / run_files.SUMMARY_FILE
    try:
      summary_timings = json.loads(path.read_text()).get('timings') if path.exists() else None
    except json.JSONDecodeError:
      continue
    if summary_timings:
      identity = json.dumps(summary_timings, sort_keys=True)
      runs.setdefault(identity, [summary_timings, 0])[1] += 1
  if not runs:
    return None
  total = {'program_runs': len(runs), 'trials': sum(n for _, n in runs.values())}
  for key in ('compile_sec', 'train_sec', 'validation_sec', 'eval_sec', 'total_sec'):
    total[key] = sum(t.get(key, 0.0) for t, _ in runs.values())
  total['trials_per_sec'] = total['trials'] / total['total_sec'] if total['total_sec'] else None
  return total


def build(workdir: str, sweep_path: str | None, config: ml_collections.ConfigDict | None,
          reference_config: ml_collections.ConfigDict | None, rows: Sequence[dict[str, Any]],
          entries: Sequence[dict[str, Any]], keys: Sequence[str], replicate_keys: Sequence[str],
          split: str | None, plot_paths: Sequence[str]) -> list[Block]:
  """The report's blocks (see module docstring); `split` is the ranking split, None when the
  trials hold out none (then nothing is ranked or called best: `aggregate.NOT_RANKED`)."""
  shown = aggregate.shown_split(split)
  root = epath.Path(workdir)
  sweep_info = _read_json(root / 'sweep.json')
  blocks = [Block('h1', f'Sweep report: {root.name}'),
            Block('p', f'Written {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC '
                  f'from the trial folders in `{workdir}`; rebuild it with `scripts/sweep.py ... '
                  '--report_only` (the same flags).')]
  counts = {}
  for row in rows:
    counts[row['status']] = counts.get(row['status'], 0) + 1
  swept = [k for k in replicate_keys if k in keys]
  blocks.append(Block('p', (
      f'{len(rows)} trials ({aggregate.status_summary(counts)}), {len(entries)} settings. '
      'Swept keys: '
      + ', '.join(f'`{k}`' for k in keys) + '. Replicate keys: '
      + (', '.join(f'`{k}`' for k in swept) if swept else 'none swept (one trial per setting)')
      + (f'. Ranked by final **{split}** accuracy; test accuracy is shown beside it, never used '
         'to choose.' if split else
         f'. {aggregate.NOT_RANKED}; test accuracy is shown as a result only.'))))
  if counts.get(results.RUNNING) or counts.get(results.PENDING) or counts.get(
      results.INTERRUPTED):
    blocks.append(Block('p', '**Partial sweep**: trials still running, interrupted or pending are '
                        'left out of every statistic below.'))
  if counts.get(results.INTERRUPTED):
    blocks.append(Block('p', f'**{counts[results.INTERRUPTED]} trial(s) interrupted** (stopped by '
                        'a signal, or left `running` by a process that is gone); this command '
                        'resumes them from their latest checkpoints:'))
    blocks.append(Block('code', (sweep_info or {}).get('command') or
                        'python scripts/sweep.py ... (the flags the sweep was started with)'))

  blocks.append(Block('h2', 'Sweep file and command'))
  command = (sweep_info or {}).get('command')
  if command:
    blocks.append(Block('code', command))
  sweep_file = sweep_path or (sweep_info or {}).get('sweep_file')
  if sweep_file:
    blocks.append(Block('p', f'`{sweep_file}`:'))
    try:
      blocks.append(Block('code', epath.Path(sweep_file).read_text().rstrip()))
    except OSError:
      blocks.append(Block('p', '(the sweep file could not be read)'))

  blocks.append(Block('h2', 'Base config'))
  if config is not None and reference_config is not None:
    differences = config_differences(config, reference_config)
    blocks.append(Block('p', 'Differences from the default config (configs/default.py), before '
                        'the swept values:' if differences else
                        'The default config (configs/default.py), plus the swept values.'))
    if differences:
      blocks.append(Block('table', header=['key', 'default', 'this sweep'], rows=differences))
  else:
    blocks.append(Block('p', 'No reference config given; each trial folder holds its full '
                        '`config.json`.'))

  blocks.append(Block('h2', 'Leaderboard (settings)' if split else 'Settings (sweep order)'))
  if split is None:
    blocks.append(Block('p', aggregate.NOT_RANKED + '.'))
  blocks.append(Block('p', (
      f'Final {shown} accuracy per setting{"" if split else ", in sweep order"}: mean over the '
      'replicates that finished (`done` or `stopped`), its standard deviation (ddof=1) and the '
      'half-width of the 95% confidence interval of the mean (Student t, n-1 degrees of freedom). '
      + ("'overlaps best': `*` the interval overlaps the best setting's, so this sweep cannot tell "
         'the two apart (a conservative reading: intervals that do not overlap mean a significant '
         'difference, overlapping ones do not prove equality); `?` undefined (n < 2). '
         if split else '')
      + 'Diverged, failed and unfinished trials are counted in the trials column, never averaged '
      'in.')))
  if entries:
    header, table = results.settings_table(entries, split)
    blocks.append(Block('table', header=header, rows=table))
  else:
    blocks.append(Block('p', 'No trial has finished yet.'))

  blocks.append(Block('h2', 'Plots'))
  for path in plot_paths:
    blocks.append(Block('image', str(epath.Path(path).relative_to(root))))
  if not plot_paths:
    blocks.append(Block('p', 'No plots yet (no finished trials, or nothing varied).'))

  blocks.append(Block('h2', 'Timings'))
  spent = timings(workdir, rows)
  if spent:
    blocks.append(Block('table', header=['program runs', 'trials', 'compile s', 'train s', 'eval s',
                                         'total s', 'trials per second'],
                        rows=[[str(spent['program_runs']), str(spent['trials']),
                               *(f'{spent[k]:.1f}' for k in ('compile_sec', 'train_sec',
                                                             'eval_sec', 'total_sec')),
                               aggregate.number(spent['trials_per_sec'], 3)]]))
    blocks.append(Block('p', 'Summed over the compiled programs that trained the trials with a '
                        '`summary.json` (diverged trials have none); workers run in parallel, so '
                        'with several the wall time is shorter.'))
  else:
    blocks.append(Block('p', 'No timings yet.'))

  blocks.append(Block('h2', 'Trials'))
  table = []
  for row in aggregate.ranked_rows(rows):
    detail = results.trial_status(results.trial_dir(workdir, row['trial']))[1]
    table.append([row['trial'], row['status'], aggregate.percent(row.get(f'{shown}_accuracy')),
                  aggregate.percent(row.get('test_accuracy')) if split else '',
                  str(row.get('epoch') or '-'), detail])
  header = ['trial', 'status', f'{shown} acc', 'test acc', 'epoch', 'detail']
  if split is None:
    header, table = header[:3] + header[4:], [r[:3] + r[4:] for r in table]
  blocks.append(Block('table', header=header, rows=table))
  return blocks


def _read_json(path) -> dict | None:
  try:
    return json.loads(path.read_text()) if path.exists() else None
  except json.JSONDecodeError:
    return None


def to_markdown(blocks: Sequence[Block]) -> str:
  parts = []
  for block in blocks:
    if block.kind == 'h1':
      parts.append(f'# {block.text}')
    elif block.kind == 'h2':
      parts.append(f'## {block.text}')
    elif block.kind == 'p':
      parts.append(block.text)
    elif block.kind == 'code':
      parts.append(f'```\n{block.text}\n```')
    elif block.kind == 'image':
      parts.append(f'![{block.text}]({block.text})')
    elif block.kind == 'table':
      cell = lambda c: str(c).replace('|', '\\|').replace('\n', ' ')
      lines = ['| ' + ' | '.join(map(cell, block.header)) + ' |',
               '| ' + ' | '.join('---' for _ in block.header) + ' |']
      lines += ['| ' + ' | '.join(map(cell, row)) + ' |' for row in block.rows]
      parts.append('\n'.join(lines))
  return '\n\n'.join(parts) + '\n'


def _inline(text: str) -> str:
  """Escaped text with markdown's `code` and **bold** as HTML."""
  text = html.escape(text)
  text = re.sub(r'`([^`]+)`', r'<code>\1</code>', text)
  return re.sub(r'\*\*([^*]+)\*\*', r'<b>\1</b>', text)


def to_html(blocks: Sequence[Block], workdir: str) -> str:
  """One HTML file: the images embedded as base64 data, so it can be mailed or attached."""
  body = []
  for block in blocks:
    if block.kind in ('h1', 'h2'):
      body.append(f'<{block.kind}>{_inline(block.text)}</{block.kind}>')
    elif block.kind == 'p':
      body.append(f'<p>{_inline(block.text)}</p>')
    elif block.kind == 'code':
      body.append(f'<pre><code>{html.escape(block.text)}</code></pre>')
    elif block.kind == 'image':
      data = base64.b64encode((epath.Path(workdir) / block.text).read_bytes()).decode('ascii')
      body.append(f'<figure><img alt="{html.escape(block.text)}" '
                  f'src="data:image/png;base64,{data}"><figcaption>{html.escape(block.text)}'
                  '</figcaption></figure>')
    elif block.kind == 'table':
      head = ''.join(f'<th>{html.escape(str(c))}</th>' for c in block.header)
      rows = ''.join('<tr>' + ''.join(f'<td>{html.escape(str(c))}</td>' for c in row) + '</tr>'
                     for row in block.rows)
      body.append(f'<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')
  title = html.escape(blocks[0].text if blocks else 'Sweep report')
  return ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>' + title + '</title>'
          '<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}'
          'table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;'
          'padding:2px 6px;text-align:right}td:last-child,th:last-child{text-align:left}'
          'pre{background:#f4f4f4;padding:0.6em;overflow-x:auto}img{max-width:100%}</style>'
          '</head><body>\n' + '\n'.join(body) + '\n</body></html>\n')


def write_report(workdir: str, blocks: Sequence[Block]) -> list[str]:
  """Writes `report.md` and `report.html` into `workdir`; returns their paths."""
  root = epath.Path(workdir)
  run_files.write_text_atomic(root / REPORT_MD, to_markdown(blocks))
  run_files.write_text_atomic(root / REPORT_HTML, to_html(blocks, workdir))
  return [str(root / REPORT_MD), str(root / REPORT_HTML)]
