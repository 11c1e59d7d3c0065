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

# config.model keys -> (accepted types, check, what a valid value is), as config_checks has them.
# The MLP's keys predate the registry and stay at the top of config.model.
CONFIG_SCHEMA = {
    'hidden_sizes': ((tuple, list), lambda v: all(
        isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in v),
                     "a tuple of positive integers, e.g. '(256,256)'"),
    'activation': ((str,), lambda v: v in ACTIVATIONS, f'one of {sorted(ACTIVATIONS)}'),
}


class MLP(nn.Module):
  """Flatten -> [Dense -> activation -> dropout] * len(hidden_sizes) -> Dense(num_classes) logits.

  Dense layers use Keras' initializers (Glorot-uniform kernels, zero biases). Dropout takes its
  rate and one PRNG key per example as call arguments: trials that differ only in the rate share
  one compiled program, and an example's mask does not depend on which device or batch slice it
  lands in. `use_dropout=False` leaves the dropout ops out of the program altogether.
  """

  num_classes: int
  hidden_sizes: Sequence[int] = (128,)
  activation: str = 'relu'
  use_dropout: bool = False

  @nn.compact
  def __call__(self, images: jax.Array, dropout_rate: jax.Array | float = 0.0,
               dropout_rngs: jax.Array | None = None) -> jax.Array:
    """Logits for `images` [batch, H, W] or [batch, H, W, C]; dropout only when `dropout_rngs`
    [batch] are given."""
    x = images.reshape(images.shape[0], -1)
    for layer, width in enumerate(self.hidden_sizes):
      x = nn.Dense(width, kernel_init=nn.initializers.glorot_uniform())(x)
      x = ACTIVATIONS[self.activation](x)
      if self.use_dropout and dropout_rngs is not None:
        layer_rngs = jax.vmap(jax.random.fold_in, (0, None))(dropout_rngs, layer)
        x = jax.vmap(dropout, (0, None, 0))(x, dropout_rate, layer_rngs)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.glorot_uniform())(x)


def dropout(x: jax.Array, rate: jax.Array | float, rng: jax.Array) -> jax.Array:
  """Inverted dropout whose rate may be a traced value (flax's nn.Dropout needs a Python float)."""
  keep_prob = 1.0 - rate
  keep = jax.random.bernoulli(rng, keep_prob, x.shape)
  return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))


def from_config(model_config, num_classes: int) -> MLP:
  """Builds the MLP described by `config.model`, with `num_classes` outputs."""
  return MLP(num_classes=num_classes, hidden_sizes=tuple(model_config.hidden_sizes),
             activation=model_config.activation, use_dropout=model_config.dropout_rate > 0)
