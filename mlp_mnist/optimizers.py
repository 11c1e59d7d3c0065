"""Optimizers and learning-rate schedules built from `config.optimizer`.

Every numeric hyperparameter (learning rate, betas, epsilon, momentum, weight decay) lives in the
optimizer state through `optax.inject_hyperparams`, never as a constant in the compiled program, so
one `train_step` serves a whole vectorized sweep over them. The schedule's *shape* (warmup length,
decay horizon) is a multiplier on the injected learning rate and is part of the program.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ('adam', 'adamw', 'sgd', 'rmsprop')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine', 'linear')


def injected_hyperparams(opt_config) -> dict[str, float]:
  """The numeric hyperparameters of `opt_config.name`, as stored in the optimizer state."""
  name = opt_config.name
  hparams = {'learning_rate': opt_config.learning_rate}
  if name in ('adam', 'adamw'):
    hparams.update(b1=opt_config.b1, b2=opt_config.b2, eps=opt_config.eps)
  if name == 'adamw':
    hparams['weight_decay'] = opt_config.weight_decay
  if name == 'sgd':
    hparams['momentum'] = opt_config.momentum
  if name == 'rmsprop':
    hparams.update(decay=opt_config.b2, eps=opt_config.eps, momentum=opt_config.momentum)
  return {k: float(v) for k, v in hparams.items()}


def create_optimizer(opt_config, steps_per_epoch: int, num_epochs: int):
  """Returns (optax transformation, learning-rate multiplier schedule)."""
  total_steps = steps_per_epoch * num_epochs
  multiplier = learning_rate_multiplier(opt_config, steps_per_epoch, total_steps)
  name, clip = opt_config.name, opt_config.grad_clip_norm

  def scheduled(learning_rate):
    return lambda count: learning_rate * multiplier(count)

  def clipped(core):
    return optax.chain(optax.clip_by_global_norm(clip), core) if clip > 0 else core

  def adam_moments(b1, b2, eps):
    if opt_config.keras_epsilon:
      return scale_by_keras_adam(b1, b2, eps)
    return optax.scale_by_adam(b1, b2, eps)

  # inject_hyperparams reads each factory's signature: the names must match injected_hyperparams.
  def adam(learning_rate, b1, b2, eps):
    return clipped(optax.chain(adam_moments(b1, b2, eps),
                               optax.scale_by_learning_rate(scheduled(learning_rate))))

  def adamw(learning_rate, b1, b2, eps, weight_decay):
    return clipped(optax.chain(adam_moments(b1, b2, eps), optax.add_decayed_weights(weight_decay),
                               optax.scale_by_learning_rate(scheduled(learning_rate))))

  def sgd(learning_rate, momentum):
    return clipped(optax.sgd(scheduled(learning_rate), momentum=momentum,
                             nesterov=opt_config.nesterov))

  def rmsprop(learning_rate, decay, eps, momentum):
    return clipped(optax.rmsprop(scheduled(learning_rate), decay=decay, eps=eps,
                                 momentum=momentum))

  factories = {'adam': adam, 'adamw': adamw, 'sgd': sgd, 'rmsprop': rmsprop}
  if name not in factories:
    raise ValueError(f'unknown optimizer {name!r}; choose one of {OPTIMIZERS}')
  factory = factories[name]
  tx = optax.inject_hyperparams(factory)(**injected_hyperparams(opt_config))
  return tx, multiplier


def learning_rate_multiplier(opt_config, steps_per_epoch: int,
                             total_steps: int) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """The schedule as a factor of the peak learning rate, a function of the step count."""
  schedule = opt_config.schedule
  end = opt_config.end_learning_rate_factor
  warmup = round(opt_config.warmup_epochs * steps_per_epoch)
  if schedule == 'constant':
    return lambda count: jnp.ones([], jnp.float32)
  if schedule == 'linear':
    return optax.linear_schedule(1.0, end, total_steps)
  if schedule == 'cosine':
    return optax.cosine_decay_schedule(1.0, total_steps, alpha=end)
  if schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, max(total_steps, warmup + 1),
                                              end_value=end)
  raise ValueError(f'unknown schedule {schedule!r}; choose one of {SCHEDULES}')


def scale_by_keras_adam(b1, b2, eps) -> optax.GradientTransformation:
  """Adam's scaling as Keras and TensorFlow compute it: epsilon is added to sqrt(v) *before* the
  bias correction (Kingma & Ba's epsilon-hat), which equals optax's Adam with an epsilon of
  eps / sqrt(1 - b2**t). Same state as `optax.scale_by_adam`."""

  def init_fn(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros())

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
    count = state.count + 1
    t = count.astype(jnp.float32)
    step_size = jnp.sqrt(1 - b2**t) / (1 - b1**t)
    updates = jax.tree.map(lambda m, v: step_size * m / (jnp.sqrt(v) + eps), mu, nu)
    return updates, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)
