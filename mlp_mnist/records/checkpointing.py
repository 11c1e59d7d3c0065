"""Checkpoints of the whole train state with orbax: saves, restore with fallback.

A checkpoint is numbered by the optimizer step at the end of its epoch and holds the train state
(parameters, optimizer state, step, dropout key and rate) and a small JSON record of the run so far
(`epoch` and the per-epoch `history`), so a resumed run can rewrite `metrics.jsonl` exactly. orbax
writes each checkpoint into a temporary directory and renames it when complete, so a process killed
mid-save leaves no partial checkpoint behind; a checkpoint that is damaged later is set aside with a
warning and the previous one is used. Paths may be local or `gs://`.

Besides the latest `keep` checkpoints, the best one by a monitored metric is kept when `best`
names it: the metric goes with each save and orbax's own `BestN` preservation policy keeps the
checkpoint with the best value (the latest of equal ones); `restore(target, 'best')` reads it.
"""

import os
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mlp_mnist import errors
from mlp_mnist.devices import parallel

CHECKPOINTS_DIR = 'checkpoints'
CORRUPT_DIR = 'corrupt_checkpoints'


class CheckpointError(errors.UserError, RuntimeError):
  """A requested checkpoint does not exist or cannot be read; the message says what to do."""


def _absolute(path: str) -> str:
  return path if '://' in path else os.path.abspath(os.path.expanduser(path))


def checkpoint_dir(workdir: str) -> epath.Path:
  return epath.Path(_absolute(workdir)) / CHECKPOINTS_DIR


