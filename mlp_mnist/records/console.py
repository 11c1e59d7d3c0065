"""The console: one line per epoch, and a progress bar during each epoch on a terminal only
(nothing in between epoch lines elsewhere, so logs stay clean)."""

import time
from typing import TextIO

import numpy as np

BAR_WIDTH = 24


def shows_bar(mode: str, stream: TextIO) -> bool:
  """`mode` is config.logging.progress_bar: 'on', 'off', or 'auto' (when `stream` is a terminal)."""
  if mode == 'auto':
    isatty = getattr(stream, 'isatty', None)
    return bool(isatty and isatty())
  return mode == 'on'


def steps_per_call(steps_per_epoch: int, updates_per_epoch: int) -> int:
  """Steps of each training call so an epoch makes about `updates_per_epoch` calls.

  Prefers a divisor of the epoch, so every call has one shape and one compiled program; else the
  epoch ends with one shorter call (a second program).
  """
  target = max(1, -(-steps_per_epoch // updates_per_epoch))
  divisors = [d for d in range(max(1, target // 2), 2 * target + 1) if steps_per_epoch % d == 0]
  return min(divisors, key=lambda d: abs(d - target)) if divisors else target


class EpochBar:
  """One line redrawn in place: steps done, running train loss, examples per second."""

  def __init__(self, stream: TextIO, epoch: int, num_epochs: int, num_steps: int):
    self._stream = stream
    self._label = f'epoch {epoch}/{num_epochs}'
    self._num_steps = num_steps
    self._steps = 0
    self._loss_sum = self._count = 0.0
    self._start = time.time()
    self._width = 0
    self._draw()

  def update(self, step_metrics: dict[str, np.ndarray]) -> None:
    """Adds the per-step metrics of the steps just finished (stacked along the first axis)."""
    self._steps += len(step_metrics['count'])
    self._loss_sum += float(np.sum(step_metrics['loss_sum']))
    self._count += float(np.sum(step_metrics['count']))
    self._draw()

  def _draw(self) -> None:
    done = BAR_WIDTH * self._steps // max(self._num_steps, 1)
    text = (f'{self._label} [{"=" * done}{"." * (BAR_WIDTH - done)}] '
            f'{self._steps}/{self._num_steps}')
    if self._count:
      speed = self._count / max(time.time() - self._start, 1e-9)
      text += f'  loss {self._loss_sum / self._count:.4f}  {speed:,.0f} ex/s'
    self._stream.write('\r' + text.ljust(self._width))
    self._stream.flush()
    self._width = len(text)

  def close(self) -> None:
    """Clears the line, so the epoch's summary line replaces the bar."""
    self._stream.write('\r' + ' ' * self._width + '\r')
    self._stream.flush()


def format_epoch(record: dict) -> str:
  """The console line of an epoch record (validation beside test when the run holds some out)."""
  validation = (f"validation loss {record['validation_loss']:.4f} "
                f"acc {record['validation_accuracy']:.2%}  " if 'validation_loss' in record else '')
  return (f"epoch {record['epoch']:3d}  train loss {record['train_loss']:.4f} "
          f"acc {record['train_accuracy']:.2%}  {validation}test loss {record['test_loss']:.4f} "
          f"acc {record['test_accuracy']:.2%}  {record['examples_per_sec']:,.0f} ex/s  "
          f"{record['elapsed_sec']:.1f}s")
