"""Many trials of one program trained at once: `vmap` over a trial axis, spread over the devices.

Trials share a compiled program when their configs differ only in values that reach the steps as
arrays: the seed (initial parameters, dropout keys, data order), the dropout rate (as long as it
stays above zero, or stays zero) and the optimizer hyperparameters that live in the optimizer state
(`optimizers.injected_hyperparams`). `program_key` is the config without those values (and without early
stopping's settings, which act between epochs on the host); trials with equal keys train together
in `train_trials`, and each trial gives the metrics it gives alone. A trial that diverges or that
early stopping ends stops updating while the others go on.
"""

import json
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mlp_mnist import config_checks
from mlp_mnist import data
from mlp_mnist import early_stopping
from mlp_mnist import epochs
from mlp_mnist import hooks as hooks_lib
from mlp_mnist import optimizers
from mlp_mnist import steps
from mlp_mnist.devices import compilation
from mlp_mnist.devices import parallel


def stack_trials(states: list[steps.TrainState]) -> steps.TrainState:
  """Stacks the states of trials that share one program along a new leading trial axis.

  The trials must differ only in values (parameters, seeds, injected hyperparameters, dropout
  rate), not in shapes or structure; the first state's model, optimizer and schedule serve all.
  """
  leaves = zip(*(jax.tree.leaves(s) for s in states))
  return jax.tree.unflatten(jax.tree.structure(states[0]), [jnp.stack(x) for x in leaves])


def injected_config_keys(opt_config: ml_collections.ConfigDict) -> set[str]:
  """The `config.optimizer` keys whose values live in the optimizer state, not in the program."""
  read = set()

  class Recorder:  # Records what injected_hyperparams reads, so new optimizers need no change here.

    def __getattr__(self, key):
      read.add(key)
      return opt_config[key]

  optimizers.injected_hyperparams(Recorder())
  return read - {'name'}


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
  return sum(jnp.asarray(x).nbytes for x in jax.tree.leaves(tree))


