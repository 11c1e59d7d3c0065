"""The MLP, as a flax.linen module."""

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'relu': nn.relu,
    'sigmoid': nn.sigmoid,
    'tanh': nn.tanh,
    'gelu': nn.gelu,
    'elu': nn.elu,
    'silu': nn.silu,
    'leaky_relu': nn.leaky_relu,
}
NUM_CLASSES = 10


class MLP(nn.Module):
  """Flatten -> [Dense -> activation -> dropout] * len(hidden_sizes) -> Dense(10) logits.

  Dense layers use Keras' initializers (Glorot-uniform kernels, zero biases). The dropout rate is a
  call argument, not an attribute, so trials that differ only in it share one compiled program;
  `use_dropout=False` leaves the dropout ops out of the program altogether.
  """

  hidden_sizes: Sequence[int] = (128,)
  activation: str = 'relu'
  use_dropout: bool = False

  @nn.compact
  def __call__(self, images: jax.Array, dropout_rate: jax.Array | float = 0.0,
               train: bool = False) -> jax.Array:
    x = images.reshape(images.shape[:-2] + (-1,))
    for width in self.hidden_sizes:
      x = nn.Dense(width, kernel_init=nn.initializers.glorot_uniform())(x)
      x = ACTIVATIONS[self.activation](x)
      if self.use_dropout and train:
        x = dropout(x, dropout_rate, self.make_rng('dropout'))
    return nn.Dense(NUM_CLASSES, kernel_init=nn.initializers.glorot_uniform())(x)


def dropout(x: jax.Array, rate: jax.Array | float, rng: jax.Array) -> jax.Array:
  """Inverted dropout whose rate may be a traced value (flax's nn.Dropout needs a Python float)."""
  keep_prob = 1.0 - rate
  keep = jax.random.bernoulli(rng, keep_prob, x.shape)
  return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))


def create_model(model_config) -> MLP:
  """Builds the MLP described by `config.model`."""
  return MLP(hidden_sizes=tuple(model_config.hidden_sizes), activation=model_config.activation,
             use_dropout=model_config.dropout_rate > 0)
