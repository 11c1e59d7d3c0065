"""A small convnet, the Keras tutorial's next step: [Conv -> activation -> max-pool] blocks, then a
dense head with dropout."""

from typing import Sequence

import flax.linen as nn
import jax

from mlp_mnist.models import layers
from mlp_mnist.models import mlp

# config.model.cnn keys -> (accepted types, check, what a valid value is), as config_checks has them.
CONFIG_SCHEMA = {
    'cnn.features': ((tuple, list), lambda v: len(v) > 0 and all(
        isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in v),
                     "a non-empty tuple of positive integers (channels per block), e.g. '(32,64)'"),
    'cnn.kernel_size': ((int,), lambda v: v > 0, 'a positive integer'),
    'cnn.dense_width': ((int,), lambda v: v >= 0, 'a non-negative integer (0: no hidden dense layer)'),
    'cnn.activation': ((str,), lambda v: v in mlp.ACTIVATIONS, f'one of {sorted(mlp.ACTIVATIONS)}'),
}


class CNN(nn.Module):
  """[Conv(features[i], kernel_size, 'SAME') -> activation -> 2x2 max-pool] per entry of `features`,
  flatten, [Dense(dense_width) -> activation -> dropout], Dense(num_classes) logits.

  Images are NHWC (a channel axis is added to [batch, height, width] inputs), the layout CPUs and
  accelerators convolve fastest; each block is a `layers.ConvPool` (fast on CPUs). Dropout
  works as in the MLP: a traced rate and one key per example, left out of the program with
  `use_dropout=False`.
  """

  num_classes: int = 10
  features: Sequence[int] = (32, 64)
  kernel_size: int = 3
  dense_width: int = 128
  activation: str = 'relu'
  use_dropout: bool = False

  @nn.compact
  def __call__(self, images: jax.Array, dropout_rate: jax.Array | float = 0.0,
               dropout_rngs: jax.Array | None = None) -> jax.Array:
    """Logits for `images` [batch, height, width(, channels)]; dropout only with `dropout_rngs`."""
    x = images[..., None] if images.ndim == 3 else images
    act = mlp.ACTIVATIONS[self.activation]
    for i, width in enumerate(self.features):
      # Named as the `Conv` layers each block held before, so older checkpoints restore.
      x = layers.ConvPool(width, (self.kernel_size, self.kernel_size), act,
                          kernel_init=nn.initializers.glorot_uniform(), name=f'Conv_{i}')(x)
    x = x.reshape(x.shape[0], -1)
    if self.dense_width:
      x = act(nn.Dense(self.dense_width, kernel_init=nn.initializers.glorot_uniform())(x))
    if self.use_dropout and dropout_rngs is not None:
      x = jax.vmap(mlp.dropout, (0, None, 0))(x, dropout_rate, dropout_rngs)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.glorot_uniform())(x)


def from_config(model_config, num_classes: int) -> CNN:
  """Builds the CNN described by `config.model.cnn` (dropout: `config.model.dropout_rate`)."""
  c = model_config.cnn
  return CNN(num_classes=num_classes, features=tuple(c.features), kernel_size=c.kernel_size,
             dense_width=c.dense_width, activation=c.activation,
             use_dropout=model_config.dropout_rate > 0)
