"""The one epoch driver of single runs and sweeps: a single run is a program group of one trial.

A `TrialProgram` trains every trial of its group one epoch per call and evaluates them (a single
run's program is the pmapped data-parallel epoch, `train.RunProgram`; a sweep group's the
pmapped and vmapped trial program, `sweeps.vectorized.GroupProgram`). `run_epochs` does the rest
once, over the trial axis: on logged epochs it evaluates validation then test, builds each trial's
record, runs its hooks, records it (`records.recorder.Recorder`), lets early stopping decide and
keeps the best weights; every epoch it notes divergence, saves checkpoints (also inside epochs:
`MidEpochCheckpoints`) and tells the caller, who may end trials (`on_epoch`
returns their indices). `finish` writes each trial's summary and
status.
"""

import dataclasses
import time
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mlp_mnist import early_stopping
from mlp_mnist import epochs
from mlp_mnist import hooks as hooks_lib
from mlp_mnist import preemption
from mlp_mnist.devices import parallel
from mlp_mnist.records import checkpointing
from mlp_mnist.records import recorder as recorder_lib


class TrialProgram(Protocol):
  """The compiled programs of a group of trials and their train states on the devices."""

  num_trials: int
  has_validation: bool
  saves_inside_epochs: bool  # Whether `train_epoch` takes `EpochSaves`.
  # Whether this process alone trains the group (a sweep's trials), not all processes together
  # (a single run): its checkpoints and the timer and signal of its saves are its own.
  own_process: bool

  def train_epoch(self, epoch: int, frozen: np.ndarray,
                  saves: 'EpochSaves | None' = None) -> tuple[Any, np.ndarray]:
    """Trains epoch `epoch` of every trial not `frozen` (with `saves`, from its step
    `saves.first_step`, offering it the states between calls); returns its per-step metrics (host
    arrays, leading trial axis; with `saves`, of the whole epoch, or of its steps up to where
    `saves` stopped it) and which trials stopped being finite (their state is frozen)."""

  def evaluate(self, split: str) -> Any:
    """`steps.evaluate`'s sums on 'validation' or 'test', on the host, leading trial axis."""

  def state(self, trial: int) -> Any:
    """Trial `trial`'s train state now (a single run's: the replicated state)."""

  def keep_best(self, improved: np.ndarray) -> None:
    """Keeps the states of the `improved` trials as their best weights."""

  def diverged_step(self, trial: int) -> int:
    """The first step of a diverged trial whose update was not applied (or not finite)."""


@dataclasses.dataclass
class Trial:
  """The host side of one trial (or single run): its config, records, checkpoints and outcome."""
  config: ml_collections.ConfigDict
  recorder: recorder_lib.Recorder
  checkpointer: checkpointing.Checkpointer | None = None
  history: list = dataclasses.field(default_factory=list)
  hooks: list = dataclasses.field(default_factory=list)
  diverged_step: int | None = None
  left_epoch: int | None = None  # The epoch after which the caller ended the trial.
  left_reason: str | None = None  # Why (the caller's words).
  interrupted_epoch: int | None = None  # The epoch after which a signal stopped it (saved).
  interrupted_step: int | None = None  # The step inside an epoch where a signal stopped it.

  def __post_init__(self):
    self.stopper = early_stopping.EarlyStopping(self.config)
    self.stopping = self.stopper.replay(self.history)  # Where an uninterrupted run stood.

  @property
  def diverged(self) -> bool:
    return self.diverged_step is not None

  @property
  def finished(self) -> bool:
    return (self.diverged or self.stopping.stopped or self.left_epoch is not None
            or self.interrupted)

  @property
  def interrupted(self) -> bool:
    return self.interrupted_epoch is not None or self.interrupted_step is not None


