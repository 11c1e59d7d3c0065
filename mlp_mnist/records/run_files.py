"""The files a run writes whole: the resolved config, one JSON line per epoch, the summary.

Paths go through `etils.epath`, so a workdir may be local or on a cloud bucket (`gs://...`).
"""

import json
import os

from etils import epath

METRIC_KEYS = ('epoch', 'step', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy',
               'examples_per_sec', 'elapsed_sec')
# The fields of a record that measure time; every other field is a deterministic result.
TIMING_KEYS = ('examples_per_sec', 'elapsed_sec')
METRICS_FILE = 'metrics.jsonl'
DATASET_FILE = 'dataset.json'
SUMMARY_FILE = 'summary.json'


def write_config(workdir: str, config) -> str:
  """Writes the resolved config as `config.json`; returns its path."""
  path = epath.Path(workdir) / 'config.json'
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  return str(path)


def read_config(workdir: str) -> dict | None:
  """The saved `config.json` as a dict, or None when there is none."""
  path = epath.Path(workdir) / 'config.json'
  return json.loads(path.read_text()) if path.exists() else None


def append_metrics(workdir: str, record: dict) -> None:
  """Appends one epoch's record to `metrics.jsonl`."""
  with (epath.Path(workdir) / METRICS_FILE).open('a') as f:
    f.write(json.dumps(record) + '\n')


def write_metrics(workdir: str, records: list[dict]) -> None:
  """Replaces `metrics.jsonl` with `records` (on resume: the history up to the checkpoint)."""
  path = epath.Path(workdir) / METRICS_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))


def write_summary(workdir: str, summary: dict) -> None:
  """Writes `summary.json`: the final epoch's record and where the time went."""
  (epath.Path(workdir) / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + '\n')


def write_dataset_info(workdir: str, info: dict) -> None:
  """Writes `dataset.json`: what the run trained on (`data.Dataset.info()`: name, image shape,
  class count and names, split sizes), so evaluation and prediction need not load the data."""
  write_text_atomic(epath.Path(workdir) / DATASET_FILE, json.dumps(info, indent=2) + '\n')


def read_dataset_info(workdir: str) -> dict | None:
  """The run's `dataset.json` as a dict, or None for runs written before it existed."""
  path = epath.Path(workdir) / DATASET_FILE
  return json.loads(path.read_text()) if path.exists() else None


def read_metrics(workdir: str) -> list[dict]:
  text = (epath.Path(workdir) / METRICS_FILE).read_text()
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def without_timing(record: dict) -> dict:
  """The deterministic part of a record: everything but `TIMING_KEYS`."""
  return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def write_text_atomic(path, text: str) -> None:
  """Writes `text` to a temporary file beside `path`, then renames it over `path`, so a process
  killed mid-write leaves the old file or the new one, never half of either (local or `gs://`)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f'.{path.name}.tmp-{os.getpid()}'
  tmp.write_text(text)
  tmp.replace(path)
