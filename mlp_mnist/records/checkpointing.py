"""Checkpoints of the whole train state with orbax: saves, and a restore that never loses work.

A checkpoint is numbered by its optimizer step (the end of its epoch, or a step inside one) and
holds the train state (parameters, optimizer state, step, dropout key and rate) and a small JSON
record of the run so far (`epoch` and the per-epoch `history`; inside an epoch also the steps of it
already trained and their metrics, `EpochInProgress`), so a resumed run can rewrite `metrics.jsonl`
exactly. orbax
writes each checkpoint into a temporary directory and renames it when complete, so a process killed
mid-save leaves no partial checkpoint behind. `restore_latest` tells three failures apart:

- damaged files (truncated, garbled, missing): the checkpoint is moved to `corrupt_checkpoints/`
  beside `checkpoints/` (on remote storage too: copied there, then removed), never deleted, with a
  warning, and the previous one is tried;
- a checkpoint of another structure, shape or dtype than this code and config make (found from
  its metadata before reading any array): a CheckpointError naming the difference, nothing moved;
- a transient storage error (I/O, permission, timeout, unavailable): retried after
  `RETRY_DELAYS_SEC`, then a CheckpointError, nothing moved.

In a multi-process run every process takes the decision process 0 takes from all their outcomes.
A checkpointer of `own_process` (a sweep's trial, which one process trains alone) saves and restores
on its process only: no barrier waits for the others (orbax's `MultiprocessingOptions` with this
process as the only active one and its primary host). Paths may be local or `gs://`.

Besides the latest `keep` checkpoints, the best one is kept when `best` (an
`early_stopping.BestRule`) names how to choose it: each evaluated epoch's checkpoint carries its
metrics and whether it is the best so far by that rule (`early_stopping.best_record`), and orbax's
own `BestN` preservation policy keeps the best of those; `restore(target, 'best')` reads it
(orbax's `best_step`).
"""

import contextlib
import dataclasses
import errno
import json
import math
import os
import re
import time
import zlib
from typing import Any, Callable

import jax
import numpy as np
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mlp_mnist import early_stopping
from mlp_mnist import errors
from mlp_mnist import workarounds
from mlp_mnist.devices import parallel
from mlp_mnist.records import run_files

CHECKPOINTS_DIR = 'checkpoints'
CORRUPT_DIR = 'corrupt_checkpoints'
# Where orbax keeps the metrics a checkpoint was saved with (best tracking), inside its directory.
METRICS_FILE = 'metrics/metrics'
# The key of a checkpoint's metrics saying whether its epoch is the best so far by the best rule.
BEST_SO_FAR = 'best_so_far'
# Waits before the retries of a restore that met a transient storage error: 5 attempts, ~15 s.
RETRY_DELAYS_SEC = (1.0, 2.0, 4.0, 8.0)
# Errors of storage that may pass (or that a person fixes) rather than of the checkpoint's content.
TRANSIENT_ERRNOS = frozenset(getattr(errno, name) for name in (
    'EIO', 'EAGAIN', 'EBUSY', 'EINTR', 'ETIMEDOUT', 'ECONNRESET', 'ECONNREFUSED', 'ECONNABORTED',
    'ENETDOWN', 'ENETUNREACH', 'ENETRESET', 'EHOSTUNREACH', 'EHOSTDOWN', 'ESTALE', 'ENOLCK',
    'EACCES', 'EPERM', 'EROFS', 'ENOMEM', 'ENOSPC', 'EDQUOT') if hasattr(errno, name))
# tensorstore raises ValueError('<absl status code>: ... <strerror>') for storage errors.
_TRANSIENT_MESSAGE = re.compile(
    r'\b(UNAVAILABLE|DEADLINE_EXCEEDED|PERMISSION_DENIED|UNAUTHENTICATED|ABORTED|'
    r'RESOURCE_EXHAUSTED)\b|'
    + '|'.join(re.escape(os.strerror(e)) for e in sorted(TRANSIENT_ERRNOS)))
# Outcomes of one restore attempt, by precedence: the processes of a run take the highest.
RESTORED, DAMAGED, TRANSIENT, MISMATCH = range(4)


class CheckpointError(errors.UserError, RuntimeError):
  """A checkpoint cannot be read, written or used by this code; the message says what to do."""


