"""The training loop: `train_and_evaluate` runs the pure steps (`steps.py`) over the local devices,
epoch by epoch, and hands each epoch's record to the run's records (`records/`)."""

import contextlib
import dataclasses
import functools
import os
import sys
import time
from typing import Any, Callable, Sequence, TextIO

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mlp_mnist import config_checks
from mlp_mnist import data
from mlp_mnist import driver
from mlp_mnist import epochs
from mlp_mnist import errors
from mlp_mnist import hooks as hooks_lib
from mlp_mnist import preemption
from mlp_mnist import steps
from mlp_mnist.devices import compilation
from mlp_mnist.devices import parallel
from mlp_mnist.devices import profiling
from mlp_mnist.records import checkpointing
from mlp_mnist.records import console
from mlp_mnist.records import recorder as recorder_lib
from mlp_mnist.records import workdirs


class Trainer:
  """The pmapped training and evaluation functions for one config and set of devices.

  `train_steps` runs any number of steps in one call; an epoch may be split into several calls
  (for a progress bar, checkpoints inside epochs) with identical results, each call shape compiled
  once.
  """

  def __init__(self, config: ml_collections.ConfigDict, devices):
    self.config = config
    self.devices = devices
    self.num_devices = parallel.axis_size(devices)
    self.rows = parallel.process_rows(devices)
    axis = parallel.AXIS
    self.train_epoch = parallel.pmap(
        functools.partial(steps.train_epoch, axis_name=axis), devices,
        in_axes=(None, None, None, 0), out_axes=(None, None), donate_argnums=(0,))
    self._evaluate = parallel.pmap(functools.partial(steps.evaluate, axis_name=axis), devices,
                                   in_axes=(None, None, None, 0), out_axes=None)
    self._train_programs = compilation.ProgramsByShape(devices[0].platform)  # By steps a call.
    self._eval_programs = compilation.ProgramsByShape(devices[0].platform)  # By split shapes.

  def compile(self, state: steps.TrainState, train_data, test_data, test_indices,
              steps_per_call: int | None = None, cuts: tuple[int, ...] = ()) -> None:
    """Compiles ahead of time evaluation (of `test_data`) and training for every call shape of an
    epoch, also of an epoch split at `cuts` (a profiled epoch).

    Multi-process runs compile on the first call instead: pmap's ahead-of-time programs take
    global-shaped arguments there, while each process holds only its devices' slices.
    """
    if parallel.is_multiprocess():
      return
    epoch_indices = self.epoch_indices(1, len(train_data[1]))
    chunks = split_steps(epoch_indices, steps_per_call) + split_steps(epoch_indices,
                                                                      steps_per_call, cuts)
    for chunk in chunks:
      self._train_program(state, train_data, chunk)
    self.compile_evaluation(state, test_data, test_indices)

  def _train_program(self, state: steps.TrainState, train_data, batch_indices: np.ndarray):
    """The training call for as many steps as `batch_indices` holds, compiled ahead of time at its
    first use (calls of other lengths: checkpoints inside epochs, a resumed epoch's rest); in
    multi-process runs, the pmapped function itself."""
    if parallel.is_multiprocess():
      return self.train_epoch
    return self._train_programs.get(
        batch_indices.shape[1], lambda: self.train_epoch.lower(state, *train_data, batch_indices),
        batch_indices.shape[2])

  def compile_evaluation(self, state: steps.TrainState, split_data, indices) -> None:
    """Compiles `evaluate` ahead of time for one split's shapes, as `compile` does (not in
    multi-process runs); test and validation sets each get their program."""
    if not parallel.is_multiprocess():
      self._eval_programs.get(_shapes(split_data, indices),
                              lambda: self._evaluate.lower(state, *split_data, indices),
                              indices.shape[2])

  def evaluate(self, state: steps.TrainState, images, labels, indices):
    """`steps.evaluate` summed over the devices, compiled ahead when `compile_evaluation` was."""
    program = self._eval_programs.find(_shapes((images, labels), indices), self._evaluate)
    return program(state, images, labels, indices)

  def train_steps(self, state: steps.TrainState, images, labels, batch_indices: np.ndarray):
    """`train_epoch` over `batch_indices` [devices, steps, batch], compiled ahead when it can."""
    program = self._train_program(state, (images, labels), batch_indices)
    return program(state, images, labels, batch_indices)

  def epoch_indices(self, epoch: int, num_examples: int) -> np.ndarray:
    """This process's slices of epoch `epoch`'s global batches: [local devices, steps, batch]."""
    order = epochs.epoch_permutation(self.config.seed, epoch, num_examples)
    return parallel.shard_batch_indices(order, self.config.batch_size, self.num_devices)[self.rows]

  def eval_indices(self, num_examples: int) -> np.ndarray:
    return parallel.eval_batch_indices(num_examples, self.config.eval_batch_size,
                                       self.num_devices)[self.rows]