def open_checkpointer(workdir: str, config: ml_collections.ConfigDict, own_process: bool = False
                      ) -> checkpointing.Checkpointer:
  """The checkpoints of the run (or trial) in `workdir`: the latest `config.checkpoint.keep` and,
  with `keep_best`, the best by `early_stopping.best_checkpoint_metric`. `own_process`: a trial
  this process trains alone (saved without the other processes of a multi-process sweep)."""
  best = early_stopping.best_checkpoint_metric(config) if config.checkpoint.keep_best else None
  return checkpointing.Checkpointer(workdir, keep=config.checkpoint.keep, best=best,
                                    own_process=own_process)


def best_weights_on_resume(trial: Trial, state, epoch: int | None):
  """The best weights so far of a resumed trial (`state` is that of the end of `epoch`; None: of
  a step inside an epoch), for `restore_best_weights`: the restored state's, or the best
  checkpoint's; None when not needed."""
  stopper, checkpointer = trial.stopper, trial.checkpointer
  best = stopper.best_record(trial.history) if stopper.restore_best_weights else None
  if best is None:
    return None
  if best['epoch'] == epoch:
    return jax.tree.map(jnp.copy, state)
  step = checkpointer.best_step() if checkpointer else None
  if step != best['step']:
    raise checkpointing.CheckpointError(
        f'{checkpointer.directory if checkpointer else "the run"} lacks the best checkpoint '
        f'(step {best["step"]}, epoch {best["epoch"]}) that restore_best_weights needs; rerun '
        'with --restart.')
  return checkpointer.restore(state, step)[0]


# With `checkpoint.every_minutes`, epochs train in calls of at most this many steps: a save falls
# due, and a signal is honoured, within that many steps. Default recipe, 2-core CPU, best of 9
# epochs: 500-step calls as fast as one call per epoch, 100-step calls 5% slower.
TIMED_CALL_STEPS = 500


def steps_per_call(config: ml_collections.ConfigDict, steps: int | None) -> int | None:
  """The steps of a single run's training calls: `steps` (None: the whole epoch), at most
  `TIMED_CALL_STEPS` with `checkpoint.every_minutes`."""
  if not config.checkpoint.every_minutes:
    return steps
  return min(steps or TIMED_CALL_STEPS, TIMED_CALL_STEPS)


def call_edges(num_steps: int, steps_per_call: int | None, cuts: tuple[int, ...] = (),
               save_points: tuple[int, ...] = ()) -> list[int]:
  """Where the training calls of `num_steps` steps begin and end: every `steps_per_call` steps
  (None: one call), before each step in `cuts`, and at each of `save_points` (where a checkpoint
  falls due), or at the first later step that leaves no call of one step (none: the end).

  An epoch of several steps gets no call of one step: XLA compiles a one-step scan without its
  loop, and its rounding then differs from the same step inside a longer call. A lone step joins
  its neighbour's call (`cuts` must leave none between them).
  """
  fixed = {0, num_steps, *(c for c in cuts if 0 < c < num_steps)}
  for point in sorted(save_points):
    fixed.add(next((e for e in range(max(point, 0), num_steps)
                    if all(abs(e - f) != 1 for f in fixed)), num_steps))
  size = max(steps_per_call or num_steps, min(num_steps, 2))
  return sorted(fixed | {e for e in range(0, num_steps, size)
                         if all(abs(e - f) != 1 for f in fixed)})


