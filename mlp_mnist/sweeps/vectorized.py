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
  value_keys = {'seed', 'model.dropout_rate'}
  value_keys |= {f'optimizer.{k}' for k in injected_config_keys(config.optimizer)}
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
  or an earlier epoch) flag every trial. `chunk_size` (0: `default_chunk_size`) sets how many of a
  device's trials train side by side. With `config.data.validation_split`, every trial validates
  on the same held-out examples (`data.hold_out_validation`). Returns per trial its `history`
  (the records), `diverged`, `diverged_step` (the first step not applied, or None),
  `stopped_epoch` (None: not stopped early) and `early_stopping` (its summary, None when off); the
  stacked final `state` (a trial with `restore_best_weights` holds its best epoch's); the examples
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
  chunk = chunk_size or default_chunk_size(-(-num_trials // num_devices), tree_bytes(states[0]),
                                           devices[0].platform)
  carry = parallel.split_trials((stack_trials(states), np.zeros(num_trials, bool)),
                                num_devices, chunk)
  eval_indices = lambda split: parallel.eval_batch_indices(len(split[1]), first.eval_batch_size,
                                                           1)[0]
  validation = dataset.validation
  train_data, test_data, test_indices, validation_data, validation_indices = parallel.replicate(
      ((train_images, train_labels), (test_images, test_labels), eval_indices(dataset.test),
       validation, eval_indices(validation) if validation is not None else None), devices)
  train_fn = parallel.pmap_trials(chunk_epoch, devices, (0, None, None, 0), chunk,
                                  donate_argnums=(0,))
  eval_fn = parallel.pmap_trials(jax.vmap(steps.evaluate, in_axes=(0, None, None, None)),
                                 devices, (0, None, None, None), chunk)

  def epoch_indices(epoch):
    return parallel.split_trials(trial_batch_indices(configs, epoch, num_train), num_devices,
                                 chunk)

  def split(flags):  # Per-trial flags in the layout of the carry.
    return parallel.split_trials(np.asarray(flags), num_devices, chunk)

  book = epochs.EpochLog(first, steps_per_epoch, num_train, start)
  platform = devices[0].platform
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

  history = [[] for _ in configs]
  diverged = np.zeros(num_trials, bool)
  stopping = [early_stopping.State() for _ in configs]
  stopped = np.zeros(num_trials, bool)
  best_weights = None  # Stacked, in the carry's layout: each restore_best_weights trial's best.
  for epoch in range(1, first.num_epochs + 1):
    with book.timed('train_sec'):
      # A stopped trial is frozen as a diverged one is; only true divergence is reported so.
      carry = (carry[0], split(diverged | stopped))
      carry, step_metrics = train_fn(carry, *train_data, epoch_indices(epoch))
      step_metrics, halted = parallel.merge_trials(
          jax.device_get((step_metrics, carry[1])), num_trials)
    epoch_sec = book.last_sec
    diverged_now = halted & ~stopped
    records, improved = {}, np.zeros(num_trials, bool)
    if book.logs(epoch):
      validation_totals = None
      if validation_fn is not None:
        with book.timed('validation_sec'):
          validation_totals = parallel.merge_trials(jax.device_get(
              validation_fn(carry[0], *validation_data, validation_indices)), num_trials)
      with book.timed('eval_sec'):
        totals = parallel.merge_trials(
            jax.device_get(eval_fn(carry[0], *test_data, test_indices)), num_trials)
      merged_state = (parallel.merge_trials(carry[0], num_trials)
                      if any(trial_hooks) else None)
      for i in np.flatnonzero(~halted):
        pick = lambda tree: jax.tree.map(lambda x: x[i], tree)  # pylint: disable=cell-var-from-loop
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
    if on_epoch:
      on_epoch(epoch, records, diverged.tolist(), stopped.tolist())
    if (diverged | stopped).all():
      break

  state = parallel.merge_trials(carry[0], num_trials)
  final_steps = np.asarray(jax.device_get(state.step))
  if best_weights is not None:
    restored = np.asarray([s.restore_best_weights and s.best_record(h) is not None
                           for s, h in zip(stoppers, history)])
    state = _select_trials(restored, parallel.merge_trials(best_weights, num_trials), state)
  timings = book.finish()
  return {
      'history': history,
      'diverged': diverged.tolist(),
      'diverged_step': [int(s) + 1 if d else None for s, d in zip(final_steps, diverged)],
      'stopped_epoch': [s.stopped_epoch for s in stopping],
      'early_stopping': [st.summary(s) if st.enabled else None
                         for st, s in zip(stoppers, stopping)],
      'state': state,
      'num_train': num_train,
      'timings': timings,
  }


def _select_trials(mask, chosen, others):
  """Per trial (the leading axes of `mask`), the leaves of `chosen` where set, else `others`'."""
  mask = jnp.asarray(mask)
  return jax.tree.map(
      lambda a, b: jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim)), a, b),
      chosen, others)