def _shapes(split_data, indices) -> tuple:
  return tuple(tuple(x.shape) for x in (*split_data, indices))


def split_steps(batch_indices: np.ndarray, steps_per_call: int | None,
                cuts: tuple[int, ...] = (), save_points: tuple[int, ...] = ()
                ) -> list[np.ndarray]:
  """Splits [devices, steps, batch] indices into calls at `driver.call_edges` (calls of
  `steps_per_call` steps, also cut at `cuts` and `save_points`, never a call of one step)."""
  edges = driver.call_edges(batch_indices.shape[1], steps_per_call, cuts, save_points)
  return [batch_indices[:, a:b] for a, b in zip(edges, edges[1:])]


def run_epoch(trainer: Trainer, state: steps.TrainState, train_data, batch_indices: np.ndarray,
              steps_per_call: int | None = None, bar: console.EpochBar | None = None,
              trace: profiling.TraceWindow | None = None,
              saves: driver.EpochSaves | None = None):
  """Trains one epoch (the steps of `batch_indices`) in calls of `steps_per_call` steps; returns
  the state and the per-step metrics of the steps trained.

  Each call is dispatched before the previous call's metrics are fetched, so the device never
  waits for the host. With `trace`, the calls are also cut at its window, which is profiled.
  With `saves`, the calls also end at its save points, and between two calls where a checkpoint
  is due, `saves` gets the state and may end the epoch there (a stop request).
  """
  fetched, pending, offset = [], None, 0

  def fetch():
    fetched.append(jax.device_get(pending))
    if bar:
      bar.update(fetched[-1])

  for chunk in split_steps(batch_indices, steps_per_call, trace.cuts if trace else (),
                           saves.save_points if saves else ()):
    if offset and saves and saves.due(offset):
      fetch()
      pending = None
      if saves.save(lambda _: state, offset, _one_trial(epochs.join_calls(*fetched))):
        break
    traced = trace and trace.start <= offset < trace.stop
    if traced and offset == trace.start:
      trace.begin(state)
    with trace.call(offset) if traced else contextlib.nullcontext():
      state, metrics = trainer.train_steps(state, *train_data, chunk)
    offset += chunk.shape[1]
    if traced and offset >= trace.stop:
      trace.end(state)
    if pending is not None:
      fetch()
    pending = metrics
  if pending is not None:
    fetch()
  if bar:
    bar.close()
  return state, epochs.join_calls(*fetched)


class TrainingDiverged(errors.UserError, FloatingPointError):
  """The loss or weights of a single run stopped being finite; its status says `diverged`."""


