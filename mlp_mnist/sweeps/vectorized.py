"""Many trials of one program trained at once: `vmap` over a trial axis, spread over the devices.

Trials share a compiled program when their configs differ only in values that reach the steps as
arrays: the per-trial values of the selected components (`config_checks.per_trial_keys`: the
seed, the dropout rate as long as it stays above zero or stays zero, the optimizer's
hyperparameters, a loss's strength, ...). `program_key` is the config without those values (and
without early stopping's settings, which act between epochs on the host); trials with equal keys train together
in `train_trials`, and each trial gives the metrics it gives alone. A trial that diverges or that
early stopping ends stops updating while the others go on.
"""

import json
import time
from typing import Any, Callable, Protocol, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mlp_mnist import config_checks
from mlp_mnist import data
from mlp_mnist import driver
from mlp_mnist import early_stopping
from mlp_mnist import epochs
from mlp_mnist import hooks as hooks_lib
from mlp_mnist import preemption
from mlp_mnist import steps
from mlp_mnist.devices import compilation
from mlp_mnist.devices import parallel
from mlp_mnist.records import checkpointing
from mlp_mnist.records import recorder as recorder_lib
from mlp_mnist.sweeps import sweep_files


def stack_trials(states: list[steps.TrainState]) -> steps.TrainState:
  """Stacks the states of trials that share one program along a new leading trial axis.

  The trials must differ only in values (parameters, seeds, injected hyperparameters, dropout
  rate), not in shapes or structure; the first state's model, optimizer and schedule serve all.
  """
  leaves = zip(*(jax.tree.leaves(s) for s in states))
  return jax.tree.unflatten(jax.tree.structure(states[0]), [jnp.stack(x) for x in leaves])


def program_key(config: ml_collections.ConfigDict) -> str:
  """Equal for configs that `train_trials` can train together in one compiled program."""
  flat = config_checks.flatten_config(config)
  value_keys = config_checks.per_trial_keys(config)
  key = {k: v for k, v in flat.items()
         if k not in value_keys and not k.startswith('early_stopping.')}
  key['model.use_dropout'] = config.model.dropout_rate > 0
  return json.dumps(key, sort_keys=True, default=repr)


def group_by_program(configs: Sequence[ml_collections.ConfigDict],
                     max_group_size: int = 0) -> list[list[int]]:
  """Indices of `configs` grouped by `program_key`, in order of first appearance.

  With `max_group_size`, larger groups are cut into groups of at most that many trials.
  """
  groups = {}
  for index, config in enumerate(configs):
    groups.setdefault(program_key(config), []).append(index)
  size = max_group_size or len(configs)
  return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def guarded_train_epoch(state: steps.TrainState, diverged: jax.Array, images: jax.Array,
                        labels: jax.Array, batch_indices: jax.Array):
  """`steps.train_epoch` of one trial that stops updating once its loss or weights are not finite.

  A step whose loss, gradient or new parameters are NaN or infinite is not applied and sets
  `diverged`; from then on the trial keeps its last finite state. Returns ((state, diverged),
  metrics as `steps.train_epoch` returns them).
  """

  def body(carry, indices):
    state, diverged = carry
    new_state, metrics = steps.train_step(state, steps.gather_batch(images, labels, indices),
                                          steps.step_rng(state))
    diverged = diverged | ~(jnp.isfinite(metrics['loss_sum']) & _norms_finite(metrics))
    state = jax.tree.map(lambda old, new: jnp.where(diverged, old, new), state, new_state)
    return (state, diverged), metrics

  carry, metrics = jax.lax.scan(body, (state, diverged), batch_indices)
  return carry, {**metrics, 'grad_norm': metrics['grad_norm'][-1],
                 'param_norm': metrics['param_norm'][-1]}


def _norms_finite(metrics):
  return jnp.isfinite(metrics['grad_norm']) & jnp.isfinite(metrics['param_norm'])


