"""The one recorder of a run's records, for a single run and for each trial of a sweep alike.

A run (or trial) folder holds `config.json`, `dataset.json`, `provenance.json`, `metrics.jsonl`,
`summary.json`, `status`, TensorBoard event files, `plots/` and, when its config asks, the W&B and
MLflow runs it logs to (`tracking.json`). Only JAX process 0 writes.
"""

import json
import math
from typing import Any, Callable, Sequence

import jax
import ml_collections
from etils import epath

from mlp_mnist import config_checks
from mlp_mnist.records import provenance
from mlp_mnist.records import run_files
from mlp_mnist.records import tensorboard
from mlp_mnist.records import tracking
from mlp_mnist.records import workdirs

STATUS_FILE = run_files.STATUS_FILE
DONE, DIVERGED, FAILED, RUNNING, PENDING = 'done', 'diverged', 'failed', 'running', 'pending'
STOPPED = 'stopped'  # Ended by early stopping: its metrics are valid results.
# Ended by the sweep's search (successive halving, sweeps/search.py): its records so far are kept.
PRUNED = 'pruned'
# Ended by a signal (preemption) after saving a checkpoint: rerunning the command resumes it.
INTERRUPTED = 'interrupted'


def write_status(directory: str, status: str, detail: str = '') -> None:
  """Writes `status`: the status on the first line, then what happened (for diverged/failed)."""
  run_files.write_text_atomic(epath.Path(directory) / STATUS_FILE,
                              status + ('\n' + detail if detail else '') + '\n')


def read_status(directory: str) -> str | None:
  """The run's status, or None when it has not started (or was written before status files)."""
  path = epath.Path(directory) / STATUS_FILE
  return (path.read_text().split('\n', 1)[0].strip() or None) if path.exists() else None


def read_status_detail(directory: str) -> str:
  """What the status file says happened, in one line (a traceback's last line), or ''."""
  path = epath.Path(directory) / STATUS_FILE
  if not path.exists():
    return ''
  lines = [line.strip() for line in path.read_text().split('\n')[1:] if line.strip()]
  return lines[-1] if lines else ''


def json_safe(record: dict) -> dict:
  """`record` with non-finite floats as None, so `metrics.jsonl` stays JSON (`null`, not `NaN`)."""
  return {k: None if isinstance(v, float) and not math.isfinite(v) else v
          for k, v in record.items()}


