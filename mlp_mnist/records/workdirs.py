"""A run's workdir: whether it may be resumed, and everything the run writes into it.

Only JAX process 0 writes (`is_lead_process`), so multi-host runs do not collide; checkpoints are the
exception, being orbax's collective saves. The workdir holds `config.json`, `dataset.json`,
`provenance.json`, `metrics.jsonl`, `summary.json`, TensorBoard event files, `plots/` and
`checkpoints/`; on request `profile/` (a trace) and `tracking.json` (the W&B and MLflow runs it
logs to). `recorder.Recorder` writes the records.
"""

import json

import jax
import ml_collections
from etils import epath

from mlp_mnist import config_checks
from mlp_mnist.devices import parallel
from mlp_mnist.records import checkpointing
from mlp_mnist.records import provenance
from mlp_mnist.records import run_files
from mlp_mnist.records import tracking

PROFILE_DIR = 'profile'
# What `restart` removes: the outputs of an earlier run, nothing else the user may keep there.
RUN_OUTPUTS = (run_files.CONFIG_FILE, run_files.DATASET_FILE, provenance.PROVENANCE_FILE,
               f'{provenance.PROVENANCE_FILE}.damaged-*', run_files.METRICS_FILE,
               run_files.SUMMARY_FILE, run_files.PLOTS_DIR, checkpointing.CHECKPOINTS_DIR,
               checkpointing.CORRUPT_DIR, 'events.out.tfevents.*', '.*.tmp-*', PROFILE_DIR,
               tracking.TRACKING_FILE, run_files.STATUS_FILE)

# The workdir holds a different run, or a record that cannot be read or written.
WorkdirError = run_files.WorkdirError


def is_lead_process() -> bool:
  """Whether this process writes the run's outputs (JAX process 0)."""
  return jax.process_index() == 0


def config_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """Keys that affect results and differ between a saved config and `config`, as 'key: a -> b'."""
  saved, requested = config_checks.comparable_config(saved), config_checks.comparable_config(config)
  missing = '(absent)'
  neutral = config_checks.result_neutral_keys(config)
  return [f'{key}: {saved.get(key, missing)!r} -> {requested.get(key, missing)!r}'
          for key in config_checks.differing_keys(saved, requested) if key not in neutral]


def prepare(workdir: str, config: ml_collections.ConfigDict, restart: bool) -> None:
  """Checks that `workdir` is new or holds this same run; with `restart`, clears it instead."""
  if restart:
    if is_lead_process():
      clear(workdir)
    parallel.sync('restart_cleared_workdir')
    return
  saved = run_files.read_config(workdir)
  if saved is None:
    return
  differences = config_differences(saved, config)
  if differences and not has_trained(workdir):
    # A run that failed before its first epoch (a batch that did not fit in memory, say) leaves
    # only records of its start: a corrected rerun starts afresh without --restart.
    if is_lead_process():
      clear(workdir)
    parallel.sync('fresh_workdir_cleared')
    return
  if differences:
    shown = '; '.join(differences[:5]) + ('; ...' if len(differences) > 5 else '')
    raise WorkdirError(
        f'workdir {workdir} holds a run with a different config ({shown}). Rerun with its config '
        'to resume it, pass --restart to discard it and start over, or choose another --workdir.')


def has_trained(workdir: str) -> bool:
  """Whether `workdir` holds a checkpoint or a recorded epoch (not only a run's first records)."""
  root = epath.Path(workdir)
  for name in (checkpointing.CHECKPOINTS_DIR, checkpointing.CORRUPT_DIR):
    if (root / name).exists() and any((root / name).iterdir()):
      return True
  metrics = root / run_files.METRICS_FILE
  return metrics.exists() and bool(metrics.read_text().strip())


def check_dataset(workdir: str, info: dict) -> None:
  """Refuses to resume a run on data of another image shape or class count (its `dataset.json`)."""
  saved = run_files.read_dataset_info(workdir)
  if saved is None:
    return
  was = (tuple(saved['image_shape']), saved['num_classes'])
  now = (tuple(info['image_shape']), info['num_classes'])
  if was != now:
    raise WorkdirError(
        f'workdir {workdir} holds a run on {was[1]} classes of images {was[0]}, but the data now '
        f'has {now[1]} classes of {now[0]}; pass --restart to start over on it, or choose another '
        '--workdir.')


def clear(workdir: str) -> None:
  """Removes an earlier run's outputs (`RUN_OUTPUTS`) from `workdir`."""
  root = epath.Path(workdir)
  if not root.exists():
    return
  for pattern in RUN_OUTPUTS:
    for path in root.glob(pattern):
      if path.is_dir():
        path.rmtree()
      else:
        path.unlink()


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir's run was trained with (its `config.json`), checked."""
  saved = run_files.read_config(workdir)
  if saved is None:
    raise WorkdirError(f'{workdir} has no config.json; is it the --workdir of a training run?')
  config = ml_collections.ConfigDict(saved)
  for key, value in config_checks.LATER_KEYS.items():  # Runs recorded before these keys existed.
    *sections, leaf = key.split('.')
    parent = config
    for section in sections:
      if section not in parent:
        parent[section] = ml_collections.ConfigDict()
      parent = parent[section]
    if leaf not in parent:
      parent[leaf] = value
  config.model.hidden_sizes = tuple(config.model.hidden_sizes)  # JSON has lists.
  config.model.cnn.features = tuple(config.model.cnn.features)
  config.hooks = tuple(config.hooks)
  config.imports = provenance.available_imports(workdir, config.imports)
  config_checks.validate_config(config, recorded=True)
  return config
