"""Epoch bookkeeping shared by single runs and sweeps: each epoch's data order, which epochs are
evaluated, the epoch record (one line of `metrics.jsonl`) and where the time went."""

import contextlib
import time
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np


def num_batches(num_examples: int, batch_size: int) -> int:
  """Batches of `batch_size` that hold `num_examples` (the last one may be partial): an epoch's
  steps."""
  return -(-num_examples // batch_size)


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The training order of `epoch`: a fresh shuffle each epoch, a function of (seed, epoch) only."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples).astype(np.int32)


def join_calls(*calls, axis: int = 0):
  """The per-step metrics of consecutive calls of `steps.train_epoch` (host arrays; the steps on
  `axis`, after any trial axes) as one call's: per-step arrays joined, per-call values (the norms
  of a call's last step) taken from the last."""
  return jax.tree.map(
      lambda *parts: np.concatenate(parts, axis) if np.ndim(parts[0]) > axis else parts[-1],
      *calls)


def all_finite(step_metrics) -> bool:
  """Whether every step's loss and the last step's norms are finite (NaN or infinite weights make
  the next loss or the final parameter norm so)."""
  return bool(np.isfinite(step_metrics['loss_sum']).all() and np.isfinite(step_metrics['grad_norm'])
              and np.isfinite(step_metrics['param_norm']))


def summarize_train_metrics(step_metrics) -> dict[str, float]:
  """Epoch averages from `steps.train_epoch`'s metrics; norms and learning rate of the last step."""
  m = jax.tree.map(np.asarray, jax.device_get(step_metrics))
  return {
      'train_loss': float(m['loss_sum'].sum() / m['count'].sum()),
      'train_accuracy': float(m['correct'].sum() / m['count'].sum()),
      'grad_norm': float(m['grad_norm']),
      'param_norm': float(m['param_norm']),
      'learning_rate': float(m['learning_rate'][-1]),
  }


def summarize_eval_metrics(totals, prefix: str = 'test') -> dict[str, float]:
  """Mean loss and accuracy from `steps.evaluate`'s sums, keyed `{prefix}_loss`, `{prefix}_accuracy`."""
  m = jax.device_get(totals)
  return {f'{prefix}_loss': float(m['loss_sum'] / m['count']),
          f'{prefix}_accuracy': float(m['correct'] / m['count'])}


def logs_epoch(config: ml_collections.ConfigDict, epoch: int) -> bool:
  """Whether `epoch` is evaluated and recorded: every `logging.log_every_epochs`, and the last."""
  return epoch % config.logging.log_every_epochs == 0 or epoch == config.num_epochs


def epoch_record(epoch: int, steps_per_epoch: int, step_metrics, eval_totals, num_train: int,
                 epoch_sec: float, start: float, validation_totals=None) -> dict[str, Any]:
  """One line of `metrics.jsonl` (`run_files.METRIC_KEYS` and the diagnostics); with
  `validation_totals`, also `validation_loss` and `validation_accuracy` (absent without)."""
  validation = (summarize_eval_metrics(validation_totals, 'validation')
                if validation_totals is not None else {})
  return {'epoch': epoch, 'step': epoch * steps_per_epoch,
          **summarize_train_metrics(step_metrics), **validation,
          **summarize_eval_metrics(eval_totals),
          'examples_per_sec': num_train / epoch_sec, 'elapsed_sec': time.time() - start}


class EpochLog:
  """The timings and epoch records of one run, or of one program group of trials in a sweep.

  `timings` holds seconds per phase (`data_sec`, `compile_sec`, ... as given, then `train_sec`
  and `eval_sec`, accumulated by `timed`); `record` builds an epoch's record for one run or trial.
  """

  def __init__(self, config: ml_collections.ConfigDict, steps_per_epoch: int, num_train: int,
               start: float, timings: dict[str, float] | None = None):
    self.config = config
    self.steps_per_epoch = steps_per_epoch
    self.num_train = num_train
    self.start = start
    self.timings = {**(timings or {}), 'train_sec': 0.0, 'eval_sec': 0.0}
    self.last_sec = 0.0

  @contextlib.contextmanager
  def timed(self, key: str) -> Iterator[None]:
    """Adds the time the block takes to `timings[key]`; it is also kept as `last_sec`."""
    begin = time.time()
    yield
    self.last_sec = time.time() - begin
    self.timings[key] = self.timings.get(key, 0.0) + self.last_sec

  def logs(self, epoch: int) -> bool:
    return logs_epoch(self.config, epoch)

  def record(self, epoch: int, step_metrics, eval_totals, epoch_sec: float,
             validation_totals=None) -> dict[str, Any]:
    return epoch_record(epoch, self.steps_per_epoch, step_metrics, eval_totals, self.num_train,
                        epoch_sec, self.start, validation_totals)

  def finish(self) -> dict[str, float]:
    """The timings with `total_sec`, the time since the start."""
    self.timings['total_sec'] = time.time() - self.start
    return self.timings
