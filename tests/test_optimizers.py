import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlp_mnist import optimizers


@pytest.mark.parametrize('name,expected', [
    ('adam', {'learning_rate', 'b1', 'b2', 'eps'}),
    ('adamw', {'learning_rate', 'b1', 'b2', 'eps', 'weight_decay'}),
    ('sgd', {'learning_rate', 'momentum'}),
    ('rmsprop', {'learning_rate', 'decay', 'eps', 'momentum'}),
])
def test_hyperparameters_live_in_the_optimizer_state(config, name, expected):
  config.optimizer.name = name
  tx, _ = optimizers.create_optimizer(config.optimizer, steps_per_epoch=10, num_epochs=2)
  params = {'w': jnp.ones(3)}
  state = tx.init(params)
  assert set(state.hyperparams) == expected
  np.testing.assert_allclose(state.hyperparams['learning_rate'], 1e-3)
  updates, _ = jax.jit(tx.update)({'w': jnp.ones(3)}, state, params)
  assert np.all(np.asarray(updates['w']) < 0)


def test_keras_adam_epsilon(config):
  tx, _ = optimizers.create_optimizer(config.optimizer, 10, 1)
  np.testing.assert_allclose(tx.init({'w': jnp.ones(1)}).hyperparams['eps'], 1e-7)


@pytest.mark.parametrize('schedule,checks', [
    ('constant', {0: 1.0, 50: 1.0, 99: 1.0}),
    ('linear', {0: 1.0, 50: 0.5, 100: 0.0}),
    ('cosine', {0: 1.0, 50: 0.5, 100: 0.0}),
    ('warmup_cosine', {0: 0.0, 10: 1.0, 5: 0.5, 55: 0.5, 100: 0.0}),
])
def test_schedule_multipliers(config, schedule, checks):
  config.optimizer.schedule = schedule
  config.optimizer.warmup_epochs = 1.0
  multiplier = optimizers.learning_rate_multiplier(config.optimizer, steps_per_epoch=10,
                                                   total_steps=100)
  for step, value in checks.items():
    np.testing.assert_allclose(multiplier(step), value, atol=1e-6, err_msg=str(step))


def test_scheduled_learning_rate_scales_the_update(config):
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.0
  config.optimizer.schedule = 'linear'
  tx, _ = optimizers.create_optimizer(config.optimizer, steps_per_epoch=5, num_epochs=2)
  params = {'w': jnp.zeros(1)}
  state = tx.init(params)
  seen = []
  for _ in range(3):
    updates, state = tx.update({'w': jnp.ones(1)}, state, params)
    seen.append(float(updates['w'][0]))
  np.testing.assert_allclose(seen, [-1e-3, -0.9e-3, -0.8e-3], rtol=1e-5)


def _keras_adam_reference(grads, lr=1e-3, b1=0.9, b2=0.999, eps=1e-7):
  """keras.optimizers.Adam.update_step, transcribed to numpy (float64)."""
  var, m, v, trajectory = np.zeros_like(grads[0]), 0.0, 0.0, []
  for t, g in enumerate(grads, start=1):
    alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
    m = m + (g - m) * (1 - b1)
    v = v + (g * g - v) * (1 - b2)
    var = var - m * alpha / (np.sqrt(v) + eps)
    trajectory.append(var.copy())
  return trajectory


@pytest.mark.parametrize('keras_epsilon', [True, False])
def test_adam_matches_keras_update_rule(config, keras_epsilon):
  config.optimizer.keras_epsilon = keras_epsilon
  tx, _ = optimizers.create_optimizer(config.optimizer, steps_per_epoch=10, num_epochs=1)
  grads = [np.array([1e-6, 3e-5, -2e-4, 0.5], np.float32) * (k + 1) for k in range(4)]
  params = {'w': jnp.zeros(4)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for g, want in zip(grads, _keras_adam_reference([g.astype(np.float64) for g in grads])):
    updates, state = update({'w': jnp.asarray(g)}, state, params)
    params = {'w': params['w'] + updates['w']}
    if keras_epsilon:
      np.testing.assert_allclose(params['w'], want, rtol=2e-5, atol=1e-10)
  if not keras_epsilon:  # optax's placement differs where |g| is near epsilon.
    assert abs(float(params['w'][0]) - want[0]) > 1e-5