def chunk_epoch(carry, images: jax.Array, labels: jax.Array, batch_indices: jax.Array):
  """One epoch of a chunk of trials (leading axis), each as `guarded_train_epoch` trains it.

  Selecting between old and new state at every step, and the per-step norms that tell when to,
  cost a third of a step on CPUs: the epoch runs as `steps.train_epoch` and is rerun guarded only
  when a trial's loss or weights stopped being finite during it. Trials that diverged in earlier
  epochs keep their state.
  """
  state, diverged = carry
  new_state, metrics = jax.vmap(steps.train_epoch, in_axes=(0, None, None, 0))(
      state, images, labels, batch_indices)
  # Parameters that stop being finite make the next step's loss infinite or NaN, or at the end of
  # the epoch the parameter norm: checking these misses no step.
  finite = jnp.all(jnp.isfinite(metrics['loss_sum']), axis=1) & _norms_finite(metrics)
  newly_diverged = ~diverged & ~finite

  def keep(_):
    frozen = lambda old, new: jnp.where(diverged.reshape((-1,) + (1,) * (old.ndim - 1)), old, new)
    return (jax.tree.map(frozen, state, new_state), diverged), metrics

  def rerun_guarded(_):
    return jax.vmap(guarded_train_epoch, in_axes=(0, 0, None, None, 0))(
        state, diverged, images, labels, batch_indices)

  return jax.lax.cond(jnp.any(newly_diverged), rerun_guarded, keep, None)


def trial_batch_indices(configs: Sequence[ml_collections.ConfigDict], epoch: int,
                        num_examples: int) -> np.ndarray:
  """`[trials, steps, batch]`: each trial's own data order for `epoch`, as a 1-device run has it."""
  by_seed = {}
  for config in configs:
    if config.seed not in by_seed:
      order = epochs.epoch_permutation(config.seed, epoch, num_examples)
      by_seed[config.seed] = parallel.shard_batch_indices(order, config.batch_size, 1)[0]
  return np.stack([by_seed[c.seed] for c in configs])


