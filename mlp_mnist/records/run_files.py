"""The files a run writes whole: the resolved config, one JSON line per epoch, the summary.

Paths go through `etils.epath`, so a workdir may be local or on a cloud bucket (`gs://...`).
"""

import errno
import importlib
import json
import os
import sys
import threading
from typing import Any, Callable, Sequence

from etils import epath

from mlp_mnist import errors

METRIC_KEYS = ('epoch', 'step', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy',
               'examples_per_sec', 'elapsed_sec')
# The fields of a record that measure time; every other field is a deterministic result.
TIMING_KEYS = ('examples_per_sec', 'elapsed_sec')
CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
DATASET_FILE = 'dataset.json'
SUMMARY_FILE = 'summary.json'
PLOTS_DIR = 'plots'  # A run's or a sweep's plots.
STATUS_FILE = 'status'  # Written by `recorder.Recorder`.


class WorkdirError(errors.UserError, RuntimeError):
  """The workdir holds a different run, or a record that cannot be read or written; the message
  says how to proceed."""


def write_config(workdir: str, config) -> str:
  """Writes the resolved config as `config.json`; returns its path."""
  path = epath.Path(workdir) / CONFIG_FILE
  write_text_atomic(path, config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  return str(path)


def read_config(workdir: str) -> dict | None:
  """The saved `config.json` as a dict, or None when there is none."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return None
  return read_json(path, 'delete it to resume with the config you give (the checkpoints do not '
                   'hold one), or pass --restart to start over')


def read_json(path, remedy: str) -> Any:
  """The JSON value in `path`; a damaged file is a WorkdirError naming it and `remedy`."""
  path = epath.Path(path)
  try:
    return json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError.
    raise WorkdirError(f'{path} is damaged ({type(e).__name__}: {e}); {remedy}.') from e


def append_metrics(workdir: str, record: dict) -> None:
  """Appends one epoch's record to `metrics.jsonl` (an interrupted append is dropped on reading)."""
  path = epath.Path(workdir) / METRICS_FILE
  try:
    with path.open('a') as f:
      f.write(json.dumps(record) + '\n')
  except OSError as e:
    raise write_error(path, e) from e


def write_metrics(workdir: str, records: list[dict]) -> None:
  """Replaces `metrics.jsonl` with `records` (on resume: the history up to the checkpoint)."""
  write_text_atomic(epath.Path(workdir) / METRICS_FILE,
                    ''.join(json.dumps(r) + '\n' for r in records))


def write_summary(workdir: str, summary: dict) -> None:
  """Writes `summary.json`: the final epoch's record and where the time went."""
  write_text_atomic(epath.Path(workdir) / SUMMARY_FILE, json.dumps(summary, indent=2) + '\n')


def write_dataset_info(workdir: str, info: dict) -> None:
  """Writes `dataset.json`: what the run trained on (`data.Dataset.info()`: name, image shape,
  class count and names, split sizes), so evaluation and prediction need not load the data."""
  write_text_atomic(epath.Path(workdir) / DATASET_FILE, json.dumps(info, indent=2) + '\n')


def read_dataset_info(workdir: str) -> dict | None:
  """The run's `dataset.json` as a dict, or None for runs written before it existed."""
  path = epath.Path(workdir) / DATASET_FILE
  if not path.exists():
    return None
  remedy = ('delete it (the next training run rewrites it from the data), or pass --restart to '
            'start over')
  info = read_json(path, remedy)
  if not (isinstance(info, dict) and isinstance(info.get('image_shape'), list)
          and isinstance(info.get('num_classes'), int)):
    raise WorkdirError(f'{path} is damaged (no image_shape and num_classes); {remedy}.')
  return info


def read_metrics(workdir: str) -> list[dict]:
  """The records of `metrics.jsonl`. A last line without its newline that does not parse is an
  append cut short and is left out; any other damaged line is a WorkdirError."""
  path = epath.Path(workdir) / METRICS_FILE
  text = path.read_text()
  lines = text.split('\n')
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except ValueError as e:
      if number == len(lines):  # No newline after it: the append never finished.
        break
      raise WorkdirError(
          f'{path} is damaged at line {number} ({e}); rerun the same command to rewrite it from '
          'the latest checkpoint, or delete it.') from e
  return records


def without_timing(record: dict) -> dict:
  """The deterministic part of a record: everything but `TIMING_KEYS`."""
  return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def import_in_background(modules: Sequence[str],
                         import_module: Callable[[str], Any] = importlib.import_module) -> None:
  """Imports `modules` (those not loaded yet) with `import_module` on a daemon thread, while the
  caller works on."""
  missing = [m for m in modules if m not in sys.modules]

  def load():
    for module in missing:
      import_module(module)

  if missing:
    threading.Thread(target=load, name=f'import-{missing[0]}', daemon=True).start()


def is_remote(path) -> bool:
  """Whether `path` is on object storage (`gs://...`, any URL) rather than a local disk."""
  return '://' in str(path)


def write_text_atomic(path, text: str) -> None:
  """Writes `text` to a temporary file beside `path`, then renames it over `path`, so a process
  killed mid-write leaves the old file or the new one, never half of either.

  On object storage (`gs://`) the object is written directly: an object appears only once its
  upload completes, and a bucket has no rename (gcsfs copies and deletes, after a failed request).
  A storage error (full disk, read-only or unwritable workdir) is a WorkdirError naming the file;
  the old file is left as it was.
  """
  path = epath.Path(path)
  if is_remote(path):
    try:
      write_file(path, text)
    except OSError as e:
      raise write_error(path, e) from e
    return
  tmp = path.parent / f'.{path.name}.tmp-{os.getpid()}'
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(tmp, text)
    tmp.replace(path)
  except OSError as e:
    try:
      if tmp.exists():
        tmp.unlink()
    except OSError:
      pass
    raise write_error(path, e) from e


def write_file(path: epath.Path, text: str) -> None:
  """Writes `text` to `path` and, on a local disk, forces it there before the rename that
  publishes it (so a crash of the machine cannot publish an empty file)."""
  with path.open('w') as f:
    f.write(text)
    if not is_remote(path):
      f.flush()
      os.fsync(f.fileno())


def write_error(path, error: OSError) -> WorkdirError:
  """The one-line error for a failed write of `path`: what happened and what to do."""
  if error.errno in (errno.ENOSPC, getattr(errno, 'EDQUOT', errno.ENOSPC)):
    remedy = 'free disk space'
  elif isinstance(error, PermissionError) or error.errno == errno.EROFS:
    remedy = 'make the workdir writable (or choose another --workdir)'
  else:
    remedy = 'check the storage'
  reason = error.strerror or str(error) or type(error).__name__
  return WorkdirError(f'cannot write {path} ({reason}); {remedy}, then rerun the same command: '
                      'the run resumes from its latest checkpoint.')
