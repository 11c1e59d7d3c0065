"""The pure functions of training: the train state, one step, an epoch as `lax.scan`, evaluation.

Nothing here knows about devices, files or configs beyond building the state: a step takes the
state, a batch and a key, and returns the new state and summed metrics. With `axis_name` set (under
`pmap`) the sums cover every device's slice of the global batch; under `vmap` over a trial axis
the same functions train many trials at once, since every hyperparameter lives in the state.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct
from flax.training import train_state

from mlp_mnist import augmentations
from mlp_mnist import config_checks
from mlp_mnist import losses
from mlp_mnist import models
from mlp_mnist import optimizers
from mlp_mnist.devices import compilation

Batch = dict[str, jax.Array]
AUGMENT_KEY = 1  # Folded into an example's key for its augmentation.
Metrics = dict[str, jax.Array]


class TrainState(train_state.TrainState):
  """Parameters, optimizer state and the per-run values a step needs (a pytree; vmappable).

  `hparams` holds the selected loss's and augmentation's per-trial values ('loss.<key>',
  'augment.<key>'; empty for the default recipe). `loss_fn` (`losses.py`), `augment_fn`
  (`augmentations.py`, None: none) and `compute_dtype` are structure.
  """
  dropout_rng: jax.Array
  dropout_rate: jax.Array
  lr_multiplier: Callable[[jax.Array], jax.Array] = struct.field(pytree_node=False)
  hparams: dict[str, jax.Array] = struct.field(default_factory=dict)
  loss_fn: Callable[..., jax.Array] = struct.field(pytree_node=False, default=None)
  augment_fn: Callable[..., jax.Array] | None = struct.field(pytree_node=False, default=None)
  compute_dtype: Any = struct.field(pytree_node=False, default=jnp.float32)


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array, steps_per_epoch: int,
                       input_shape: tuple[int, ...], num_classes: int) -> TrainState:
  """Initializes the model and optimizer described by `config`, for images of `input_shape`
  (one example's, `dataset.image_shape`: (28, 28), (32, 32, 3), ...) and `num_classes` classes."""
  model = models.create_model(config.model, num_classes)
  tx, lr_multiplier = optimizers.create_optimizer(config.optimizer, steps_per_epoch,
                                                  config.num_epochs)
  params, dropout_rng = _init_params_and_dropout_rng(model, tuple(input_shape), rng)
  return TrainState.create(apply_fn=model.apply, params=params,
                           tx=tx,
                           dropout_rng=dropout_rng,
                           dropout_rate=jnp.asarray(config.model.dropout_rate, jnp.float32),
                           lr_multiplier=lr_multiplier,
                           hparams=per_trial_hparams(config),
                           loss_fn=losses.LOSSES[config.loss.name].build(config.loss),
                           augment_fn=augmentations.AUGMENTATIONS[config.augment.name].build(
                               config.augment),
                           compute_dtype=jnp.dtype(config.compute_dtype))


def per_trial_hparams(config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """`TrainState.hparams` of `config`: its loss's and augmentation's per-trial values, float32."""
  return {f'{section}.{key}': jnp.asarray(value, jnp.float32)
          for section in ('loss', 'augment')
          for key, value in config_checks.per_trial_values(config, section).items()}


@functools.partial(compilation.jit_for_one_call, static_argnums=(0, 1))
def _init_params_and_dropout_rng(model, input_shape: tuple[int, ...], rng: jax.Array):
  """The model's initial parameters and the dropout key, both from `rng`."""
  # Jitted once per architecture: eager initialization compiles dozens of small programs.
  init_rng, dropout_rng = jax.random.split(rng)
  return model.init(init_rng, jnp.zeros((1,) + input_shape))['params'], dropout_rng


def _sum_over_devices(tree, axis_name: str | None):
  # An axis of one device needs no sum; on a CPU the all-reduce would still cost a copy a step.
  if axis_name is None or jax.lax.axis_size(axis_name) == 1:
    return tree
  return jax.lax.psum(tree, axis_name)


def _loss_and_correct_sums(per_example_losses, logits, labels, weights):
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return jnp.sum(per_example_losses * weights), jnp.sum(correct * weights)


def _section(hparams: dict[str, jax.Array], section: str) -> dict[str, jax.Array]:
  return {k[len(section) + 1:]: v for k, v in hparams.items() if k.startswith(section + '.')}


def _logits(state: TrainState, params, images, *dropout):
  """The model's float32 logits, computed in `state.compute_dtype` (parameters stay float32)."""
  if state.compute_dtype != jnp.float32:
    params = jax.tree.map(lambda p: p.astype(state.compute_dtype), params)
    images = images.astype(state.compute_dtype)
  return state.apply_fn({'params': params}, images, *dropout).astype(jnp.float32)


def train_step(state: TrainState, batch: Batch, rng: jax.Array,
               axis_name: str | None = None) -> tuple[TrainState, Metrics]:
  """One optimizer step on the global batch (this device's slice of it when `axis_name` is set).

  `batch` holds uint8 `image`, int `label`, bool `mask` (False for padding) and `index` (the
  example's dataset index: with `rng` it keys that example's dropout and augmentation, so results
  do not depend on how the batch is split over devices). Returns summed metrics over the global
  batch, with the gradient and parameter norms.
  """
  new_state, metrics, grads = _step_and_gradients(state, batch, rng, axis_name)
  metrics.update(grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(new_state.params))
  return new_state, metrics


def _step_and_gradients(state: TrainState, batch: Batch, rng: jax.Array,
                        axis_name: str | None) -> tuple[TrainState, Metrics, Any]:
  """`train_step` without norms, also returning the gradients summed over devices."""
  images = batch['image'].astype(jnp.float32) / 255.0
  weights = batch['mask'].astype(jnp.float32)
  count = _sum_over_devices(jnp.sum(weights), axis_name)
  example_rngs = jax.vmap(jax.random.fold_in, (None, 0))(rng, batch['index'])
  if state.augment_fn is not None:
    # Keys of their own (dropout keeps using example_rngs): a function of seed, step, example.
    augment_rngs = jax.vmap(jax.random.fold_in, (0, None))(example_rngs, AUGMENT_KEY)
    images = jax.vmap(state.augment_fn, (0, 0, None))(images, augment_rngs,
                                                     _section(state.hparams, 'augment'))
  loss_hparams = _section(state.hparams, 'loss')

  def loss_fn(params):
    logits = _logits(state, params, images, state.dropout_rate, example_rngs)
    objective = state.loss_fn(logits, batch['label'], params, loss_hparams)
    loss_sum, correct = _loss_and_correct_sums(objective, logits, batch['label'], weights)
    # Normalized by the global count: the summed per-device gradients are exactly the gradient
    # of the global batch mean, also for a last batch whose padding leaves devices uneven.
    return loss_sum / jnp.maximum(count, 1.0), (loss_sum, correct)

  grads, (loss_sum, correct) = jax.grad(loss_fn, has_aux=True)(state.params)
  grads, loss_sum, correct = _sum_over_devices((grads, loss_sum, correct), axis_name)
  learning_rate = state.opt_state.hyperparams['learning_rate'] * state.lr_multiplier(state.step)
  new_state = state.apply_gradients(grads=grads)
  metrics = {'loss_sum': loss_sum, 'correct': correct, 'count': count,
             'learning_rate': learning_rate}
  return new_state, metrics, grads


def eval_step(state: TrainState, batch: Batch, axis_name: str | None = None) -> Metrics:
  """Summed cross-entropy (whatever the training loss), correct predictions and example count; no
  gradients, no dropout, no augmentation."""
  images = batch['image'].astype(jnp.float32) / 255.0
  logits = _logits(state, state.params, images)
  weights = batch['mask'].astype(jnp.float32)
  loss_sum, correct = _loss_and_correct_sums(losses.cross_entropy(logits, batch['label']), logits,
                                             batch['label'], weights)
  return _sum_over_devices(
      {'loss_sum': loss_sum, 'correct': correct, 'count': jnp.sum(batch['mask'], dtype=jnp.float32)},
      axis_name)


def gather_batch(images: jax.Array, labels: jax.Array, indices: jax.Array) -> Batch:
  """The batch at `indices` (-1 marks padding) from the on-device dataset arrays."""
  mask = indices >= 0
  safe = jnp.where(mask, indices, 0)
  # Rows of the flattened images: a 3-D gather runs about 3 times slower on CPUs.
  rows = images.reshape(images.shape[0], -1)[safe]
  return {'image': rows.reshape(safe.shape + images.shape[1:]), 'label': labels[safe],
          'mask': mask, 'index': safe}


def step_rng(state: TrainState) -> jax.Array:
  """The dropout key of the step `state` is about to take: a function of (seed, step) only."""
  return jax.random.fold_in(state.dropout_rng, state.step)


def train_epoch(state: TrainState, images: jax.Array, labels: jax.Array,
                batch_indices: jax.Array, axis_name: str | None = None):
  """Runs the train step (`_step_and_gradients`) over the rows of `batch_indices` [steps, batch]
  as one `lax.scan`.

  Dropout keys derive from the run's seed and the global step. Returns the state and the per-step
  metrics stacked along the first axis, with the gradient and parameter norms of the last step.
  Every step runs the same scanned program, so an epoch split over several calls gives the same
  numbers bit for bit.
  """

  def body(carry, indices):
    state, _ = carry
    state, metrics, grads = _step_and_gradients(
        state, gather_batch(images, labels, indices), step_rng(state), axis_name)
    return (state, grads), metrics

  no_grads = jax.tree.map(jnp.zeros_like, state.params)
  (state, last_grads), metrics = jax.lax.scan(body, (state, no_grads), batch_indices)
  return state, {**metrics, 'grad_norm': optax.tree.norm(last_grads),
                 'param_norm': optax.tree.norm(state.params)}


def evaluate(state: TrainState, images: jax.Array, labels: jax.Array, batch_indices: jax.Array,
             axis_name: str | None = None) -> Metrics:
  """Summed `eval_step` metrics over the rows of `batch_indices` [steps, batch]."""

  def body(totals, indices):
    metrics = eval_step(state, gather_batch(images, labels, indices), axis_name)
    return jax.tree.map(jnp.add, totals, metrics), None

  zeros = {'loss_sum': 0.0, 'correct': 0.0, 'count': 0.0}
  return jax.lax.scan(body, jax.tree.map(jnp.float32, zeros), batch_indices)[0]