# The key of a checkpoint's run record holding the epoch it was saved inside (`EpochInProgress`).
IN_PROGRESS = 'epoch_in_progress'


@dataclasses.dataclass(frozen=True)
class EpochInProgress:
  """The part of epoch `epoch` trained when a checkpoint was saved inside it: its first
  `steps_done` steps and their per-step metrics (host arrays as `steps.train_epoch` returns them,
  kept whole so the resumed epoch's sums are those of an uninterrupted one)."""
  epoch: int
  steps_done: int
  step_metrics: dict[str, np.ndarray]

  def to_json(self) -> dict:
    return {'epoch': self.epoch, 'steps_done': self.steps_done, 'step_metrics': {
        k: {'dtype': str(v.dtype), 'values': np.asarray(v).tolist()}
        for k, v in self.step_metrics.items()}}

  @classmethod
  def from_run(cls, run: dict) -> 'EpochInProgress | None':
    """The epoch in progress of a restored run record; None for one saved at an epoch's end
    (every checkpoint of earlier versions)."""
    saved = run.get(IN_PROGRESS)
    if saved is None:
      return None
    # JSON holds float32 values exactly (as the float64 numbers they widen to).
    return cls(saved['epoch'], saved['steps_done'], {
        k: np.asarray(v['values'], dtype=v['dtype']) for k, v in saved['step_metrics'].items()})


def is_storage_error(error: BaseException) -> bool:
  """Whether `error` (or an error it was raised from) is one of storage, not of a file's content:
  permission, I/O, timeout, full disk, unavailable service (`TRANSIENT_ERRNOS`)."""
  seen = 0
  while error is not None and seen < 5:
    if isinstance(error, (PermissionError, TimeoutError, ConnectionError, InterruptedError,
                          BlockingIOError, MemoryError)):
      return True
    if isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS:
      return True
    if not isinstance(error, OSError) and _TRANSIENT_MESSAGE.search(str(error)):
      return True
    error, seen = error.__cause__ or error.__context__, seen + 1
  return False


def _absolute(path: str) -> str:
  return path if run_files.is_remote(path) else os.path.abspath(os.path.expanduser(path))


def checkpoint_dir(workdir: str) -> epath.Path:
  return epath.Path(_absolute(workdir)) / CHECKPOINTS_DIR


def abstract_like(state: Any, own_process: bool = False) -> Any:
  """Shapes, dtypes and shardings of `state`: where `restore` places the restored arrays.

  In a multi-process run: replicated over every device of every process, as orbax restores
  collectively (pmap takes such global arrays as they are); `own_process`: where `state` is.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  if own_process or not parallel.is_multiprocess():
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  everywhere = NamedSharding(Mesh(np.asarray(jax.devices()), ('all',)), PartitionSpec())
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=everywhere),
                      state)


def tree_differences(saved: Any, target: Any, own_process: bool = False) -> list[str]:
  """How a checkpoint's tree metadata (`saved`) differs from `target`'s structure, shapes and
  dtypes, one phrase per difference."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  flat = lambda tree: {'.'.join(map(str, k)): v for k, v in ocp.tree.to_flat_dict(tree).items()}
  have = flat(saved)
  want = flat(ocp.tree.serialize_tree(abstract_like(target, own_process), keep_empty_nodes=True))
  differences = []
  # Parameters first: what a person recognises.
  for key in sorted(set(have) | set(want), key=lambda k: (not k.startswith('params.'), k)):
    if key not in have:
      differences.append(f'{key} is missing from the checkpoint')
    elif key not in want:
      differences.append(f'the checkpoint has {key}, which this code does not make')
    elif hasattr(have[key], 'shape') and hasattr(want[key], 'shape'):
      for field in ('shape', 'dtype'):
        there, here = getattr(have[key], field), getattr(want[key], field)
        if field == 'shape' and tuple(there) != tuple(here) or field == 'dtype' and np.dtype(
            there) != np.dtype(here):
          differences.append(f'{key} has {field} {_show(there)} in the checkpoint, '
                             f'{_show(here)} here')
  return differences


