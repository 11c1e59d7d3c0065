"""Optimizers and learning-rate schedules built from `config.optimizer`.

Every numeric hyperparameter (learning rate, betas, epsilon, momentum, weight decay) lives in the
optimizer state through `optax.inject_hyperparams`, never as a constant in the compiled program, so
one `train_step` serves a whole vectorized sweep over them. The schedule's *shape* (warmup length,
decay horizon) is a multiplier on the injected learning rate and is part of the program.
Optimizers are registered by name in `OPTIMIZERS`; `name='optax'` builds any optax optimizer by its
name with keyword arguments (`optimizer.optax.name`, `optimizer.optax.kwargs`).
"""

import functools
import inspect
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from mlp_mnist import errors
from mlp_mnist import registry

OPTIMIZERS = registry.Registry('optimizer', 'optimizer')
SCHEDULES = ('constant', 'cosine', 'warmup_cosine', 'linear')


class OptimizerError(errors.UserError, ValueError):
  """An optax optimizer name that does not exist, or keyword arguments it does not take."""


# An optimizer's build(opt_config) returns (factory, hyperparams): `factory(learning_rate, **hp)`
# makes the optax transformation from a learning-rate schedule (count -> rate) and the numeric
# hyperparameters, and `hyperparams` maps each argument of the factory to its key under
# config.optimizer. `optax.inject_hyperparams` keeps them in the optimizer state as float32.


def _adam_moments(opt_config, b1, b2, eps):
  if opt_config.keras_epsilon:
    return scale_by_keras_adam(b1, b2, eps)
  return optax.scale_by_adam(b1, b2, eps)


_ADAM_KEYS = {'learning_rate': 'learning_rate', 'b1': 'b1', 'b2': 'b2', 'eps': 'eps'}


@OPTIMIZERS.register('adam')
def build_adam(opt_config):
  def adam(learning_rate, b1, b2, eps):
    return optax.chain(_adam_moments(opt_config, b1, b2, eps),
                       optax.scale_by_learning_rate(learning_rate))
  return adam, _ADAM_KEYS


@OPTIMIZERS.register('adamw')
def build_adamw(opt_config):
  def adamw(learning_rate, b1, b2, eps, weight_decay):
    return optax.chain(_adam_moments(opt_config, b1, b2, eps),
                       optax.add_decayed_weights(weight_decay),
                       optax.scale_by_learning_rate(learning_rate))
  return adamw, {**_ADAM_KEYS, 'weight_decay': 'weight_decay'}


@OPTIMIZERS.register('sgd')
def build_sgd(opt_config):
  def sgd(learning_rate, momentum):
    return optax.sgd(learning_rate, momentum=momentum, nesterov=opt_config.nesterov)
  return sgd, {'learning_rate': 'learning_rate', 'momentum': 'momentum'}


@OPTIMIZERS.register('rmsprop')
def build_rmsprop(opt_config):
  def rmsprop(learning_rate, decay, eps, momentum):
    return optax.rmsprop(learning_rate, decay=decay, eps=eps, momentum=momentum)
  return rmsprop, {'learning_rate': 'learning_rate', 'decay': 'b2', 'eps': 'eps',
                   'momentum': 'momentum'}


def _optax_function(name: str):
  function = getattr(optax, name, None) if name and not name.startswith('_') else None
  if not callable(function) or 'learning_rate' not in inspect.signature(function).parameters:
    raise OptimizerError(f"config.optimizer.optax.name={name!r} is not an optax optimizer taking "
                         "a learning_rate (e.g. 'lion', 'adafactor', 'lamb', 'adabelief').")
  return function


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_optax(opt_config) -> str | None:
  """What is wrong with `optimizer.optax`'s name or keyword arguments, or None."""
  try:
    function = _optax_function(opt_config.optax.name)
  except OptimizerError as e:
    return str(e)
  accepted = set(inspect.signature(function).parameters) - {'learning_rate'}
  unknown = sorted(set(opt_config.optax.kwargs) - accepted)
  if unknown:
    return (f'config.optimizer.optax.kwargs: optax.{opt_config.optax.name} takes no '
            f'{", ".join(map(repr, unknown))}; it takes {sorted(accepted)}.')
  return None


def _no_checks(value) -> bool:
  del value
  return True


@OPTIMIZERS.register(
    'optax', defaults={'optax.name': 'lion', 'optax.kwargs': {}},
    schema={'optax.name': ((str,), bool, 'the name of an optax optimizer, e.g. lion'),
            'optax.kwargs': ((dict,), _no_checks, 'keyword arguments of that optimizer')},
    check=check_optax)
def build_optax(opt_config):
  """Any optax optimizer by name (big_vision's `optax_name`), with keyword arguments: numeric
  ones are injected hyperparameters (per-trial), the others structure."""
  function = _optax_function(opt_config.optax.name)
  kwargs = dict(opt_config.optax.kwargs)
  numeric = sorted(k for k, v in kwargs.items() if _is_number(v))
  static = {k: v for k, v in kwargs.items() if k not in numeric}

  def factory(learning_rate, **hyperparams):
    return function(learning_rate=learning_rate, **hyperparams, **static)

  # inject_hyperparams binds arguments by the factory's signature: name each one.
  factory.__signature__ = inspect.Signature(
      [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY)
       for k in ['learning_rate'] + numeric])
  return factory, {'learning_rate': 'learning_rate',
                   **{k: f'optax.kwargs.{k}' for k in numeric}}


def _value(opt_config, dotted: str):
  for part in dotted.split('.'):
    opt_config = getattr(opt_config, part)
  return opt_config


def hyperparam_keys(opt_config) -> dict[str, str]:
  """The optimizer state's hyperparameters -> their keys under config.optimizer."""
  return OPTIMIZERS[opt_config.name].build(opt_config)[1]


def injected_hyperparams(opt_config) -> dict[str, float]:
  """The numeric hyperparameters of `opt_config.name`, as stored in the optimizer state."""
  return {k: float(_value(opt_config, key)) for k, key in hyperparam_keys(opt_config).items()}


def create_optimizer(opt_config, steps_per_epoch: int, num_epochs: int):
  """Returns (optax transformation, learning-rate multiplier schedule)."""
  total_steps = steps_per_epoch * num_epochs
  multiplier = learning_rate_multiplier(opt_config, steps_per_epoch, total_steps)
  clip = opt_config.grad_clip_norm
  factory, _ = OPTIMIZERS[opt_config.name].build(opt_config)

  @functools.wraps(factory)
  def scheduled_and_clipped(learning_rate, **hyperparams):
    core = factory(lambda count: learning_rate * multiplier(count), **hyperparams)
    return optax.chain(optax.clip_by_global_norm(clip), core) if clip > 0 else core

  # float32 hyperparameters whatever the parameters' dtype: in bf16, Adam's 0.999 rounds to 1.
  tx = optax.inject_hyperparams(scheduled_and_clipped, hyperparam_dtype=jnp.float32)(
      **injected_hyperparams(opt_config))
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