class Recorder:
  """Writes one run's (or trial's) records into `workdir`; does nothing without one or, unless
  `own_process`, off process 0.

  Starting writes `config.json`, `dataset.json` (`dataset_info`) and status `running`, adds
  `provenance` (default: collected here) to `provenance.json`, rewrites `metrics.jsonl` to the
  restored `history` (dropping epochs of an interrupted run after its checkpoint) and opens the
  TensorBoard events, which hide the interrupted run's later events (a run started afresh
  removes earlier event files), and the W&B and MLflow runs
  the config asks for (`tracking.py`; a resumed run continues its tracked runs; `tracker_name`,
  `tracker_group`, `tracker_tags` and `swept` name a sweep's trial there). Warnings go to `log`.
  `own_process`: this process alone trains the run (a sweep's trial), so it writes the records
  whatever its JAX process index.
  """

  def __init__(self, workdir: str | None, config: ml_collections.ConfigDict,
               devices: Sequence[jax.Device], history: list[dict], resumed_step: int | None,
               dataset_info: dict | None = None, log: Callable[[str], Any] = print,
               provenance_record: dict | None = None,
               failures: tracking.Failures | None = None, tracker_name: str = '',
               tracker_group: str = '', tracker_tags: dict[str, str] | None = None,
               swept: dict | None = None, own_process: bool = False):
    writes = own_process or workdirs.is_lead_process()
    self.workdir = workdir if workdir and writes else None
    self._history = list(history)
    self._trackers = None
    self._tensorboard = None
    self._curves = None
    if not self.workdir:
      if writes and tracking.requested(config):
        log('warning: config.tracking needs a workdir to keep its tracked runs in; '
            'training goes on without W&B and MLflow.')
      return
    run_files.write_config(self.workdir, config)
    if dataset_info is not None:
      run_files.write_dataset_info(self.workdir, dataset_info)
    if resumed_step is not None and (change := provenance.device_change(self.workdir, devices)):
      log(change)
    provenance.append(self.workdir, provenance_record or provenance.collect(
        devices, resumed_step, provenance.keep_imports(self.workdir, config.imports)), warn=log)
    run_files.write_metrics(self.workdir, [json_safe(r) for r in self._history])
    write_status(self.workdir, RUNNING)
    if resumed_step is None:  # Started afresh: earlier events are of a run that left no weights.
      for path in epath.Path(self.workdir).glob('events.out.tfevents.*'):
        path.unlink()
    tensorboard.import_in_background()
    if not own_process:  # A run draws its curves at the end (a sweep's trials do not).
      from mlp_mnist.records import plots  # pylint: disable=g-import-not-at-top
      self._curves = plots.curves_process()
    self._purge_step = (resumed_step or 0) + 1
    config_json = json.loads(config.to_json_best_effort())
    self._hparams = config_checks.flatten_config(config_json)  # Tuples as JSON lists.
    if tracking.requested(config):
      self._trackers = tracking.Trackers(config, self.workdir, name=tracker_name,
                                         failures=failures or tracking.Failures(log),
                                         group=tracker_group, tags=tracker_tags)
      self._trackers.write_hparams({**config_json, 'swept': dict(swept)} if swept
                                   else config_json)

  def _events(self) -> tensorboard.BufferedTensorBoardWriter:
    """The event file, opened at the first write: tensorboardX loads while the program compiles."""
    if self._tensorboard is None:
      self._tensorboard = tensorboard.BufferedTensorBoardWriter(self.workdir,
                                                                purge_step=self._purge_step)
      self._tensorboard.write_hparams(self._hparams)
    return self._tensorboard

  @property
  def history(self) -> list[dict]:
    return self._history

  def write_epoch(self, record: dict) -> None:
    """Adds an epoch's record to `metrics.jsonl`, TensorBoard and the trackers."""
    self._history.append(record)
    if self.workdir:
      run_files.write_metrics(self.workdir, [json_safe(r) for r in self._history])
      self._events().write_scalars(record['step'], record)
      if self._trackers:
        self._trackers.write_scalars(record['step'], record)

  def prepare_plots(self) -> None:
    """Loads the plotting library on a thread; call it while the last epoch trains.

    Not on a CPU backend, where that thread would slow the training it overlaps.
    """
    if self.workdir and not self._curves and jax.default_backend() != 'cpu':
      from mlp_mnist.records import plots  # pylint: disable=g-import-not-at-top
      plots.import_in_background()

  def plot_curves(self) -> None:
    """Draws `plots/curves.png` from the history."""
    if not self.workdir or not self._history:
      return
    from mlp_mnist.records import plots  # pylint: disable=g-import-not-at-top
    path = (self._curves or plots).save_curves(
        self._history, str(epath.Path(self.workdir) / run_files.PLOTS_DIR / 'curves.png'),
        title=str(self.workdir))
    if self._trackers:
      self._trackers.write_artifact(path)

  def finish(self, status: str, summary: dict | None = None, detail: str = '') -> None:
    """Writes `summary.json` (when given) and `status`, closes the event file and tracked runs."""
    if not self.workdir:
      return
    if summary is not None:
      run_files.write_summary(self.workdir, summary)
      if self._trackers:
        self._trackers.write_summary(summary)
    self._close(failed=status in (DIVERGED, FAILED))
    write_status(self.workdir, status, detail)

  def _close(self, failed: bool) -> None:
    if self._curves:
      self._curves.close()
    self._events().close()
    if self._trackers:
      self._trackers.close(failed=failed)
      self._trackers = None
