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
