"""What a run leaves behind: the resolved config, one JSON line per epoch, the console line."""

import json
import os

METRIC_KEYS = ('epoch', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy',
               'examples_per_sec', 'elapsed_sec')


def write_config(workdir: str, config) -> str:
  """Writes the resolved config as `config.json`; returns its path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'config.json')
  with open(path, 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  return path


def append_metrics(workdir: str, record: dict) -> None:
  """Appends one epoch's record to `metrics.jsonl`."""
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write(json.dumps(record, sort_keys=False) + '\n')


def write_summary(workdir: str, summary: dict) -> None:
  """Writes `summary.json`: the final epoch's record and where the time went."""
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
    f.write('\n')


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def format_epoch(record: dict) -> str:
  return (f"epoch {record['epoch']:3d}  train loss {record['train_loss']:.4f} "
          f"acc {record['train_accuracy']:.2%}  test loss {record['test_loss']:.4f} "
          f"acc {record['test_accuracy']:.2%}  {record['examples_per_sec']:,.0f} ex/s  "
          f"{record['elapsed_sec']:.1f}s")
