"""The console: one line per epoch, with a progress bar during each epoch on a terminal or in a
notebook only (nothing in between epoch lines elsewhere, so logs stay clean), and the overview of
a run's parameters."""

import math
import sys
from typing import Any, TextIO

import jax
import numpy as np


def in_notebook() -> bool:
  """Whether this runs in a Jupyter kernel (IPython is only looked up, never imported)."""
  ipython = sys.modules.get('IPython')
  shell = ipython.get_ipython() if ipython and hasattr(ipython, 'get_ipython') else None
  return shell is not None and 'IPKernelApp' in getattr(shell, 'config', {})


def shows_bar(mode: str, stream: TextIO) -> bool:
  """`mode` is config.logging.progress_bar: 'on', 'off', or 'auto' (when `stream` is a terminal,
  or in a notebook)."""
  if mode == 'auto':
    isatty = getattr(stream, 'isatty', None)
    return bool(isatty and isatty()) or in_notebook()
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
  """tqdm's bar for one epoch: steps done, running train loss, examples per second, elapsed and
  remaining time; in a notebook, tqdm's notebook bar. Cleared when the epoch ends."""

  def __init__(self, stream: TextIO, epoch: int, num_epochs: int, num_steps: int):
    # Every update is drawn: there are only `logging.bar_updates_per_epoch` of them.
    self._bar = _tqdm_class()(total=num_steps, desc=f'epoch {epoch}/{num_epochs}', unit='step',
                              file=stream, leave=False, mininterval=0, miniters=1,
                              dynamic_ncols=True)
    self._loss_sum = self._count = 0.0

  def update(self, step_metrics: dict[str, np.ndarray]) -> None:
    """Adds the per-step metrics of the steps just finished (stacked along the first axis)."""
    self._loss_sum += float(np.sum(step_metrics['loss_sum']))
    self._count += float(np.sum(step_metrics['count']))
    speed = self._count / max(self._bar.format_dict['elapsed'], 1e-9)
    self._bar.set_postfix_str(f'loss {self._loss_sum / self._count:.4f}, {speed:,.0f} ex/s',
                              refresh=False)
    self._bar.update(len(step_metrics['count']))

  def close(self) -> None:
    """Clears the bar, so the epoch's summary line replaces it."""
    self._bar.close()


def _tqdm_class():
  """tqdm's notebook bar in a notebook with ipywidgets, else its text bar."""
  if in_notebook():
    from tqdm import notebook  # pylint: disable=g-import-not-at-top
    if notebook.IProgress is not None:
      return notebook.tqdm
  from tqdm import std  # pylint: disable=g-import-not-at-top
  return std.tqdm


def parameter_overview(params) -> dict[str, Any]:
  """{'total': number of parameters, 'shapes': {path: shape}} of a parameter pytree."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  shapes = {'/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path):
            list(np.shape(leaf)) for path, leaf in leaves}
  return {'total': sum(math.prod(s) for s in shapes.values()), 'shapes': shapes}


def format_parameters(overview: dict[str, Any]) -> str:
  """The parameter overview as lines: path, shape and count of each, then the total."""
  rows = [(path, str(tuple(shape)), f'{math.prod(shape):,}')
          for path, shape in overview['shapes'].items()]
  widths = [max((len(r[i]) for r in rows), default=0) for i in range(3)]
  lines = [f'  {p:<{widths[0]}}  {s:<{widths[1]}}  {c:>{widths[2]}}' for p, s, c in rows]
  return '\n'.join([f'Parameters: {overview["total"]:,}', *lines])


def format_epoch(record: dict) -> str:
  """The console line of an epoch record (validation beside test when the run holds some out)."""
  validation = (f"validation loss {record['validation_loss']:.4f} "
                f"acc {record['validation_accuracy']:.2%}  " if 'validation_loss' in record else '')
  return (f"epoch {record['epoch']:3d}  train loss {record['train_loss']:.4f} "
          f"acc {record['train_accuracy']:.2%}  {validation}test loss {record['test_loss']:.4f} "
          f"acc {record['test_accuracy']:.2%}  {record['examples_per_sec']:,.0f} ex/s  "
          f"{record['elapsed_sec']:.1f}s")
