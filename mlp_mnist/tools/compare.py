"""Comparing runs: single runs' workdirs or sweep trial folders, side by side.

`compare(paths, output)` returns a table of the config keys whose values differ between the runs
(and their final metrics), and draws their learning curves overlaid in one picture.
"""

import json
import os
from typing import Any, Sequence

from etils import epath

from mlp_mnist import config_checks
from mlp_mnist.records import plots
from mlp_mnist.records import run_files
from mlp_mnist.records import workdirs
from mlp_mnist.sweeps import aggregate
from mlp_mnist.sweeps import results


def read_run(path: str) -> tuple[dict[str, Any], list[dict]]:
  """A run's flattened `config.json` and its `metrics.jsonl` records."""
  root = epath.Path(path)
  if not root.is_dir():
    raise workdirs.WorkdirError(f'{path} is not a folder; pass run workdirs or sweep trial '
                                'folders (runs/<sweep>/trials/<name>).')
  if not (root / 'config.json').exists():
    hint = (f'it is a sweep workdir: pass its trial folders, e.g. {path}/trials/*'
            if (root / 'trials').is_dir() else
            'pass the --workdir of a training run or a sweep trial folder')
    raise workdirs.WorkdirError(f'{path} has no config.json; {hint}.')
  try:
    config = json.loads((root / 'config.json').read_text())
    records = run_files.read_metrics(path) if (root / run_files.METRICS_FILE).exists() else []
  except json.JSONDecodeError as e:
    raise workdirs.WorkdirError(f'{path}: a damaged config.json or metrics.jsonl ({e}).') from None
  flat = config_checks.flatten_config(config)
  return {k: tuple(v) if isinstance(v, list) else v for k, v in flat.items()}, records


def labels(paths: Sequence[str]) -> list[str]:
  """The shortest trailing parts of `paths` that tell them apart (e.g. the folder names)."""
  parts = [os.path.normpath(p).split(os.sep) for p in paths]
  for depth in range(1, max(map(len, parts)) + 1):
    names = ['/'.join(p[-depth:]) for p in parts]
    if len(set(names)) == len(names):
      return names
  return [f'{i}:{p}' for i, p in enumerate(paths)]


def config_table(configs: Sequence[dict[str, Any]]) -> list[list[str]]:
  """[key, value in each run] for every key whose values are not all equal."""
  return [[key, *(aggregate.display(c[key]) if key in c else '(absent)' for c in configs)]
          for key in config_checks.differing_keys(*configs)]


def curve_split(histories: Sequence[Sequence[dict]]) -> str:
  """'validation' when every run records validation metrics, else 'test'."""
  return ('validation' if histories and all(h and 'validation_accuracy' in h[-1] for h in histories)
          else 'test')


def metrics_table(histories: Sequence[Sequence[dict]], split: str) -> list[list[str]]:
  """The final epoch, and final loss and accuracy of each run (training, `split`, test)."""
  rows = [['final epoch', *(str(h[-1]['epoch']) if h else '-' for h in histories)]]
  parts = ('train', split, 'test') if split != 'test' else ('train', 'test')
  for part in parts:
    for metric, fmt in (('accuracy', '{:.2%}'), ('loss', '{:.4f}')):
      key = f'{part}_{metric}'
      rows.append([key, *(fmt.format(h[-1][key]) if h and key in h[-1] else '-'
                          for h in histories)])
  return rows


def compare(paths: Sequence[str], output: str) -> str:
  """The config differences and final metrics of the runs at `paths` as text; draws their curves
  overlaid into `output` (a PNG)."""
  if len(paths) < 2:
    raise workdirs.WorkdirError(f'compare needs at least two runs, got {len(paths)}.')
  runs = [read_run(p) for p in paths]
  names = labels(paths)
  configs, histories = [c for c, _ in runs], [h for _, h in runs]
  split = curve_split(histories)
  differences = config_table(configs)
  lines = [f'{name}: {path}' for name, path in zip(names, paths) if name != path]
  lines.append(results.text_table(['config key', *names], differences, rule=True)
               if differences else 'Their configs are identical.')
  lines.append('')
  lines.append(results.text_table(['final metric', *names], metrics_table(histories, split),
                                  rule=True))
  plots.save_overlaid_curves(dict(zip(names, histories)), split, output)
  lines.append(f'\nCurves ({split} solid, training dashed): {output}')
  return '\n'.join(lines)