def abstract_like(state: Any) -> Any:
  """Shapes, dtypes and shardings of `state`: where `restore` places the restored arrays.

  In a multi-process run: replicated over every device of every process, as orbax restores
  collectively (pmap takes such global arrays as they are).
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if not parallel.is_multiprocess():
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  everywhere = NamedSharding(Mesh(np.asarray(jax.devices()), ('all',)), PartitionSpec())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=everywhere),
                      state)


def _global(state: Any) -> Any:
  """A pmap-replicated state as arrays orbax can save collectively from several processes."""
  if not parallel.is_multiprocess():
    return state
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return jax.tree.map(ocp.utils.fully_replicated_host_local_array_to_global_array, state)


class Checkpointer:
  """Saves and restores the train state of the run in `workdir` (orbax is imported lazily)."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False,
               best: tuple[str, str] | None = None):
    """`best`: (metric, 'min' or 'max') to keep the best checkpoint by, besides the latest."""
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    self._ocp = ocp
    self.workdir = workdir
    self.directory = checkpoint_dir(workdir)
    self.best_metric = best[0] if best else None
    tracking = {}
    if best:
      metric, mode = best
      tracking = dict(best_fn=lambda metrics: metrics[metric], best_mode=mode)
    if read_only:  # Not orbax's read_only option, which warns on every use.
      options = ocp.CheckpointManagerOptions(save_interval_steps=0, max_to_keep=None,
                                             create=False, save_root_metadata=False, **tracking)
    else:
      policies = ocp.checkpoint_managers
      # The latest `keep`, and the best one among the checkpoints saved with metrics.
      keeping = (dict(preservation_policy=policies.AnyPreservationPolicy([
          policies.LatestN(n=keep),
          policies.BestN(get_metric_fn=tracking['best_fn'], reverse=best[1] == 'min', n=1,
                         keep_checkpoints_without_metrics=False)]), **tracking)
                 if best else dict(max_to_keep=keep))
      # Leftover temporary directories are saves that a killed process never finished.
      # In the background on accelerators, where the host is otherwise idle; on a CPU the
      # background writer would take cores from the training it overlaps.
      options = ocp.CheckpointManagerOptions(
          create=True, cleanup_tmp_directories=True,
          enable_async_checkpointing=jax.default_backend() != 'cpu', **keeping)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, epoch: int, history: list[dict]) -> None:
    """Saves (in the background off CPU); the state may be donated right after this returns.

    With a best metric, the checkpoint of an evaluated epoch carries its value, for the best one.
    """
    ocp = self._ocp
    last = history[-1] if history else {}
    metrics = ({self.best_metric: last[self.best_metric]}
               if self.best_metric and last.get('epoch') == epoch else None)
    self._manager.save(step, metrics=metrics, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_global(state)),
        run=ocp.args.JsonSave({'epoch': epoch, 'history': history})))

  def best_step(self) -> int | None:
    """The step of the best checkpoint by the best metric (None: none was saved with it)."""
    if not self.best_metric or not self.steps():
      return None
    best = self._manager.best_step()
    return best if best is not None and self._manager.metrics(best) is not None else None

  def restore(self, target: Any, step: int | str | None = None) -> tuple[Any, int, dict]:
    """Returns (state, step, run record) of checkpoint `step` (default: the latest; 'best': the
    best by the best metric).

    `target` is a train state of the same structure (its static fields and placement are kept).
    """
    steps = self.steps()
    if not steps:
      raise CheckpointError(f'{self.workdir} has no checkpoint in {self.directory}; train first '
                            '(scripts/train.py --workdir) or check the path.')
    if step == 'best':
      step = self.best_step()
      if step is None:
        raise CheckpointError(f'{self.workdir} has no best checkpoint (none was saved with '
                              f'{self.best_metric or "a monitored metric"}; the run had '
                              'checkpoint.keep_best=False or predates it); give a --step of '
                              f'{", ".join(map(str, steps))}.')
    step = steps[-1] if step is None else step
    if step not in steps:
      raise CheckpointError(f'{self.workdir} has no checkpoint at step {step}; it has steps '
                            f'{", ".join(map(str, steps))}.')
    ocp = self._ocp
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_like(target)), run=ocp.args.JsonRestore()))
    return restored.state, step, restored.run

  def restore_latest(self, target: Any,
                     warn: Callable[[str], Any]) -> tuple[Any, int, dict] | None:
    """The newest checkpoint that can be read, or None when there is none.

    A checkpoint that fails to restore is reported through `warn`, moved out of the way (into
    `corrupt_checkpoints/` beside `checkpoints/`, or deleted on remote storage) and the next older
    one is tried.
    """
    # Before the first attempt: a failed restore's stray reads can finish before its error arrives.
    _ignore_reads_finishing_after_a_failed_restore()
    for step in reversed(self.steps()):
      try:
        return self.restore(target, step)
      except Exception as e:  # pylint: disable=broad-except
        # orbax and tensorstore raise many types for damaged files; any of them means unusable.
        where = self._set_aside(step)
        warn(f'warning: checkpoint {step} in {self.directory} cannot be restored '
             f'({type(e).__name__}: {_first_line(e)}); {where}, trying the previous one.')
    return None

  def _set_aside(self, step: int) -> str:
    """Process 0 moves (or, on remote storage, deletes) the checkpoint; all processes then agree."""
    source = self.directory / str(step)
    remote = '://' in str(self.directory)
    target = self.directory.parent / CORRUPT_DIR / f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
    if jax.process_index() == 0:
      if remote:
        source.rmtree()
      else:
        target.parent.mkdir(parents=True, exist_ok=True)
        source.rename(target)
    parallel.sync(f'set_aside_checkpoint_{step}')
    self._manager.reload()
    return 'deleted it' if remote else f'moved it to {target}'

  def wait(self) -> None:
    """Blocks until background saves are complete."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _ignore_reads_finishing_after_a_failed_restore() -> None:
  """Silences tensorstore reads of a failed restore that finish after orbax closed its event loop.

  Each would otherwise print a 'RuntimeError: Event loop is closed' traceback, dozens per damaged
  checkpoint, although nothing is wrong beyond the warning already given.
  """
  previous = sys.unraisablehook
  if getattr(previous, 'ignores_closed_event_loop', False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == 'Event loop is closed'):
      previous(unraisable)

  hook.ignores_closed_event_loop = True
  sys.unraisablehook = hook


def _first_line(error: Exception, limit: int = 200) -> str:
  line = (str(error).strip().splitlines() or ['no message'])[0]
  return line if len(line) <= limit else line[:limit] + '...'
