"""TensorBoard event files: per-epoch scalars and the config as hparams.

Written with tensorboardX, which does not import TensorFlow. Scalars are logged at the optimizer
step at the end of each epoch, the x-axis TensorBoard expects.
"""

import importlib
import os
import time
from typing import Any

from etils import epath

from mlp_mnist import workarounds
from mlp_mnist.records import run_files

# metrics.jsonl field -> TensorBoard tag
SCALAR_TAGS = {
    'train_loss': 'train/loss',
    'train_accuracy': 'train/accuracy',
    'validation_loss': 'validation/loss',
    'validation_accuracy': 'validation/accuracy',
    'test_loss': 'test/loss',
    'test_accuracy': 'test/accuracy',
    'learning_rate': 'train/learning_rate',
    'grad_norm': 'train/grad_norm',
    'param_norm': 'train/param_norm',
    'examples_per_sec': 'train/examples_per_sec',
}
# Record fields that are not curves.
NOT_SCALARS = ('epoch', 'step', 'elapsed_sec')
HPARAM_METRICS = ('validation/accuracy', 'validation/loss', 'test/accuracy', 'test/loss',
                  'train/accuracy', 'train/loss')


class _RemoteEventFile:
  """An epath file without `fileno`: tensorboardX fsyncs files that have one, and gcsfs' raise."""

  def __init__(self, file):
    self._file = file

  def write(self, data):
    self._file.write(data)

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


class _EpathRecordWriterFactory:
  """tensorboardX's own gs:// writer needs google-cloud-storage; epath reaches buckets already."""

  def open(self, path):
    return _RemoteEventFile(epath.Path(path).open('wb'))

  def directory_check(self, path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def scalars(record: dict[str, Any]) -> list[tuple[str, float]]:
  """(tag, value) of a record's metrics: the built-in ones under `SCALAR_TAGS`, others (a hook's,
  say) under their key."""
  return [(SCALAR_TAGS.get(key, key), float(value)) for key, value in record.items()
          if key not in NOT_SCALARS and isinstance(value, (int, float))
          and not isinstance(value, bool)]


def _import_tensorboardx(module: str):
  """`module` of tensorboardX, which is imported without the modules it would import and this
  package never uses (`workarounds.import_tensorboardx_without_unused_imports`)."""
  workarounds.import_tensorboardx_without_unused_imports()
  return importlib.import_module(module)


def import_in_background() -> None:
  """Imports tensorboardX (a tenth of a second or more) on a thread, e.g. while a program
  compiles."""
  run_files.import_in_background(('tensorboardX',), _import_tensorboardx)


def _hparams_summaries(hparams: dict[str, Any]):
  """The HParams plugin's experiment, session-start and session-end summaries."""
  summary = _import_tensorboardx('tensorboardX.summary')
  values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
  return summary.hparams(values, {tag: None for tag in HPARAM_METRICS})


def _register_bucket_writer(logdir: str) -> None:
  if run_files.is_remote(logdir):
    record_writer = _import_tensorboardx('tensorboardX.record_writer')
    record_writer.register_writer_factory(str(logdir).split('://', 1)[0],
                                          _EpathRecordWriterFactory())


class BufferedTensorBoardWriter:
  """A run's or trial's event file in `logdir`, written in the caller's thread and flushed at most
  every `flush_secs` and on `close`: cheap enough for each of a sweep's trials every epoch
  (tensorboardX's `SummaryWriter` costs a thread and a queue per file, and a flush syncs the file
  to disk). `purge_step` hides events of an interrupted run at later steps."""

  def __init__(self, logdir: str, flush_secs: float = 30, purge_step: int | None = None):
    event_file_writer = _import_tensorboardx('tensorboardX.event_file_writer')
    event_pb2 = _import_tensorboardx('tensorboardX.proto.event_pb2')
    summary_pb2 = _import_tensorboardx('tensorboardX.proto.summary_pb2')
    _register_bucket_writer(logdir)
    epath.Path(logdir).mkdir(parents=True, exist_ok=True)
    self._event, self._value, self._summary = event_pb2.Event, summary_pb2.Summary.Value, (
        summary_pb2.Summary)
    # The name's timestamp is in seconds: a suffix in nanoseconds keeps two sessions of one run
    # opened in the same second apart (a file of the same name is replaced) and in the order they
    # were opened, which is the order TensorBoard reads them in (sorted names; a later session's
    # `purge_step` must come after the events it hides).
    self._events = event_file_writer.EventsWriter(os.path.join(str(logdir), 'events'),
                                                  filename_suffix=f'.{time.time_ns():020d}')
    self._flush_secs, self._flushed = flush_secs, time.time()
    self._session_end = None
    if purge_step is not None:
      self._events.write_event(self._event(
          step=purge_step, wall_time=time.time(),
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def _write(self, summary, step: int | None = None) -> None:
    event = self._event(summary=summary, wall_time=time.time())
    if step is not None:
      event.step = int(step)
    self._events.write_event(event)

  def write_hparams(self, hparams: dict[str, Any]) -> None:
    """Records the run's hyperparameters for TensorBoard's HParams dashboard."""
    experiment, session_start, self._session_end = _hparams_summaries(hparams)
    self._write(experiment)
    self._write(session_start)

  def write_scalars(self, step: int, record: dict[str, float]) -> None:
    """The record's metrics (`scalars`)."""
    self._write(self._summary(value=[self._value(tag=tag, simple_value=value)
                                     for tag, value in scalars(record)]), step)
    if time.time() - self._flushed >= self._flush_secs:
      self._events.flush()
      self._flushed = time.time()

  def close(self) -> None:
    if self._session_end is not None:
      self._write(self._session_end)
    self._events.close()