class RunProgram:
  """A single run as a program group of one trial (`driver.TrialProgram`): the pmapped
  data-parallel epoch of `trainer`, one `lax.scan` call per epoch (or per progress-bar update, and
  ending where a checkpoint inside the epoch falls due: `driver.EpochSaves`).

  Divergence costs nothing per step: after each epoch, the fetched per-step losses and the last
  step's norms are checked on the host (NaN or infinite weights make the next loss or the final
  parameter norm so).
  """

  num_trials = 1
  saves_inside_epochs = True
  own_process = False

  def __init__(self, trainer: Trainer, state: steps.TrainState, train_data, splits: dict,
               num_train: int, steps_per_epoch: int, steps_per_call: int | None,
               show_bar: bool, stream: TextIO, trace: profiling.TraceWindow | None):
    self.trainer, self.current, self.train_data = trainer, state, train_data
    self.splits = splits  # 'test' (and 'validation') -> (data, indices)
    self.has_validation = 'validation' in splits
    self.num_train, self.steps_per_epoch = num_train, steps_per_epoch
    self.steps_per_call, self.show_bar, self.stream, self.trace = (steps_per_call, show_bar,
                                                                   stream, trace)
    self.best = None
    self._diverged_step = None

  def train_epoch(self, epoch: int, frozen: np.ndarray, saves: driver.EpochSaves | None = None):
    del frozen  # A single run stops when it diverges or stops early.
    config = self.trainer.config
    first = saves.first_step if saves else 0
    bar = (console.EpochBar(self.stream, epoch, config.num_epochs, self.steps_per_epoch - first)
           if self.show_bar else None)
    trace = self.trace  # The profiled epoch's, unless it resumes inside that epoch.
    self.current, step_metrics = run_epoch(
        self.trainer, self.current, self.train_data,
        self.trainer.epoch_indices(epoch, self.num_train)[:, first:], self.steps_per_call, bar,
        dataclasses.replace(trace, first_step=(epoch - 1) * self.steps_per_epoch)
        if trace and epoch == config.profile.epoch and not first else None, saves)
    step_metrics = _one_trial(step_metrics)
    if saves:
      step_metrics = saves.whole(step_metrics)
    finite = np.isfinite(step_metrics['loss_sum'][0])
    halted = not epochs.all_finite(step_metrics)
    if halted:
      self._diverged_step = (epoch - 1) * self.steps_per_epoch + (
          int(np.argmin(finite)) + 1 if not finite.all() else self.steps_per_epoch)
    return step_metrics, np.asarray([halted])

  def evaluate(self, split: str):
    data, indices = self.splits[split]
    return _one_trial(jax.device_get(self.trainer.evaluate(self.current, *data, indices)))

  def state(self, trial: int) -> steps.TrainState:
    del trial
    return self.current

  def keep_best(self, improved: np.ndarray) -> None:
    del improved
    self.best = jax.tree.map(jnp.copy, self.current)  # The next epoch donates the state.

  def diverged_step(self, trial: int) -> int:
    del trial
    return self._diverged_step