class MidEpochCheckpoints:
  """When a program group of `trials` (a single run: one) saves inside its epochs: at each
  multiple of `checkpoint.every_steps`, when `checkpoint.every_minutes` have passed since the last
  save, and when `stop` is requested (a signal). `last_step` is the step of the last save (or
  resume). The cadence is the group's: `checkpoint` is part of `sweeps.vectorized.program_key`.
  `together`: all processes train the group (a single run) and take process 0's timer and signal;
  otherwise (a multi-process sweep's processes train different trials) this process's decide."""

  def __init__(self, trials: list[Trial], steps_per_epoch: int,
               stop: preemption.StopRequest | None, last_step: int,
               clock: Callable[[], float] = time.monotonic, together: bool = True):
    checkpoint = trials[0].config.checkpoint
    self.trials, self.steps_per_epoch, self.stop, self.clock = trials, steps_per_epoch, stop, clock
    self.together = together
    self.every_steps, self.seconds = checkpoint.every_steps, 60 * checkpoint.every_minutes
    self.last_step, self.last_time = last_step, clock()
    self.stopping = False  # Whether the last `due` was a stop request's.

  def due(self, step: int, signal: bool = True) -> bool:
    """Whether a checkpoint is due at `step` (with `signal`, also because of a stop request, then
    `stopping`). Processes of a multi-process run save together (`together`): they take process
    0's timer and signal."""
    self.stopping = False
    by_steps = bool(self.every_steps
                    and step // self.every_steps > self.last_step // self.every_steps)
    if not (self.seconds or signal):
      return by_steps
    timed = bool(self.seconds) and self.clock() - self.last_time >= self.seconds
    stopping = signal and self.stop is not None and self.stop.requested
    timed, self.stopping = (parallel.process_zero_decides((timed, stopping)) if self.together
                            else (timed, stopping))
    return by_steps or timed or self.stopping

  @property
  def enabled(self) -> bool:
    """Whether the config asks for checkpoints inside epochs (signals aside)."""
    return bool(self.every_steps or self.seconds)

  def saved(self, step: int) -> None:
    self.last_step, self.last_time = step, self.clock()

  def epoch(self, epoch: int, resumed: 'Sequence[checkpointing.EpochInProgress | None] | None'
            ) -> 'EpochSaves':
    """The saves inside `epoch`, trained from `resumed`'s step (per trial, all at one step) when
    it is that epoch's."""
    inside = resumed is not None and any(r is not None and r.epoch == epoch for r in resumed)
    return EpochSaves(self, epoch, list(resumed) if inside else None)


class EpochSaves:
  """The saves inside one epoch of a program group, offered the trials' states between its
  training calls (`first_step` onwards; `save_points`, counted from there, are where every_steps
  asks for a call to end). `resumed`: each trial's part of the epoch trained before (all trials
  at one step), or None."""

  def __init__(self, cadence: MidEpochCheckpoints, epoch: int,
               resumed: 'list[checkpointing.EpochInProgress] | None'):
    self.cadence, self.epoch, self.resumed = cadence, epoch, resumed
    self.first_step = resumed[0].steps_done if resumed else 0
    self.start = (epoch - 1) * cadence.steps_per_epoch + self.first_step  # Global step.
    end, every = epoch * cadence.steps_per_epoch, cadence.every_steps
    self.save_points = tuple(s - self.start for s in range(-(-self.start // every) * every, end,
                                                           every)) if every else ()
    self.stopped_step = None  # The global step where a stop request ended the epoch.

  def whole(self, step_metrics):
    """The per-step metrics of the epoch so far (leading trial axis): the resumed steps' and then
    `step_metrics`."""
    if not self.resumed:
      return step_metrics
    return jax.tree.map(lambda *trials: np.stack(trials), *[
        epochs.join_calls(r.step_metrics, _pick(step_metrics, i))
        for i, r in enumerate(self.resumed)])

  def due(self, done: int) -> bool:
    return self.cadence.due(self.start + done)

  def save(self, state: Callable[[int], Any], done: int, step_metrics,
           live: np.ndarray | None = None) -> bool:
    """Saves each `live` trial's `state(trial)`, `done` steps after `first_step` (`step_metrics`:
    theirs, leading trial axis); returns whether to stop there (a stop request). Not while a
    trial's loss or norm is not finite: that trial is not saved and the epoch goes on (its end
    finds the divergence)."""
    metrics = self.whole(step_metrics)
    step, stopping = self.start + done, True
    for i, trial in enumerate(self.cadence.trials):
      if live is not None and not live[i]:
        continue
      trial_metrics = _pick(metrics, i)
      if not epochs.all_finite(trial_metrics):
        stopping = False
        continue
      if trial.checkpointer:
        trial.checkpointer.save(step, state(i), self.epoch - 1, trial.history,
                                checkpointing.EpochInProgress(self.epoch, self.first_step + done,
                                                              trial_metrics))
    self.cadence.saved(step)
    if self.cadence.stopping and stopping:
      self.stopped_step = step
    return self.stopped_step is not None


def _pick(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree) if tree is not None else None


def run_epochs(program: TrialProgram, trials: list[Trial], book: epochs.EpochLog,
               first_epoch: int, num_epochs: int,
               on_epoch: Callable[[int, dict[int, dict]], Iterable[int] | None] | None = None,
               stop: preemption.StopRequest | None = None,
               regroup: Callable[[np.ndarray], bool] | None = None,
               resumed: Sequence[checkpointing.EpochInProgress | None] | None = None) -> int:
  """Trains `trials` (the program's, in its order) from `first_epoch` to `num_epochs`; with
  `resumed` (per trial, the checkpoints saved inside `first_epoch`, all at one step), that epoch
  from where they were saved.

  After each epoch calls `on_epoch(epoch, records)`: `records` maps the index of each trial
  still training to its epoch record, on logged epochs; the indices it returns end those trials.
  When `stop` is requested (a signal), the call of steps under way is finished (without a
  cadence inside epochs, a sweep's call is the epoch), every trial still training saves a
  checkpoint (`Trial.interrupted_epoch`, or `interrupted_step` inside an epoch) and it returns.
  A program that `saves_inside_epochs` also saves at `checkpoint.every_steps` and
  `every_minutes` (`MidEpochCheckpoints`). It also returns
  when `regroup(live)` says the program should be rebuilt for the trials still training (`live`,
  after an epoch with some left). Returns the last epoch trained whole.
  """
  config = trials[0].config
  steps_per_epoch = book.steps_per_epoch
  every = config.checkpoint.every_epochs
  last = first_epoch - 1
  resumed_steps = next((r.steps_done for r in resumed or ()
                        if r is not None and r.epoch == first_epoch), 0)
  inside = (MidEpochCheckpoints(trials, steps_per_epoch, stop,
                                last * steps_per_epoch + resumed_steps,
                                together=not program.own_process)
            if program.saves_inside_epochs else None)
  # Any cadence also saves where a trial's training ends.
  saves_ends = bool(every or inside is not None and inside.enabled)
  for epoch in range(first_epoch, num_epochs + 1):
    live = np.asarray([not t.finished for t in trials])
    if not live.any():
      break
    last = epoch
    if epoch == num_epochs:
      for trial in trials:
        trial.recorder.prepare_plots()  # The host is idle while the device trains.
    saves = inside.epoch(epoch, resumed) if inside else None
    with book.timed('train_sec'):
      step_metrics, halted = program.train_epoch(epoch, ~live, saves)
    epoch_sec = book.last_sec
    if saves and saves.stopped_step is not None:
      for i in np.flatnonzero(live):
        trials[i].interrupted_step = saves.stopped_step
      return epoch - 1
    for i in np.flatnonzero(live & halted):
      trials[i].diverged_step = program.diverged_step(int(i))
    live &= ~halted
    records, improved = {}, np.zeros(len(trials), bool)
    if book.logs(epoch) and live.any():
      validation_totals = None
      if program.has_validation:
        with book.timed('validation_sec'):
          validation_totals = program.evaluate('validation')
      with book.timed('eval_sec'):
        totals = program.evaluate('test')
      for i in np.flatnonzero(live):
        trial = trials[i]
        record = book.record(epoch, _pick(step_metrics, i), _pick(totals, i), epoch_sec,
                             _pick(validation_totals, i))
        if trial.hooks:
          record = hooks_lib.run_hooks(trial.hooks, record, program.state(int(i)))
        trial.history.append(record)
        trial.recorder.write_epoch(record)
        trial.stopping = trial.stopper.update(trial.stopping, record)
        improved[i] = (trial.stopper.restore_best_weights
                       and trial.stopper.best_record(trial.history) is record)
        records[int(i)] = record
    if improved.any():
      program.keep_best(improved)
    # Before the checkpoints, as a single run always logged: its epoch line comes first.
    leaving = ending_reasons(on_epoch(epoch, records) if on_epoch else None)
    stopping = stop is not None and stop.requested and epoch < num_epochs
    due = inside is not None and inside.due(epoch * steps_per_epoch, signal=False)
    for i in np.flatnonzero(live):
      trial = trials[i]
      interrupted = stopping and not trial.stopping.stopped and i not in leaving
      ends = epoch == num_epochs or trial.stopping.stopped or i in leaving
      if trial.checkpointer and (interrupted or due or every and epoch % every == 0
                                 or saves_ends and ends):
        trial.checkpointer.save(epoch * steps_per_epoch, program.state(int(i)), epoch,
                                trial.history)
        if inside:
          inside.saved(epoch * steps_per_epoch)
      if interrupted:
        trial.interrupted_epoch = epoch
      elif i in leaving and not trial.stopping.stopped:
        trial.left_epoch, trial.left_reason = epoch, leaving[i]
    if stopping and any(t.interrupted_epoch == epoch for t in trials):
      return epoch
    still = np.asarray([not t.finished for t in trials])
    if regroup and epoch < num_epochs and still.any() and not still.all() and regroup(still):
      return epoch
  return last


def ending_reasons(ending: Iterable[int] | Mapping[int, str] | None) -> dict[int, str | None]:
  """What `on_epoch` returned (trial indices, or indices mapped to why they end) as
  {index: reason or None}."""
  if isinstance(ending, Mapping):
    return {int(i): reason for i, reason in ending.items()}
  return {int(i): None for i in ending or ()}


def status(trial: Trial, steps_per_epoch: int) -> tuple[str, str]:
  """(status, what happened) of a trial whose training ended."""
  if trial.diverged:
    step = trial.diverged_step
    return recorder_lib.DIVERGED, (
        f'loss or weights not finite at step {step} (epoch {(step - 1) // steps_per_epoch + 1}); '
        'training stopped there.')
  if trial.stopping.stopped:
    return recorder_lib.STOPPED, (f'early stopping after epoch {trial.stopping.stopped_epoch}: '
                                  f'{trial.stopper.reason(trial.stopping)}.')
  if trial.interrupted_step is not None:
    epoch, step = divmod(trial.interrupted_step, steps_per_epoch)
    return recorder_lib.INTERRUPTED, (
        f'stopped by a signal at step {trial.interrupted_step} (step {step} of epoch {epoch + 1}), '
        'its checkpoint saved; rerun the command to resume.')
  if trial.interrupted_epoch is not None:
    return recorder_lib.INTERRUPTED, (f'stopped by a signal after epoch {trial.interrupted_epoch}, '
                                      'its checkpoint saved; rerun the command to resume.')
  if trial.left_epoch is not None:
    return recorder_lib.PRUNED, (trial.left_reason
                                 or f'ended by the sweep after epoch {trial.left_epoch}.')
  return recorder_lib.DONE, ''


def final_record(trial: Trial) -> dict | None:
  """The record a trial's results are those of: its last, or with `restore_best_weights` its
  best epoch's (the weights it ends with); None when it has none."""
  best = (trial.stopper.best_record(trial.history)
          if trial.stopper.restore_best_weights else None)
  return best or (trial.history[-1] if trial.history else None)


def finish(trials: list[Trial], steps_per_epoch: int, timings: dict,
           extra_summary: dict | None = None, plot: bool = True) -> None:
  """Waits for the checkpoints, then writes each trial's summary (not a diverged one's: its
  records end before its weights stopped being finite; not an interrupted one's) and status;
  `plot` draws its curves."""
  for trial in trials:
    if trial.checkpointer:
      trial.checkpointer.wait()
      trial.checkpointer.close()
    if plot:
      trial.recorder.plot_curves()
    state, detail = status(trial, steps_per_epoch)
    final = final_record(trial)
    summary = None
    if final is not None and not trial.diverged and not trial.interrupted:
      summary = {**final, **(extra_summary or {}), 'timings': timings}
      if trial.stopper.enabled:
        summary['early_stopping'] = trial.stopper.summary(trial.stopping)
    trial.recorder.finish(state, summary, detail)
