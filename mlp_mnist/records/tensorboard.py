"""TensorBoard event files: per-epoch scalars and the config as hparams.

Written with tensorboardX, which does not import TensorFlow. Scalars are logged at the optimizer
step at the end of each epoch, the x-axis TensorBoard expects.
"""

from typing import Any

from etils import epath

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


class TensorBoardWriter:
  """Event files in `logdir`; `purge_step` hides events of an interrupted run at later steps."""

  def __init__(self, logdir: str, purge_step: int | None = None):
    import tensorboardX  # pylint: disable=g-import-not-at-top
    from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
    if str(logdir).startswith('gs://'):
      record_writer.register_writer_factory('gs', _EpathRecordWriterFactory())
    self._summary = tensorboardX.summary
    self._writer = tensorboardX.SummaryWriter(str(logdir), purge_step=purge_step,
                                              flush_secs=30)
    self._session_end = None

  def write_hparams(self, hparams: dict[str, Any]) -> None:
    """Records the run's hyperparameters for TensorBoard's HParams dashboard."""
    values = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
              for k, v in hparams.items()}
    experiment, session_start, self._session_end = self._summary.hparams(
        values, {tag: None for tag in HPARAM_METRICS})
    for summary in (experiment, session_start):
      self._writer.file_writer.add_summary(summary)

  def write_scalars(self, step: int, record: dict[str, float]) -> None:
    """The record's metrics: the built-in ones under `SCALAR_TAGS`, others (a hook's, say) tagged
    by their key."""
    for key, value in record.items():
      if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
        self._writer.add_scalar(SCALAR_TAGS.get(key, key), value, step)
    self._writer.flush()

  def close(self) -> None:
    if self._session_end is not None:
      self._writer.file_writer.add_summary(self._session_end)
    self._writer.close()