def _one_trial(tree):
  """Host arrays with a leading trial axis of one."""
  return jax.tree.map(lambda x: np.asarray(x)[None], tree)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | None,
                       devices=None, dataset: data.Dataset | None = None,
                       log: Callable[[str], Any] = print, restart: bool = False,
                       stream: TextIO | None = None,
                       hooks: Sequence[hooks_lib.Hook] = ()) -> dict[str, Any]:
  """Trains `config` on the local devices, evaluating on the whole test set (and the validation
  split, when `config.data.validation_split` holds one out) after each logged epoch.

  With a `workdir`, resumes from its latest checkpoint when it holds this same run (a different
  config is an error unless `restart`, which starts over; a checkpoint saved inside an epoch
  resumes that epoch where it stopped), checkpoints every `config.checkpoint.every_epochs` (and
  inside epochs every `every_steps` steps or `every_minutes` minutes, `driver.MidEpochCheckpoints`)
  and writes the run's records there (`records/`). A progress
  bar goes to `stream` (default stdout) when `config.logging.progress_bar` asks for one. After
  each evaluated epoch, `config.hooks` and then `hooks` (`hooks.py`) may add metrics to its record,
  and `config.early_stopping` may end training. A run whose loss or weights stop being finite
  stops with status `diverged` and raises TrainingDiverged. SIGTERM or SIGINT stop it after the
  call of steps under way (the epoch, unless a progress bar or a checkpoint cadence inside epochs
  splits it), with a checkpoint and status `interrupted`: it raises `preemption.Preempted`
  (the scripts exit with status 3); rerunning resumes. Returns the final `state`, the
  per-epoch records (`history`), where the time went (`timings`) and, with early stopping, its
  `early_stopping` summary.
  """
  start = time.time()
  devices = parallel.local_devices(devices)
  config_checks.validate_config(config, num_devices=parallel.axis_size(devices))
  epoch_hooks = hooks_lib.resolve_all(config.hooks, hooks)
  lead = workdirs.is_lead_process()
  log = log if lead else (lambda _: None)
  stream = stream or sys.stdout
  if workdir and not restart:
    workdirs.prepare(workdir, config, restart)
  if dataset is None:
    dataset = data.load_dataset(config.data)
  dataset = data.hold_out_validation(dataset, config.data.validation_split)
  if workdir and restart:  # Only once the new config and data have loaded and passed their checks.
    workdirs.prepare(workdir, config, restart)
  if workdir:
    workdirs.check_dataset(workdir, dataset.info())
  (train_images, train_labels), (test_images, test_labels) = dataset.train, dataset.test
  data_sec = time.time() - start
  num_train = len(train_labels)
  trainer = Trainer(config, devices)
  steps_per_epoch = epochs.num_batches(num_train, config.batch_size)
  show_bar = lead and console.shows_bar(config.logging.progress_bar, stream)
  steps_per_call = driver.steps_per_call(config, console.steps_per_call(
      steps_per_epoch, config.logging.bar_updates_per_epoch) if show_bar else None)

  state = steps.create_train_state(config, jax.random.PRNGKey(config.seed), steps_per_epoch,
                                   dataset.image_shape, dataset.num_classes)
  parameters = console.parameter_overview(state.params)
  trace = _trace_window(config, workdir, steps_per_epoch, lead)
  state, train_data, test_data, validation_data = parallel.replicate(
      (state, (train_images, train_labels), (test_images, test_labels), dataset.validation),
      devices)
  checkpointer, history, first_epoch, resumed_step, resumed = None, [], 1, None, None
  if workdir:
    checkpointer = driver.open_checkpointer(workdir, config)
    restored = checkpointer.restore_latest(state, warn=log)
    if restored:
      state, resumed_step, run = restored
      history, first_epoch = run['history'], run['epoch'] + 1
      resumed = checkpointing.EpochInProgress.from_run(run)
  recorder = recorder_lib.Recorder(workdir, config, devices, history, resumed_step,
                                   dataset.info(), log=log)
  run = driver.Trial(config, recorder, checkpointer, list(history), epoch_hooks)
  stopper = run.stopper
  best_weights = driver.best_weights_on_resume(run, state,
                                               first_epoch - 1 if resumed is None else None)
  test_indices = trainer.eval_indices(len(test_labels))
  splits = {'test': (test_data, test_indices)}
  if validation_data is not None:
    splits['validation'] = (validation_data, trainer.eval_indices(len(dataset.validation[1])))
  compile_start = time.time()
  if first_epoch <= config.num_epochs:
    trainer.compile(state, train_data, test_data, test_indices, steps_per_call,
                    trace.cuts if trace else ())
    if validation_data is not None:
      trainer.compile_evaluation(state, *splits['validation'])
  book = epochs.EpochLog(config, steps_per_epoch, num_train, start,
                         {'data_sec': data_sec, 'compile_sec': time.time() - compile_start})
  processes = f' in {jax.process_count()} processes' if parallel.is_multiprocess() else ''
  held_out = (f'{len(dataset.validation[1])} validation examples, '
              if validation_data is not None else '')
  log(f'{num_train} training examples, {held_out}{len(test_labels)} test examples, '
      f'{trainer.num_devices} {devices[0].platform} device(s){processes}, '
      f'{steps_per_epoch} steps per epoch; '
      f'data ready in {data_sec:.1f}s, compiled in {book.timings["compile_sec"]:.1f}s.')
  log(console.format_parameters(parameters))
  if resumed_step is not None:
    where = (f'epoch {first_epoch - 1}' if resumed is None else
             f'step {resumed.steps_done} of {steps_per_epoch} in epoch {resumed.epoch}')
    log(f'Resumed from the checkpoint at step {resumed_step} ({where}) in '
        f'{checkpointer.directory}.')

  program = RunProgram(trainer, state, train_data, splits, num_train, steps_per_epoch,
                       steps_per_call, show_bar, stream, trace)
  program.best = best_weights

  def on_epoch(epoch, records):
    if records:
      log(console.format_epoch(records[0]))
    if run.stopping.stopped and run.stopping.stopped_epoch == epoch:
      log(f'Early stopping after epoch {epoch}: {stopper.reason(run.stopping)}.')

  with preemption.stop_on_signals() as stop:
    driver.run_epochs(program, [run], book, first_epoch, config.num_epochs, on_epoch, stop,
                      resumed=[resumed])
  timings = book.finish()
  driver.finish([run], steps_per_epoch, timings,
                {'num_train_examples': num_train, 'parameters': parameters})
  if run.interrupted:
    step = run.interrupted_step or run.interrupted_epoch * steps_per_epoch
    saved = (f'saved the checkpoint of step {step} in {checkpointer.directory}; rerun the same '
             'command to resume' if checkpointer else 'nothing saved (no --workdir)')
    epoch, inside = divmod(step, steps_per_epoch)
    where = (f'after epoch {epoch} of {config.num_epochs}' if run.interrupted_step is None else
             f'inside epoch {epoch + 1} of {config.num_epochs}, after its step {inside} of '
             f'{steps_per_epoch}')
    raise preemption.Preempted(f'{stop.name} received: stopped {where}; {saved}.')
  if run.diverged:
    raise TrainingDiverged(
        f'training diverged: {driver.status(run, steps_per_epoch)[1][:-1]}'
        f'{f" ({recorder.workdir}/status says diverged)" if recorder.workdir else ""}; '
        'lower the learning rate or check the data.')
  history = run.history
  state, final = program.current, history[-1]
  if program.best is not None:
    state = program.best
    final = driver.final_record(run)
    log(f'Restored the best weights: epoch {final["epoch"]}, {stopper.monitor} '
        f'{final[stopper.monitor]:.4f}.')
  stopping = run.stopping
  if first_epoch > config.num_epochs or (stopping.stopped and stopping.stopped_epoch < first_epoch):
    log(f'{workdir} already holds the final checkpoint of this run; nothing to train.')
  validation = (f'validation accuracy: {final["validation_accuracy"]:.2%}, '
                if 'validation_accuracy' in final else '')
  log(f'Final {validation}test accuracy: {final["test_accuracy"]:.2%} (training '
      f'{timings["train_sec"]:.1f}s, evaluation {timings["eval_sec"]:.1f}s, '
      f'total {timings["total_sec"]:.1f}s).')
  if trace and first_epoch <= config.profile.epoch and not (
      stopping.stopped and stopping.stopped_epoch < config.profile.epoch):
    log(f'Profiled steps {trace.start}-{trace.stop - 1} of epoch {config.profile.epoch} into '
        f'{trace.directory} (tensorboard --logdir {trace.directory}).')
  result = {'state': state, 'history': history, 'timings': timings}
  if stopper.enabled:
    result['early_stopping'] = stopper.summary(stopping)
  return result