def train_trials(configs: Sequence[ml_collections.ConfigDict], dataset: data.Dataset,
                 devices=None, on_epoch: Callable[..., Any] | None = None,
                 chunk_size: int = 0) -> dict[str, Any]:
  """Trains trials that share one program together, spread over `devices`.

  After each epoch calls `on_epoch(epoch, records, diverged, stopped)`: `records` maps the index
  of each trial still training to its epoch record (the keys `train_and_evaluate` writes, with its
  hooks' metrics), on the epochs it logs; `diverged` and `stopped` (by early stopping, after this
  or an earlier epoch) flag every trial. `on_epoch` may return the indices of trials to prune
  (successive halving): they stop training, and the others go on in a program compiled for them
  alone, so pruned trials cost no more steps. `chunk_size` (0: `default_chunk_size`) sets how
  many of a device's trials train side by side. With `config.data.validation_split`, every trial validates
  on the same held-out examples (`data.hold_out_validation`). Returns per trial its `history`
  (the records), `diverged`, `diverged_step` (the first step not applied, or None),
  `stopped_epoch` (None: not stopped early), `pruned_epoch` (None: not pruned) and
  `early_stopping` (its summary, None when off); the stacked final `state` (a pruned trial holds
  its state when pruned, a trial with `restore_best_weights` its best epoch's); the examples
  trained on (`num_train`, after any validation split); `timings`.
  """
  start = time.time()
  devices = parallel.local_devices(devices)
  first = configs[0]
  if any(program_key(c) != program_key(first) for c in configs):
    raise ValueError('train_trials needs configs of one program; group them by program_key.')
  num_trials, num_devices = len(configs), len(devices)
  dataset = data.hold_out_validation(dataset, first.data.validation_split)
  (train_images, train_labels), (test_images, test_labels) = dataset.train, dataset.test
  num_train = len(train_labels)
  steps_per_epoch = -(-num_train // first.batch_size)
  stoppers = [early_stopping.EarlyStopping(c) for c in configs]
  trial_hooks = [hooks_lib.resolve_all(c.hooks) for c in configs]

  states = [steps.create_train_state(c, jax.random.PRNGKey(c.seed), steps_per_epoch,
                                     dataset.image_shape, dataset.num_classes)
            for c in configs]
  state_bytes = tree_bytes(states[0])
  chunk_for = lambda n: chunk_size or default_chunk_size(-(-n // num_devices), state_bytes,
                                                         devices[0].platform)
  chunk = chunk_for(num_trials)
  carry = parallel.split_trials((stack_trials(states), np.zeros(num_trials, bool)),
                                num_devices, chunk)
  active = np.arange(num_trials)  # The trials in the carry, in its order; pruning drops some.
  eval_indices = lambda split: parallel.eval_batch_indices(len(split[1]), first.eval_batch_size,
                                                           1)[0]
  validation = dataset.validation
  train_data, test_data, test_indices, validation_data, validation_indices = parallel.replicate(
      ((train_images, train_labels), (test_images, test_labels), eval_indices(dataset.test),
       validation, eval_indices(validation) if validation is not None else None), devices)

  def epoch_indices(epoch):
    return parallel.split_trials(
        trial_batch_indices([configs[i] for i in active], epoch, num_train), num_devices, chunk)

  def split(flags):  # Per-trial flags (of every trial) in the layout of the carry.
    return parallel.split_trials(np.asarray(flags)[active], num_devices, chunk)

  def merge(tree):  # The carry's layout -> [active trials, ...].
    return parallel.merge_trials(tree, len(active))

  book = epochs.EpochLog(first, steps_per_epoch, num_train, start)
  platform = devices[0].platform

  def compile_programs():  # For the carry and chunk as they are now (pruning changes them).
    train_fn = parallel.pmap_trials(chunk_epoch, devices, (0, None, None, 0), chunk,
                                    donate_argnums=(0,))
    eval_fn = parallel.pmap_trials(jax.vmap(steps.evaluate, in_axes=(0, None, None, None)),
                                   devices, (0, None, None, None), chunk)
    with book.timed('compile_sec'):
      train_fn = compilation.compile_program(train_fn.lower(carry, *train_data, epoch_indices(1)),
                                             platform, first.batch_size)
      validation_fn = None
      if validation is not None:  # The same program, compiled for the validation set's shapes.
        validation_fn = compilation.compile_program(
            eval_fn.lower(carry[0], *validation_data, validation_indices), platform,
            first.eval_batch_size)
      eval_fn = compilation.compile_program(eval_fn.lower(carry[0], *test_data, test_indices),
                                            platform, first.eval_batch_size)
    return train_fn, validation_fn, eval_fn

  train_fn, validation_fn, eval_fn = compile_programs()

  history = [[] for _ in configs]
  diverged = np.zeros(num_trials, bool)
  stopping = [early_stopping.State() for _ in configs]
  stopped = np.zeros(num_trials, bool)
  pruned_epoch = [None] * num_trials
  pruned_states = {}  # Trial index -> its state when pruned (on the host).
  best_weights = None  # Stacked, in the carry's layout: each restore_best_weights trial's best.
  for epoch in range(1, first.num_epochs + 1):
    with book.timed('train_sec'):
      # A stopped trial is frozen as a diverged one is; only true divergence is reported so.
      carry = (carry[0], split(diverged | stopped))
      carry, step_metrics = train_fn(carry, *train_data, epoch_indices(epoch))
      step_metrics, active_halted = merge(jax.device_get((step_metrics, carry[1])))
    epoch_sec = book.last_sec
    halted = diverged | stopped | np.asarray([e is not None for e in pruned_epoch])
    halted[active] = active_halted
    diverged_now = diverged.copy()
    diverged_now[active] = active_halted & ~stopped[active]
    position = {int(i): j for j, i in enumerate(active)}  # Trial index -> its row in the carry.
    records, improved = {}, np.zeros(num_trials, bool)
    if book.logs(epoch):
      validation_totals = None
      if validation_fn is not None:
        with book.timed('validation_sec'):
          validation_totals = merge(jax.device_get(
              validation_fn(carry[0], *validation_data, validation_indices)))
      with book.timed('eval_sec'):
        totals = merge(jax.device_get(eval_fn(carry[0], *test_data, test_indices)))
      merged_state = merge(carry[0]) if any(trial_hooks) else None
      for i in np.flatnonzero(~halted):
        row = position[i]
        pick = lambda tree: jax.tree.map(lambda x: x[row], tree)  # pylint: disable=cell-var-from-loop
        record = book.record(epoch, pick(step_metrics), pick(totals), epoch_sec,
                             pick(validation_totals) if validation_totals is not None else None)
        if trial_hooks[i]:
          record = hooks_lib.run_hooks(trial_hooks[i], record, pick(merged_state))
        history[i].append(record)
        records[int(i)] = record
        stopper = stoppers[i]
        stopping[i] = stopper.update(stopping[i], record)
        stopped[i] = stopping[i].stopped
        improved[i] = stopper.restore_best_weights and stopper.best_record(history[i]) is record
    if improved.any():
      best_weights = _select_trials(split(improved), carry[0],
                                    carry[0] if best_weights is None else best_weights)
    diverged = diverged_now
    prune = on_epoch(epoch, records, diverged.tolist(), stopped.tolist()) if on_epoch else None
    prune = sorted({int(i) for i in prune or ()} & set(active.tolist()))
    if prune:
      # The pruned trials leave the carry; the others go on in a program compiled for them.
      merged, merged_best = merge((carry[0], best_weights))
      for i in prune:
        pruned_epoch[i] = epoch
        pruned_states[i] = jax.device_get(jax.tree.map(lambda x, row=position[i]: x[row], merged))
      keep = np.asarray([int(i) not in pruned_states for i in active])
      survivors = lambda tree: jax.tree.map(lambda x: np.asarray(x)[keep], tree)
      active = active[keep]
      if not len(active):
        break
      chunk = chunk_for(len(active))
      carry = parallel.split_trials((survivors(merged), diverged[active]), num_devices, chunk)
      if best_weights is not None:
        best_weights = parallel.split_trials(survivors(merged_best), num_devices, chunk)
      train_fn, validation_fn, eval_fn = compile_programs()
    if (diverged | stopped)[active].all():
      break

  state = _all_trials(merge(carry[0]), active, pruned_states, num_trials)
  final_steps = np.asarray(jax.device_get(state.step))
  if best_weights is not None:
    restored = np.asarray([s.restore_best_weights and s.best_record(h) is not None and p is None
                           for s, h, p in zip(stoppers, history, pruned_epoch)])
    state = _select_trials(restored, _all_trials(merge(best_weights), active, pruned_states,
                                                 num_trials), state)
  timings = book.finish()
  return {
      'history': history,
      'diverged': diverged.tolist(),
      'diverged_step': [int(s) + 1 if d else None for s, d in zip(final_steps, diverged)],
      'stopped_epoch': [s.stopped_epoch for s in stopping],
      'pruned_epoch': pruned_epoch,
      'early_stopping': [st.summary(s) if st.enabled else None
                         for st, s in zip(stoppers, stopping)],
      'state': state,
      'num_train': num_train,
      'timings': timings,
  }


def _all_trials(active_state, active: np.ndarray, pruned_states: dict[int, Any], num_trials: int):
  """The stacked state of every trial: the active ones' rows, and each pruned one's own state."""
  if not pruned_states:
    return active_state
  rows = {int(i): j for j, i in enumerate(active)}
  leaves, structure = jax.tree.flatten(jax.device_get(active_state))
  pruned = {i: jax.tree.leaves(s) for i, s in pruned_states.items()}
  return jax.tree.unflatten(structure, [
      np.stack([pruned[i][k] if i in pruned else leaf[rows[i]] for i in range(num_trials)])
      for k, leaf in enumerate(leaves)])


def _select_trials(mask, chosen, others):
  """Per trial (the leading axes of `mask`), the leaves of `chosen` where set, else `others`'."""
  mask = jnp.asarray(mask)
  return jax.tree.map(
      lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim)), a, b),
      chosen, others)
