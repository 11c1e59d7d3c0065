"""Early stopping as Keras' `EarlyStopping` callback has it, as a pure function of the epoch records.

`config.early_stopping`: `monitor` (a record metric; 'auto': `validation_loss` when the run holds out
a validation split, else off; 'off'), `mode` ('auto': 'max' for accuracies, else 'min'), `patience`
(evaluated epochs without improvement before stopping; 0 stops at the first, as 1 does),
`min_delta` (the least change that counts as an improvement) and `restore_best_weights` (end with
the weights of the best epoch, whether or not training stopped early). The state (best value, best epoch, epochs since) is rebuilt from the
history, so a resumed run, whose history comes from its checkpoint, stops exactly where an
uninterrupted one does.

One definition of the best epoch, Keras' own: the last epoch that beat the best before it by more
than `min_delta` (of equal values, the first). `State.best_epoch`, `best_record` (the weights
`restore_best_weights` ends with) and the best checkpoint (only such epochs' checkpoints carry the
metric orbax ranks) all follow it. The best is chosen on held-out data only: without a validation
split and with early stopping off there is no best checkpoint (choosing by test loss would select
on the test set), and a monitor on the test set is a config error
(`config_checks.check_no_choice_on_the_test_set`).
"""

import dataclasses
import math
from typing import Iterable, NamedTuple

import ml_collections

MONITOR_MODES = ('auto', 'off')
MODES = ('auto', 'min', 'max')


def record_metrics(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The metrics every epoch record of this run has; `monitor` may name those of the training and
  validation sets."""
  names = ('train_loss', 'train_accuracy', 'test_loss', 'test_accuracy')
  if config.data.get('validation_split', 0):
    names += ('validation_loss', 'validation_accuracy')
  return names


def monitor(config: ml_collections.ConfigDict) -> str | None:
  """The metric early stopping watches, or None when it is off."""
  name = config.early_stopping.monitor
  if name == 'auto':
    return 'validation_loss' if config.data.get('validation_split', 0) else None
  return None if name == 'off' else name


def mode(config: ml_collections.ConfigDict, metric: str) -> str:
  """'min' or 'max' for `metric`: `early_stopping.mode`, or by the metric's name when 'auto'."""
  chosen = config.early_stopping.mode
  if chosen != 'auto':
    return chosen
  return 'max' if 'accuracy' in metric else 'min'


class BestRule(NamedTuple):
  """How the best epoch is chosen: by `metric`, 'min' or 'max', improving by more than `min_delta`."""
  metric: str
  mode: str
  min_delta: float = 0.0


def improves(value: float, best: float | None, mode: str, min_delta: float) -> bool:
  """Keras' rule: a finite `value` improves on `best` (None: nothing yet) by more than `min_delta`."""
  if not math.isfinite(value):
    return False
  if best is None:
    return True
  return value + min_delta < best if mode == 'min' else value - min_delta > best


def best_checkpoint_metric(config: ml_collections.ConfigDict) -> BestRule | None:
  """The rule the best checkpoint is chosen by: early stopping's, or when it is off the validation
  loss; None without a validation split (nothing held out to choose on)."""
  metric = monitor(config)
  if metric:
    return BestRule(metric, mode(config, metric), float(config.early_stopping.min_delta))
  if config.data.get('validation_split', 0):
    return BestRule('validation_loss', 'min')
  return None


def best_record(history: Iterable[dict], metric: str, mode: str,
                min_delta: float = 0.0) -> dict | None:
  """The best epoch's record: the last that improved on the best before it (`improves`); None
  when no value is finite."""
  best = None
  for record in history:
    value = float(record[metric])
    if improves(value, None if best is None else float(best[metric]), mode, min_delta):
      best = record
  return best


@dataclasses.dataclass(frozen=True)
class State:
  """Where early stopping stands after some epoch records."""
  best: float | None = None  # The best value of the monitored metric so far.
  best_epoch: int | None = None
  wait: int = 0  # Evaluated epochs since the best one.
  stopped_epoch: int | None = None  # The epoch after which training stopped, if it did.

  @property
  def stopped(self) -> bool:
    return self.stopped_epoch is not None


class EarlyStopping:
  """Keras' rule: an epoch improves when it beats the best by more than `min_delta`; training
  stops after `patience` (at least 1) evaluated epochs without improvement."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.monitor = monitor(config)
    self.mode = mode(config, self.monitor) if self.monitor else 'min'
    self.patience = config.early_stopping.patience
    self.min_delta = float(config.early_stopping.min_delta)
    self.restore_best_weights = bool(self.monitor and config.early_stopping.restore_best_weights)

  @property
  def enabled(self) -> bool:
    return self.monitor is not None

  def best_record(self, history: Iterable[dict]) -> dict | None:
    """The best epoch's record (`best_record` by this monitor), whose weights are restored."""
    return best_record(history, self.monitor, self.mode, self.min_delta)

  def update(self, state: State, record: dict) -> State:
    """The state after `record` (an evaluated epoch)."""
    if not self.enabled or state.stopped:
      return state
    value = float(record[self.monitor])
    if improves(value, state.best, self.mode, self.min_delta):
      return State(value, record['epoch'], 0)
    wait = state.wait + 1
    stopped = record['epoch'] if wait >= max(self.patience, 1) else None
    return State(state.best, state.best_epoch, wait, stopped)

  def replay(self, history: Iterable[dict]) -> State:
    """The state after every record of `history`, in order."""
    state = State()
    for record in history:
      state = self.update(state, record)
    return state

  def reason(self, state: State) -> str:
    """Why training stopped, in words."""
    best = 'no finite value' if state.best is None else f'best {state.best:.4f} at epoch {state.best_epoch}'
    return (f'{self.monitor} did not improve by more than {self.min_delta:g} for {state.wait} '
            f'evaluated epoch(s) (patience {self.patience}; {best})')

  def summary(self, state: State) -> dict:
    """What `summary.json` records under 'early_stopping'."""
    return {'monitor': self.monitor, 'mode': self.mode, 'best': state.best,
            'best_epoch': state.best_epoch, 'stopped_epoch': state.stopped_epoch,
            'reason': self.reason(state) if state.stopped else None,
            'restored_best_weights': self.restore_best_weights and state.best_epoch is not None}