def _trace_window(config: ml_collections.ConfigDict, workdir: str | None, steps_per_epoch: int,
                  lead: bool) -> profiling.TraceWindow | None:
  """The window of `config.profile`, or None when it asks for no profile. Every process cuts
  its calls at the window (they must make the same calls); process 0 records the trace."""
  profile = config.profile
  if not profile.epoch:
    return None
  if profile.start_step >= steps_per_epoch:
    raise config_checks.ConfigError(
        f'config.profile.start_step={profile.start_step} is past the epoch\'s last step '
        f'({steps_per_epoch - 1}); choose a step in [0, {steps_per_epoch - 1}].')
  if not workdir:
    raise config_checks.ConfigError('config.profile.epoch needs a workdir to write the trace '
                                    'into; pass --workdir or set config.profile.epoch=0.')
  start = profile.start_step
  stop = min(start + profile.num_steps, steps_per_epoch)
  if steps_per_epoch > 1:  # No call of one step (`split_steps`): the window takes in a lone step.
    if stop - start == 1:
      start, stop = (start, stop + 1) if stop < steps_per_epoch else (start - 1, stop)
    start = 0 if start == 1 else start
    stop = steps_per_epoch if steps_per_epoch - stop == 1 else stop
  return profiling.TraceWindow(start, stop,
                               os.path.join(workdir, workdirs.PROFILE_DIR), record=lead)