def state_checksum(state: Any) -> str:
  """CRC-32 of every array of `state` (one copy of each; dtypes and shapes included), as hex.

  orbax's compressed chunks carry no checksum of their own: a flipped byte can decode to other
  numbers without an error.
  """
  crc = 0
  for leaf in jax.tree.leaves(state):
    if isinstance(leaf, jax.Array):
      leaf = leaf.addressable_data(0)
    array = np.ascontiguousarray(jax.device_get(leaf))
    crc = zlib.crc32(f'{array.dtype}{array.shape}'.encode(), crc)
    crc = zlib.crc32(array.reshape(-1).view(np.uint8), crc)
  return f'{crc:08x}'


def _show(value) -> str:
  return str(tuple(value)) if isinstance(value, (tuple, list)) else str(np.dtype(value))


def _global(state: Any) -> Any:
  """A pmap-replicated state as arrays orbax can save collectively from several processes."""
  if not parallel.is_multiprocess():
    return state
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return jax.tree.map(ocp.utils.fully_replicated_host_local_array_to_global_array, state)


def _saved_by_this_process(state: Any) -> Any:
  """One process's state as arrays orbax lets that process save alone in a multi-process run.

  orbax 0.12.8 refuses to save an array that one process holds whole when there are several
  (`ArrayHandler.serialize`) and writes numpy arrays on process 0 only (`NumpyHandler`): each array
  is made global over this process's first device and one of another process, replicated, so
  this process holds replica 0 and writes it all (`_own_process_handlers`); it is never computed on.
  """
  here = jax.local_devices()[0]
  elsewhere = next(d for d in jax.devices() if d.process_index != jax.process_index())
  sharding = NamedSharding(Mesh(np.asarray([here, elsewhere]), ('copies',)), PartitionSpec())
  return jax.tree.map(lambda x: jax.make_array_from_single_device_arrays(
      np.shape(x), sharding, [jax.device_put(jax.device_get(x), here)]), state)


def _own_process_handlers(ocp) -> tuple[Any, dict]:
  """orbax's options and handlers that save and restore on this process alone: its own primary
  host, no barrier with another process, and every array written whole by this process (replica
  0, no replica-parallel split, no per-process array metadata to validate across processes)."""
  process = jax.process_index()
  alone = ocp.options.MultiprocessingOptions(
      primary_host=process, active_processes={process},
      barrier_sync_key_prefix=f'mlp_mnist_process_{process}')
  arrays = ocp.type_handlers.ArrayHandler(primary_host=process, replica_id=0,
                                          use_replica_parallel=False, array_metadata_store=None)
  registry = ocp.type_handlers.create_type_handler_registry((jax.Array, arrays))
  return alone, {'state': ocp.PyTreeCheckpointHandler(multiprocessing_options=alone,
                                                      type_handler_registry=registry),
                 'run': ocp.JsonCheckpointHandler(multiprocessing_options=alone)}


def _decide(outcome: int, own_process: bool = False) -> int:
  """The outcome every process acts on: process 0's decision from all processes' outcomes (the
  highest in precedence). Free in a single-process run and for a checkpointer of `own_process`."""
  if own_process or not parallel.is_multiprocess():
    return outcome
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  outcomes = multihost_utils.process_allgather(np.int32(outcome))
  decision = np.int32(np.max(outcomes)) if jax.process_index() == 0 else np.int32(0)
  return int(multihost_utils.broadcast_one_to_all(decision))


def move_tree(source: epath.Path, target: epath.Path, remote: bool | None = None) -> None:
  """Moves directory `source` to `target`; on remote storage (default: a path with '://'), by
  copying every file and then removing the source, so an interruption leaves the files in one
  place or both, never lost."""
  target.parent.mkdir(parents=True, exist_ok=True)
  if not (run_files.is_remote(source) if remote is None else remote):
    source.rename(target)
    return
  for root, _, files in source.walk():
    destination = target / root.relative_to(source)
    destination.mkdir(parents=True, exist_ok=True)
    for name in files:
      (root / name).copy(destination / name, overwrite=True)
  source.rmtree()


