import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlp_mnist import models
from mlp_mnist import steps
from mlp_mnist.models import mlp


def _num_params(params):
  return sum(x.size for x in jax.tree.leaves(params))


def test_seed_model_has_keras_parameter_count(config):
  state = steps.create_train_state(config, jax.random.PRNGKey(0), 10, (28, 28), 10)
  assert _num_params(state.params) == 101_770
  assert state.params['Dense_0']['kernel'].shape == (784, 128)
  assert state.params['Dense_1']['kernel'].shape == (128, 10)
  assert not state.params['Dense_0']['bias'].any()


@pytest.mark.parametrize('hidden_sizes,expected', [((), 7_850), ((256, 256), 269_322)])
def test_parameter_count_follows_hidden_sizes(config, hidden_sizes, expected):
  config.model.hidden_sizes = hidden_sizes
  state = steps.create_train_state(config, jax.random.PRNGKey(0), 10, (28, 28), 10)
  assert _num_params(state.params) == expected


def test_glorot_uniform_bound():
  model = models.MLP(num_classes=10, hidden_sizes=(128,))
  params = model.init(jax.random.PRNGKey(1), jnp.zeros((1, 28, 28)))['params']
  bound = np.sqrt(6 / (784 + 128))
  kernel = np.asarray(params['Dense_0']['kernel'])
  assert kernel.max() <= bound and kernel.min() >= -bound
  assert kernel.max() > 0.95 * bound


@pytest.mark.parametrize('activation', sorted(models.ACTIVATIONS))
def test_every_activation_runs(activation):
  model = models.MLP(num_classes=10, hidden_sizes=(8,), activation=activation)
  x = jnp.linspace(0, 1, 2 * 784).reshape(2, 28, 28)
  params = model.init(jax.random.PRNGKey(0), x)
  assert model.apply(params, x).shape == (2, 10)


def test_dropout_rate_is_a_traced_argument():
  model = models.MLP(num_classes=10, hidden_sizes=(64,), use_dropout=True)
  x = jnp.ones((4, 28, 28))
  params = model.init(jax.random.PRNGKey(0), x)
  rngs = jax.random.split(jax.random.PRNGKey(3), 4)
  apply = jax.jit(lambda rate, rngs: model.apply(params, x, rate, rngs))
  np.testing.assert_allclose(apply(0.0, rngs), model.apply(params, x), atol=1e-5)
  assert not np.allclose(apply(0.5, rngs), model.apply(params, x))
  np.testing.assert_array_equal(apply(0.5, rngs), apply(0.5, rngs))
  # Evaluation (no keys) ignores dropout.
  np.testing.assert_array_equal(model.apply(params, x, 0.5), model.apply(params, x))


def test_dropout_mask_of_an_example_does_not_depend_on_its_batch():
  model = models.MLP(num_classes=10, hidden_sizes=(64,), use_dropout=True)
  x = jax.random.uniform(jax.random.PRNGKey(1), (6, 28, 28))
  params = model.init(jax.random.PRNGKey(0), x)
  rngs = jax.random.split(jax.random.PRNGKey(3), 6)
  whole = model.apply(params, x, 0.3, rngs)
  halves = [model.apply(params, x[i:i + 3], 0.3, rngs[i:i + 3]) for i in (0, 3)]
  np.testing.assert_allclose(np.concatenate(halves), whole, rtol=1e-6, atol=1e-6)


def test_dropout_drops_the_expected_fraction():
  x = jnp.ones((200, 100))
  rngs = jax.random.split(jax.random.PRNGKey(0), 200)
  out = jax.vmap(mlp.dropout, (0, None, 0))(x, 0.25, rngs)
  assert abs(float((out == 0).mean()) - 0.25) < 0.01
  np.testing.assert_allclose(np.unique(out), [0.0, 1 / 0.75], rtol=1e-6)


def test_mlp_takes_grayscale_and_colour_images_of_any_size(config):
  for shape, num_classes in (((28, 28), 10), ((32, 32, 3), 5), ((6, 9, 2), 37)):
    state = steps.create_train_state(config, jax.random.PRNGKey(0), 10, shape, num_classes)
    assert state.params['Dense_0']['kernel'].shape == (int(np.prod(shape)), 128)
    logits = state.apply_fn({'params': state.params}, np.zeros((3,) + shape, np.float32))
    assert logits.shape == (3, num_classes)
