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

from mlp_mnist import models
from mlp_mnist import optimizers

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(train_state.TrainState):
  """Parameters, optimizer state and the per-run values a step needs (a pytree; vmappable)."""
  dropout_rng: jax.Array
  dropout_rate: jax.Array
  lr_multiplier: Callable[[jax.Array], jax.Array] = struct.field(pytree_node=False)


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array, steps_per_epoch: int,
                       input_shape: tuple[int, ...], num_classes: int) -> TrainState:
  """Initializes the model and optimizer described by `config`, for images of `input_shape`
  (one example's, `dataset.image_shape`: (28, 28), (32, 32, 3), ...) and `num_classes` classes."""
  model = models.create_model(config.model, num_classes)
  tx, lr_multiplier = optimizers.create_optimizer(config.optimizer, steps_per_epoch,
                                                  config.num_epochs)
  init_rng, dropout_rng = jax.random.split(rng)
  return TrainState.create(apply_fn=model.apply, params=_init_params(model, tuple(input_shape), init_rng),
                           tx=tx,
                           dropout_rng=dropout_rng,
                           dropout_rate=jnp.asarray(config.model.dropout_rate, jnp.float32),
                           lr_multiplier=lr_multiplier)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_params(model, input_shape: tuple[int, ...], rng: jax.Array):
  # Jitted once per architecture: eager initialization compiles dozens of small programs.
  return model.init(rng, jnp.zeros((1,) + input_shape))['params']


def _sum_over_devices(tree, axis_name: str | None):
  # An axis of one device needs no sum; on a CPU the all-reduce would still cost a copy a step.
  if axis_name is None or jax.lax.axis_size(axis_name) == 1:
    return tree
  return jax.lax.psum(tree, axis_name)


def _loss_and_correct_sums(logits, labels, weights):
  # One-hot labels: the integer-label form's gradient is a scatter, several times slower on CPUs.
  losses = optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1]))
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return jnp.sum(losses * weights), jnp.sum(correct * weights)


def train_step(state: TrainState, batch: Batch, rng: jax.Array, axis_name: str | None = None,
               norms: bool = True) -> tuple[TrainState, Metrics]:
  """One optimizer step on the global batch (this device's slice of it when `axis_name` is set).

  `batch` holds uint8 `image`, int `label`, bool `mask` (False for padding) and `index` (the
  example's dataset index: with `rng` it keys that example's dropout, so results do not depend on
  how the batch is split over devices). Returns summed metrics over the global batch, with the
  gradient and parameter norms when `norms` (they cost a third of a small step on CPU).
  """
  new_state, metrics, grads = _step_and_gradients(state, batch, rng, axis_name)
  if norms:
    metrics.update(grad_norm=optax.tree.norm(grads),
                   param_norm=optax.tree.norm(new_state.params))
  return new_state, metrics


def _step_and_gradients(state: TrainState, batch: Batch, rng: jax.Array,
                        axis_name: str | None) -> tuple[TrainState, Metrics, Any]:
  """`train_step` without norms, also returning the gradients summed over devices."""
  images = batch['image'].astype(jnp.float32) / 255.0
  weights = batch['mask'].astype(jnp.float32)
  count = _sum_over_devices(jnp.sum(weights), axis_name)
  example_rngs = jax.vmap(jax.random.fold_in, (None, 0))(rng, batch['index'])

  def loss_fn(params):
    logits = state.apply_fn({'params': params}, images, state.dropout_rate, example_rngs)
    loss_sum, correct = _loss_and_correct_sums(logits, batch['label'], weights)
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
  """Summed loss, correct predictions and example count; no gradients, no dropout."""
  images = batch['image'].astype(jnp.float32) / 255.0
  logits = state.apply_fn({'params': state.params}, images)
  loss_sum, correct = _loss_and_correct_sums(logits, batch['label'],
                                             batch['mask'].astype(jnp.float32))
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