class Checkpointer:
  """Saves and restores the train state of the run in `workdir` (orbax is imported lazily)."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False,
               best: early_stopping.BestRule | None = None, own_process: bool = False):
    """`best`: the rule to keep the best checkpoint by, besides the latest. `own_process`: this
    process alone trains the run (a sweep's trial); in a multi-process run it saves and restores
    without the others."""
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    self._ocp = ocp
    self.own_process = own_process and parallel.is_multiprocess()
    self.workdir = workdir
    self.directory = checkpoint_dir(workdir)
    self.best = early_stopping.BestRule(*best) if best else None
    best = self.best
    self.best_metric = best.metric if best else None
    self._opening_warnings = []
    tracking = dict(best_fn=_ranked_metric(best), best_mode=best.mode) if best else {}
    # orbax reads every checkpoint's metrics when it opens them and fails on a damaged file: such
    # a checkpoint is set aside first, like any damaged checkpoint (read-only: an error).
    self._set_aside_damaged_metrics(read_only)
    if read_only:  # Not orbax's read_only option, which warns on every use.
      options = ocp.CheckpointManagerOptions(save_interval_steps=0, max_to_keep=None,
                                             create=False, save_root_metadata=False, **tracking)
    else:
      policies = ocp.checkpoint_managers
      # The latest `keep`, and the best one among the checkpoints saved with metrics.
      keeping = (dict(preservation_policy=policies.AnyPreservationPolicy([
          policies.LatestN(n=keep),
          policies.BestN(get_metric_fn=tracking['best_fn'], reverse=best.mode == 'min', n=1,
                         keep_checkpoints_without_metrics=False)]), **tracking)
                 if best else dict(max_to_keep=keep))
      # Leftover temporary directories are saves that a killed process never finished.
      # In the background on accelerators, where the host is otherwise idle; on a CPU the
      # background writer would take cores from the training it overlaps.
      options = ocp.CheckpointManagerOptions(
          create=True, cleanup_tmp_directories=True,
          enable_async_checkpointing=jax.default_backend() != 'cpu', **keeping)
    handlers = {}
    if self.own_process:
      alone, handlers = _own_process_handlers(ocp)
      # orbax creates the directory only with every process taking part.
      options = dataclasses.replace(options, create=False, multiprocessing_options=alone)
    try:
      if self.own_process and not read_only:
        self.directory.mkdir(parents=True, exist_ok=True)
      self._manager = ocp.CheckpointManager(self.directory, options=options,
                                            item_handlers=handlers or None)
    except Exception as e:  # pylint: disable=broad-except
      if not is_storage_error(e):
        raise
      raise CheckpointError(f'cannot open {self.directory} ({type(e).__name__}: '
                            f'{_first_line(e)}); {_storage_advice()}') from e
    with _storage_errors(f'cannot clean up unfinished saves in {self.directory}'):
      workarounds.wait_for_unfinished_save_cleanup(self._manager)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, epoch: int, history: list[dict],
           in_progress: 'EpochInProgress | None' = None) -> None:
    """Saves (in the background off CPU); the state may be donated right after this returns.

    `epoch` is the last epoch trained whole; `in_progress`, the part of the next one trained
    (a checkpoint inside an epoch). The checkpoint of an evaluated epoch carries its metrics, and
    with a best rule whether the epoch is the best so far by it (`BEST_SO_FAR`): only those are
    candidates for the best, never one saved inside an epoch. A storage error (full disk, no
    permission) is a CheckpointError; earlier checkpoints stay.
    """
    ocp = self._ocp
    last = history[-1] if history else {}
    metrics = None
    if last.get('epoch') == epoch and in_progress is None:
      metrics = {k: v for k, v in last.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}
      if self.best:
        metrics[BEST_SO_FAR] = early_stopping.best_record(history, *self.best) is last
    run = {'epoch': epoch, 'history': history, 'checksum': state_checksum(state)}
    if in_progress is not None:
      run[IN_PROGRESS] = in_progress.to_json()
    saved = (ocp.args.PyTreeSave(_saved_by_this_process(state)) if self.own_process
             else ocp.args.StandardSave(_global(state)))
    with _storage_errors(f'cannot save checkpoint {step} in {self.directory}'):
      self._manager.save(step, metrics=metrics, args=ocp.args.Composite(
          state=saved, run=ocp.args.JsonSave(run)))

  def best_step(self) -> int | None:
    """The step of the best checkpoint (orbax's `best_step`; None: none was saved with the best
    rule's metric)."""
    return self._manager.best_step() if self.best else None

  def _set_aside_damaged_metrics(self, read_only: bool) -> None:
    """Moves each checkpoint whose metrics file does not parse to `corrupt_checkpoints/` (process
    0; the others wait), with a warning `restore_latest` gives; read-only, a CheckpointError."""
    with _storage_errors(f'cannot list {self.directory}'):
      paths = sorted(self.directory.iterdir(), key=lambda p: p.name) if (
          self.directory.exists()) else []
    for path in paths:
      if not (path.name.isdigit() and path.is_dir()):
        continue
      with _storage_errors(f'cannot read {path / METRICS_FILE}'):
        _, error = _read_metrics(path)
      if error and read_only:
        raise CheckpointError(
            f'checkpoint {path.name} in {self.directory} has a damaged metrics file ({error}); '
            'rerun the training command on this workdir, which sets it aside and resumes.')
      if error:
        moved = self._move_aside(int(path.name))
        self._opening_warnings.append(
            f'warning: checkpoint {path.name} in {self.directory} cannot be restored: its '
            f'metrics file is damaged ({error}); moved it to {moved}, trying the previous one.')

  def restore(self, target: Any, step: int | str | None = None) -> tuple[Any, int, dict]:
    """Returns (state, step, run record) of checkpoint `step` (default: the latest; 'best': the
    best by the best metric).

    `target` is a train state of the same structure (its static fields and placement are kept).
    Arrays that differ from the checksum saved with them (damaged files that still decode) are a
    CheckpointError.
    """
    steps = self.steps()
    if not steps:
      raise CheckpointError(f'{self.workdir} has no checkpoint in {self.directory}; train first '
                            '(scripts/train.py --workdir) or check the path.')
    if step == 'best':
      step = self.best_step()
      if step is None and not self.best:
        raise CheckpointError(f'{self.workdir} has no best checkpoint: it holds out no validation '
                              'split to choose one on (choosing by test loss would select on the '
                              'test set); train with --config.data.validation_split=0.1, or give '
                              f'a --step of {", ".join(map(str, steps))}.')
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
    abstract = abstract_like(target, self.own_process)
    restoring = (ocp.args.PyTreeRestore(abstract, restore_args=jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), abstract))
                 if self.own_process else ocp.args.StandardRestore(abstract))
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=restoring, run=ocp.args.JsonRestore()))
    saved = restored.run.get('checksum') if isinstance(restored.run, dict) else None
    if saved is not None and saved != state_checksum(restored.state):
      raise CheckpointError(f'checkpoint {step} in {self.directory} is damaged: its arrays do '
                            'not match the checksum saved with them; use another checkpoint.')
    return restored.state, step, restored.run

  def differences(self, target: Any, step: int) -> list[str]:
    """How checkpoint `step`'s structure, shapes and dtypes differ from `target`'s (its metadata
    only: no array is read)."""
    handler = self._ocp.StandardCheckpointHandler()
    try:
      metadata = handler.metadata(self.directory / str(step) / 'state')
    finally:
      handler.close()
    return tree_differences(getattr(metadata, 'tree', metadata), target, self.own_process)

  def restore_latest(self, target: Any,
                     warn: Callable[[str], Any]) -> tuple[Any, int, dict] | None:
    """The newest checkpoint that can be read, or None when there is none.

    A damaged checkpoint is reported through `warn`, set aside (`set_aside`) and the next older
    one is tried; one that does not match `target`, or that storage errors keep from being read
    after the retries (`RETRY_DELAYS_SEC`), is a CheckpointError and stays where it is.
    """
    for warning in self._opening_warnings:
      warn(warning)
    self._opening_warnings = []
    delays = RETRY_DELAYS_SEC
    # Before the first attempt: a failed restore's stray reads can finish before its error arrives.
    workarounds.ignore_reads_finishing_after_a_failed_restore()
    for step in reversed(self.steps()):
      for attempt in range(len(delays) + 1):
        outcome, result, detail = self._attempt(target, step)
        decision = _decide(outcome, self.own_process)
        if decision == RESTORED:
          return result
        if decision != TRANSIENT:
          break
        if attempt < len(delays):
          warn(f'warning: checkpoint {step} in {self.directory} cannot be read now ({detail}); '
               f'retrying in {delays[attempt]:g}s.')
          time.sleep(delays[attempt])
      if decision == MISMATCH:
        raise CheckpointError(
            f'checkpoint {step} in {self.directory} does not match this code and config '
            f'({detail or "on another process"}): it was written by another version of the '
            'code or config. Resume with that version, or pass --restart to start over (this '
            'discards the checkpoints).')
      if decision == TRANSIENT:
        raise CheckpointError(
            f'cannot read checkpoint {step} in {self.directory} after {len(delays) + 1} '
            f'attempts ({detail or "on another process"}); it is left in place: '
            f'{_storage_advice()}')
      moved = self.set_aside(step)
      warn(f'warning: checkpoint {step} in {self.directory} cannot be restored: its files are '
           f'damaged ({detail or "on another process"}); moved it to {moved}, trying the '
           'previous one.')
    return None

  def _attempt(self, target: Any, step: int) -> tuple[int, Any, str]:
    """One try at restoring `step` on this process: (outcome, result, what went wrong)."""
    try:
      differences = self.differences(target, step)
      if differences:
        more = len(differences) - 3
        shown = '; '.join(differences[:3]) + (f'; and {more} more' if more > 0 else '')
        return MISMATCH, None, shown
      state, step, run = self.restore(target, step)
      if not (isinstance(run, dict) and isinstance(run.get('epoch'), int)
              and isinstance(run.get('history'), list)):
        return DAMAGED, None, 'its run record has no epoch and history'
      EpochInProgress.from_run(run)  # A damaged record of the epoch in progress raises.
      return RESTORED, (state, step, run), ''
    except Exception as e:  # pylint: disable=broad-except
      # orbax and tensorstore raise many types for damaged files; all but storage errors mean
      # the files are unusable (a mismatch with this code was ruled out above).
      return (TRANSIENT if is_storage_error(e) else DAMAGED), None, (
          f'{type(e).__name__}: {_first_line(e)}')

  def set_aside(self, step: int) -> epath.Path:
    """Moves checkpoint `step` into `corrupt_checkpoints/` (process 0; the others wait)."""
    target = self._move_aside(step)
    self._manager.reload()
    return target

  def _move_aside(self, step: int) -> epath.Path:
    source = self.directory / str(step)
    target = self.directory.parent / CORRUPT_DIR / f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
    if self.own_process:
      move_tree(source, target)
      return target
    if jax.process_index() == 0:
      move_tree(source, target)
    parallel.sync(f'set_aside_checkpoint_{step}')
    return target

  def wait(self) -> None:
    """Blocks until background saves are complete (a failed one is a CheckpointError)."""
    with _storage_errors(f'cannot save a checkpoint in {self.directory}'):
      self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _ranked_metric(best: early_stopping.BestRule) -> Callable[[Any], float]:
  """orbax's `best_fn`: the rule's metric of a checkpoint's metrics; the worst value when its
  epoch was not the best so far (a later tie, an improvement within `min_delta`) or the value is
  missing or not finite, so such a checkpoint is never the best."""
  worst = math.inf if best.mode == 'min' else -math.inf

  def ranked(metrics: Any) -> float:
    if not isinstance(metrics, dict) or metrics.get(BEST_SO_FAR) is False:
      return worst
    value = metrics.get(best.metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else worst
  return ranked


def _read_metrics(step_dir: epath.Path) -> tuple[Any, str]:
  """(the metrics saved with a checkpoint or None, what is wrong with their file or '')."""
  path = step_dir / METRICS_FILE
  try:
    if not path.exists():
      return None, ''
    return json.loads(path.read_text()), ''
  except (ValueError, UnicodeDecodeError) as e:
    return None, f'{type(e).__name__}: {_first_line(e)}'


@contextlib.contextmanager
def _storage_errors(what: str):
  """Turns a storage error (full disk, no permission, I/O) into a one-line CheckpointError."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if not is_storage_error(e):
      raise
    raise CheckpointError(f'{what} ({type(e).__name__}: {_first_line(e)}); the earlier '
                          f'checkpoints are kept. {_storage_advice()}') from e


def _storage_advice() -> str:
  return ('Free disk space, fix the permissions or wait for the storage to come back, then rerun '
          'the same command to resume from the latest checkpoint.')


def _first_line(error: Exception, limit: int = 200) -> str:
  line = (str(error).strip().splitlines() or ['no message'])[0]
  return line if len(line) <= limit else line[:limit] + '...'