def default_chunk_size(num_trials_per_device: int, state_bytes_per_trial: int,
                       platform: str) -> int:
  """How many of a device's trials train side by side (the rest wait for the next chunk).

  Accelerators take all at once. On CPUs, a chunk trains a whole epoch before the next one starts,
  and chunks whose parameters and optimizer state stay in the core's cache (2 trials of the
  default MLP, 2.4 MB) measured 1.1 to 2 times faster per trial than 16 or 32 trials at once.
  """
  if platform != 'cpu':
    return num_trials_per_device
  return max(1, min(num_trials_per_device, _CPU_CHUNK_BYTES // max(state_bytes_per_trial, 1)))


_CPU_CHUNK_BYTES = 3 * 2**20


def tree_bytes(tree) -> int:
  # jax and numpy arrays say their size without a copy; Python scalars become numpy ones.
  return sum(x.nbytes if hasattr(x, 'nbytes') else np.asarray(x).nbytes
             for x in jax.tree.leaves(tree))


class GroupProgram:
  """A program group of trials (`driver.TrialProgram`): `chunk_epoch` pmapped over the devices and
  vmapped over each device's trials, laid out `[devices, trials per device, ...]`."""

  def __init__(self, configs: Sequence[ml_collections.ConfigDict], state: steps.TrainState,
               dataset: data.Dataset, devices, chunk: int):
    first = configs[0]
    self.configs, self.num_trials, self.num_devices, self.chunk = (
        list(configs), len(configs), len(devices), chunk)
    self.num_train = len(dataset.train[1])
    self.carry = self.split((state, np.zeros(self.num_trials, bool)))
    eval_indices = lambda split: parallel.eval_batch_indices(len(split[1]), first.eval_batch_size,
                                                             1)[0]
    splits = {'test': dataset.test}
    if dataset.validation is not None:
      splits['validation'] = dataset.validation
    self.has_validation = 'validation' in splits
    self.train_data, self.splits = parallel.replicate(
        (dataset.train, {k: (v, eval_indices(v)) for k, v in splits.items()}), devices)
    self.train_fn_any_length = parallel.pmap_trials(chunk_epoch, devices, (0, None, None, 0),
                                                    chunk, donate_argnums=(0,))
    eval_fn = parallel.pmap_trials(jax.vmap(steps.evaluate, in_axes=(0, None, None, None)),
                                   devices, (0, None, None, None), chunk)
    platform = devices[0].platform
    self.train_fns = compilation.ProgramsByShape(platform)  # By the steps of a call.
    self._compile_train_call(self.epoch_indices(1))
    # One program per split's shapes (validation first, as it is evaluated first).
    self.eval_fns = {name: compilation.compile_program(
        eval_fn.lower(self.carry[0], *split_data, indices), platform, first.eval_batch_size)
                     for name, (split_data, indices) in sorted(self.splits.items(), reverse=True)}
    self.best = None  # Stacked, in the carry's layout: each restore_best_weights trial's best.

  def split(self, tree):
    """Per-trial values (leading axis) in the layout of the carry."""
    return parallel.split_trials(tree, self.num_devices, self.chunk)

  def epoch_indices(self, epoch: int) -> np.ndarray:
    return self.split(trial_batch_indices(self.configs, epoch, self.num_train))

  saves_inside_epochs = True
  own_process = True

  def train_epoch(self, epoch: int, frozen: np.ndarray, saves: driver.EpochSaves | None = None):
    # A stopped trial is frozen as a diverged one is; the driver tells them apart.
    self.carry = (self.carry[0], self.split(np.asarray(frozen)))
    indices = self.epoch_indices(epoch)
    if saves is None or not (saves.cadence.enabled or saves.first_step):  # One call per epoch.
      self.carry, step_metrics = self._train_call(indices)
      return parallel.merge_trials(jax.device_get((step_metrics, self.carry[1])),
                                   self.num_trials)
    return self._train_calls(indices[:, :, saves.first_step:], saves)

  def _train_call(self, indices: np.ndarray):
    """Trains the carry over `indices` [devices, trials per device, steps, batch] in one call,
    compiled ahead of time at the first call of its length."""
    return self._compile_train_call(indices)(self.carry, *self.train_data, indices)

  def _compile_train_call(self, indices: np.ndarray):
    """The compiled training call for `indices`' number of steps, compiled at its first use."""
    return self.train_fns.get(
        indices.shape[2], lambda: self.train_fn_any_length.lower(self.carry, *self.train_data,
                                                                 indices),
        self.configs[0].batch_size)

  def _train_calls(self, indices: np.ndarray, saves: driver.EpochSaves):
    """The rest of an epoch (`indices`, from `saves.first_step`) in calls that end at its save
    points (`driver.call_edges`: as a single run splits its epoch, so the numbers are the same),
    offering `saves` the trials' states between calls; returns the per-step metrics of the whole
    epoch (or up to where `saves` stopped it) and which trials stopped being finite."""
    steps_per_call = driver.steps_per_call(self.configs[0], None)
    edges = driver.call_edges(indices.shape[2], steps_per_call, (), saves.save_points)
    calls = []  # Each call's metrics on the devices, fetched when needed.

    def fetched():
      return parallel.merge_trials(jax.device_get((
          epochs.join_calls(*jax.device_get(calls), axis=2), self.carry[1])), self.num_trials)

    for begin, end in zip(edges, edges[1:]):
      if begin and saves.due(begin):
        step_metrics, diverged = fetched()
        if saves.save(self.state, begin, step_metrics, ~diverged):
          return saves.whole(step_metrics), diverged
      self.carry, step_metrics = self._train_call(indices[:, :, begin:end])
      calls.append(step_metrics)
    step_metrics, diverged = fetched()
    return saves.whole(step_metrics), diverged

  def evaluate(self, split: str):
    split_data, indices = self.splits[split]
    return parallel.merge_trials(
        jax.device_get(self.eval_fns[split](self.carry[0], *split_data, indices)),
        self.num_trials)

  def _position(self, trial: int) -> tuple[int, int]:
    per_device = jax.tree.leaves(self.carry[1])[0].shape[1]
    return divmod(trial, per_device)

  def state(self, trial: int) -> steps.TrainState:
    device, index = self._position(trial)
    return jax.tree.map(lambda x: x[device, index], self.carry[0])

  def keep_best(self, improved: np.ndarray) -> None:
    self.best = _select_trials(self.split(improved), self.carry[0],
                               self.carry[0] if self.best is None else self.best)

  def diverged_step(self, trial: int) -> int:
    return int(jax.device_get(self.state(trial).step)) + 1  # Its state is its last finite one.


class TrialRecords(Protocol):
  """Where a sweep keeps its trials' records (`runner.py`): each trial's checkpointer and
  recorder, opened as the trial starts."""

  def checkpointer(self, index: int) -> checkpointing.Checkpointer | None:
    """Trial `index`'s checkpoints (the latest is restored to resume it); None: none kept."""

  def recorder(self, index: int, dataset_info: dict, history: list[dict],
               resumed_step: int | None) -> recorder_lib.Recorder:
    """Trial `index`'s recorder, starting from its restored `history`."""


def train_trials(configs: Sequence[ml_collections.ConfigDict], dataset: data.Dataset,
                 devices=None, on_epoch: Callable[..., Any] | None = None,
                 chunk_size: int = 0, records: TrialRecords | None = None,
                 stop: preemption.StopRequest | None = None,
                 log: Callable[[str], Any] = print) -> dict[str, Any]:
  """Trains trials that share one program together, spread over `devices`, with the epoch driver
  of single runs (`driver.run_epochs`).

  After each epoch calls `on_epoch(epoch, records, diverged, stopped)`: `records` maps the index
  of each trial still training to its epoch record (the keys `train_and_evaluate` writes, with its
  hooks' metrics), on the epochs it logs; `diverged` and `stopped` (by early stopping, after this
  or an earlier epoch) flag every trial; the trial indices it returns end those trials. With
  `records`, each trial resumes from its latest checkpoint and writes its records and
  checkpoints (also inside epochs with `checkpoint.every_steps` or `every_minutes`); trials
  resumed at different positions (epoch, and step inside it) train as separate groups, one after
  another, each as many side by side as the whole group (the same program, so the same numbers
  bit for bit as an uninterrupted sweep). `stop` (a signal) ends training after the
  call under way (the epoch, without a cadence inside epochs), each unfinished trial
  checkpointed.
  `chunk_size` (0: `default_chunk_size`) sets how many of a device's trials train side by side;
  a group larger than the devices' memory holds (`trials_that_fit`) trains in parts.
  With `config.data.validation_split`, every trial validates on the same held-out examples
  (`data.hold_out_validation`). Returns per trial its `history` (the records), `diverged`,
  `diverged_step` (the first step not applied, or None), `stopped_epoch` (None: not stopped
  early), `pruned_epoch` (the epoch after which `on_epoch` ended it, or None), `status` (as its
  status file has it) and `early_stopping` (its summary, None when off);
  the stacked final `state` (a trial with `restore_best_weights` holds its best epoch's); the
  examples trained on (`num_train`, after any validation split); `timings` (of the last group).
  """
  start = time.time()
  devices = parallel.local_devices(devices)
  first = configs[0]
  if any(program_key(c) != program_key(first) for c in configs):
    raise ValueError('train_trials needs configs of one program; group them by program_key.')
  dataset = data.hold_out_validation(dataset, first.data.validation_split)
  num_train = len(dataset.train[1])
  steps_per_epoch = epochs.num_batches(num_train, first.batch_size)
  capacity = trials_that_fit(first, trial_state_bytes(
      first, steps_per_epoch, dataset.image_shape, dataset.num_classes), devices)
  states = init_trial_states(configs, steps_per_epoch, dataset.image_shape, dataset.num_classes)
  trials, best, first_epochs, inside = [], [], [], []
  for i, config in enumerate(configs):
    history, resumed_step, first_epoch, checkpointer, state = [], None, 1, None, None
    resumed = None  # The epoch in progress of a checkpoint saved inside an epoch.
    if records:
      state = jax.device_put(jax.tree.map(lambda x, i=i: x[i], states))
      checkpointer = records.checkpointer(i)
      restored = checkpointer.restore_latest(state, warn=log) if checkpointer else None
      if restored:
        state, resumed_step, run = restored
        history, first_epoch = run['history'], run['epoch'] + 1
        resumed = checkpointing.EpochInProgress.from_run(run)
      recorder = records.recorder(i, dataset.info(), history, resumed_step)
    else:
      recorder = recorder_lib.Recorder(None, config, devices, [], None)
    trial = driver.Trial(config, recorder, checkpointer, list(history),
                         hooks_lib.resolve_all(config.hooks))
    best.append(driver.best_weights_on_resume(trial, state,
                                              first_epoch - 1 if resumed is None else None))
    trials.append(trial)
    first_epochs.append(first_epoch)
    inside.append(resumed)
    if resumed_step is not None:
      for whole, leaf in zip(jax.tree.leaves(states), jax.tree.leaves(jax.device_get(state))):
        whole[i] = leaf
  final_states, timings = states, {}
  # One program group per position resumed from (epoch, step inside it), and per as many trials
  # as fit the devices.
  positions = [(e, r.steps_done if r else 0) for e, r in zip(first_epochs, inside)]
  parts = [[i for i, p in enumerate(positions) if p == position]
           for position in sorted(set(positions))]
  size = capacity or len(configs)
  # Every part trains as many trials side by side as the whole group's program does: a program
  # of another width rounds differently, and a resumed trial must give what it gave in the whole.
  group_chunk = chunk_size or default_chunk_size(
      epochs.num_batches(min(size, len(configs)), len(devices)),
      tree_bytes(states) // len(configs), devices[0].platform)
  for members in [p[j:j + size] for p in parts for j in range(0, len(p), size)]:
    first_epoch = first_epochs[members[0]]
    whole = len(members) == len(configs)
    rows = np.asarray(members)
    group_best = ([best[i] if best[i] is not None else jax.tree.map(lambda x, i=i: x[i], states)
                   for i in members] if any(best[i] is not None for i in members) else None)

    def group_epoch(epoch, group_records, members=members):
      """`on_epoch` in the sweep's trial indices."""
      ending = on_epoch(epoch, {members[i]: r for i, r in group_records.items()},
                        [t.diverged for t in trials], [t.stopping.stopped for t in trials])
      return {members.index(i): reason for i, reason in driver.ending_reasons(ending).items()
              if i in members}

    group_state, timings = _train_group(
        [trials[i] for i in members],
        states if whole else jax.tree.map(lambda x, rows=rows: x[rows], states), group_best,
        dataset, devices, chunk_size, first_epoch, start, group_epoch if on_epoch else None, stop,
        [inside[i] for i in members], group_chunk)
    if whole:
      final_states = group_state
    else:
      for leaves, leaf in zip(jax.tree.leaves(final_states),
                              jax.tree.leaves(jax.device_get(group_state))):
        leaves[rows] = leaf  # Host arrays: `states` is done with these rows.
    if stop is not None and stop.requested:
      break
  return {
      'history': [t.history for t in trials],
      'diverged': [t.diverged for t in trials],
      'diverged_step': [t.diverged_step for t in trials],
      'stopped_epoch': [t.stopping.stopped_epoch for t in trials],
      'pruned_epoch': [t.left_epoch for t in trials],
      'status': [driver.status(t, steps_per_epoch)[0] for t in trials],
      'early_stopping': [t.stopper.summary(t.stopping) if t.stopper.enabled else None
                         for t in trials],
      'state': final_states,
      'num_train': num_train,
      'timings': timings,
  }


def init_trial_states(configs: Sequence[ml_collections.ConfigDict], steps_per_epoch: int,
                      image_shape, num_classes: int, batch: int = 64) -> steps.TrainState:
  """The initial train states of trials of one program, stacked on a leading trial axis (host
  arrays), each `steps.create_train_state` of its config and seed, built `batch` trials at a time:
  never more than that many single states at once beside the stacked ones.

  Not under `jax.vmap`: tried, it was slower for small groups (32 trials 2.7-3.8 s against
  1.3-2.5 s, eager), held the parts and their concatenation at once, and relied on every
  optimizer's initial state not depending on its hyperparameters.
  """
  stacked = None
  for begin in range(0, len(configs), batch):
    part = jax.device_get(stack_trials([
        steps.create_train_state(c, jax.random.PRNGKey(c.seed), steps_per_epoch, image_shape,
                                 num_classes) for c in configs[begin:begin + batch]]))
    if stacked is None:
      stacked = jax.tree.map(lambda x: np.empty((len(configs),) + x.shape[1:], x.dtype), part)
    for whole, piece in zip(jax.tree.leaves(stacked), jax.tree.leaves(part)):
      whole[begin:begin + len(piece)] = piece
  return stacked


def trial_state_bytes(config: ml_collections.ConfigDict, steps_per_epoch: int, image_shape,
                      num_classes: int) -> int:
  """The bytes of one trial's train state, from its shapes (nothing is built)."""
  shapes = jax.eval_shape(lambda: steps.create_train_state(
      config, jax.random.PRNGKey(0), steps_per_epoch, image_shape, num_classes))
  return sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(shapes))


# The share of a device's free memory a program group's train states may take: the rest is for the
# dataset, the step's activations and gradients, and XLA's buffers.
STATE_MEMORY_FRACTION = 0.4


def trials_that_fit(config: ml_collections.ConfigDict, state_bytes: int, devices) -> int | None:
  """How many trials of `state_bytes` each fit a program group on `devices` (their state, and
  best weights when `restore_best_weights` keeps a second copy); None when the devices do not
  say their memory (CPUs). A TrialsDoNotFit error when not even one fits."""
  stats = devices[0].memory_stats() if hasattr(devices[0], 'memory_stats') else None
  if not stats or 'bytes_limit' not in stats:
    return None
  free = (stats['bytes_limit'] - stats.get('bytes_in_use', 0)) * STATE_MEMORY_FRACTION
  per_trial = state_bytes * (2 if early_stopping.EarlyStopping(config).restore_best_weights
                             else 1)
  per_device = int(free // per_trial)
  if per_device < 1:
    raise TrialsDoNotFit(
        f'one trial\'s train state takes {per_trial / 2**20:.1f} MiB, more than '
        f'{STATE_MEMORY_FRACTION:.0%} of the {free / STATE_MEMORY_FRACTION / 2**20:.0f} MiB free '
        f'on {devices[0].device_kind}; make the model smaller or use a device with more memory.')
  return per_device * len(devices)


class TrialsDoNotFit(sweep_files.SweepError):
  """Not even one trial's train state fits the device's memory."""


def _train_group(trials: list[driver.Trial], state: steps.TrainState, best: list | None,
                 dataset: data.Dataset, devices, chunk_size: int, first_epoch: int, start: float,
                 on_epoch, stop, resumed: list[checkpointing.EpochInProgress | None],
                 first_chunk: int) -> tuple[steps.TrainState, dict]:
  """Trains `trials` (stacked `state`, resumed at `first_epoch`, inside it from `resumed`'s
  step, one per trial) as one program group, `first_chunk` trials side by side until it is
  rebuilt; returns their final states (the best for `restore_best_weights` trials) and the
  timings.

  Once half of the program's trials have ended (early stopping, divergence, ended by `on_epoch`),
  the program is rebuilt for those still training and recompiled: ended trials cost nothing more.
  """
  first = trials[0].config
  num_train = len(dataset.train[1])
  steps_per_epoch = epochs.num_batches(num_train, first.batch_size)
  book = epochs.EpochLog(first, steps_per_epoch, num_train, start)
  final = jax.tree.map(np.array, jax.device_get(state))  # Each trial's, as it ends.
  members = list(range(len(trials)))  # The group's trials in the program, in its order.
  epoch = first_epoch
  while epoch <= first.num_epochs and not all(trials[m].finished for m in members):
    group = [trials[m] for m in members]
    chunk = chunk_size or (first_chunk if epoch == first_epoch else default_chunk_size(
        epochs.num_batches(len(members), len(devices)), tree_bytes(state) // len(members),
        devices[0].platform))
    with book.timed('compile_sec'):
      program = GroupProgram([t.config for t in group], state, dataset, devices, chunk)
    if best is not None:
      program.best = program.split(stack_trials(best))

    def program_epoch(epoch, records, members=members):  # `on_epoch` in the group's indices.
      ending = on_epoch(epoch, {members[i]: r for i, r in records.items()})
      return {members.index(i): reason for i, reason in driver.ending_reasons(ending).items()
              if i in members}

    epoch = driver.run_epochs(
        program, group, book, epoch, first.num_epochs, program_epoch if on_epoch else None, stop,
        regroup=lambda live: 2 * live.sum() <= len(live),
        resumed=[resumed[m] for m in members]) + 1
    state = parallel.merge_trials(program.carry[0], len(members))
    if program.best is not None:
      kept = parallel.merge_trials(program.best, len(members))
      restored = np.asarray([t.stopper.restore_best_weights and t.stopper.best_record(t.history)
                             is not None for t in group])
      state_or_best = _select_trials(restored, kept, state)
    else:
      kept, state_or_best = None, state
    for leaves, leaf in zip(jax.tree.leaves(final), jax.tree.leaves(jax.device_get(
        state_or_best))):
      leaves[np.asarray(members, int)] = leaf
    live = [i for i, t in enumerate(group) if not t.finished]
    if not live or stop is not None and stop.requested:
      break
    members = [members[i] for i in live]
    state = jax.tree.map(lambda x, live=live: x[np.asarray(live, int)], state)
    best = ([jax.tree.map(lambda x, i=i: x[i], kept) for i in live]
            if kept is not None else None)
  timings = book.finish()
  timings.setdefault('compile_sec', 0.0)
  driver.finish(trials, steps_per_epoch, timings, {'num_train_examples': num_train}, plot=False)
  return final, timings


def _select_trials(mask, chosen, others):
  """Per trial (the leading axes of `mask`), the leaves of `chosen` where set, else `others`'."""
  mask = jnp.asarray(mask)
  return jax.tree.map(
      lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim)), a, b),
      chosen, others)
