"""A small convnet, the Keras tutorial's next step: [Conv -> activation -> max-pool] blocks, then a
dense head with dropout."""

import functools
from typing import Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

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
  accelerators convolve fastest. Dropout works as in the MLP: a traced rate and one key per
  example, left out of the program with `use_dropout=False`.
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
    for width in self.features:
      x = nn.Conv(width, (self.kernel_size, self.kernel_size), padding='SAME',
                  kernel_init=nn.initializers.glorot_uniform(),
                  conv_general_dilated=conv_general_dilated)(x)
      x = max_pool_2x2(act(x))
    x = x.reshape(x.shape[0], -1)
    if self.dense_width:
      x = act(nn.Dense(self.dense_width, kernel_init=nn.initializers.glorot_uniform())(x))
    if self.use_dropout and dropout_rngs is not None:
      x = jax.vmap(mlp.dropout, (0, None, 0))(x, dropout_rate, dropout_rngs)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.glorot_uniform())(x)


_NHWC = ('NHWC', 'HWIO', 'NHWC')


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None):
  """`lax.conv_general_dilated` for `nn.Conv`, with stride-1 NHWC convolutions through `conv_nhwc`.

  XLA's CPU backend hands a convolution to its fast (Eigen) kernels only in the canonical NHWC x
  HWIO layout. Outside a loop it rewrites the gradient's convolutions into that layout; inside the
  `lax.scan` of an epoch it does not, and emits them as plain loops: a CNN training step ran 9-13x
  slower in the scan than alone (2-core Xeon, jax 0.10.2 and 0.12; configs/cnn.py 250 against 28 ms
  per step). `conv_nhwc` spells its gradient in the canonical layout itself.
  """
  pads = (lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
          if isinstance(padding, str) else padding)
  plain = (lhs.ndim == 4 and tuple(window_strides) == (1, 1) and feature_group_count == 1
           and all(d in (None, 1) for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
           and all(0 <= lo <= k - 1 and 0 <= hi <= k - 1 for (lo, hi), k in zip(pads, rhs.shape))
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
           == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
  if plain:
    return conv_nhwc(lhs, rhs, tuple(map(tuple, pads)), precision)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                  dimension_numbers, feature_group_count, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_nhwc(images, kernel, pads, precision=None):
  """Stride-1 convolution of NHWC `images` with an HWIO `kernel`, `pads` [(lo, hi)] per spatial
  dimension (each at most the kernel's size - 1); its gradient's convolutions are NHWC x HWIO."""
  return lax.conv_general_dilated(images, kernel, (1, 1), pads, dimension_numbers=_NHWC,
                                  precision=precision)


def _conv_nhwc_fwd(images, kernel, pads, precision):
  return conv_nhwc(images, kernel, pads, precision), (images, kernel)


def _conv_nhwc_bwd(pads, precision, residuals, grad_out):
  images, kernel = residuals
  # The barriers keep XLA from folding the transposes back into the convolutions' dimensions.
  flipped = lax.optimization_barrier(jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2))
  transposed_pads = [(k - 1 - lo, k - 1 - hi) for (lo, hi), k in zip(pads, kernel.shape)]
  grad_images = lax.conv_general_dilated(grad_out, flipped, (1, 1), transposed_pads,
                                         dimension_numbers=_NHWC, precision=precision)
  # grad_kernel[i, j, c, o] = sum over (b, h, w) of padded_images[b, h+i, w+j, c] *
  # grad_out[b, h, w, o]: a convolution with the channels as the batch and the batch as channels.
  channels_first = lax.optimization_barrier(images.transpose(3, 1, 2, 0))
  grads_as_kernel = lax.optimization_barrier(grad_out.transpose(1, 2, 0, 3))
  grad_kernel = lax.conv_general_dilated(channels_first, grads_as_kernel, (1, 1), pads,
                                         dimension_numbers=_NHWC, precision=precision)
  return grad_images, grad_kernel.transpose(1, 2, 0, 3)


conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pooling with stride 2 of NHWC `x` (an odd last row or column is dropped).

  As a reshape and a max, not `nn.max_pool`: the gradient of XLA's reduce-window is a
  select-and-scatter that made a CPU training step of this model three times slower.
  """
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def from_config(model_config, num_classes: int) -> CNN:
  """Builds the CNN described by `config.model.cnn` (dropout: `config.model.dropout_rate`)."""
  c = model_config.cnn
  return CNN(num_classes=num_classes, features=tuple(c.features), kernel_size=c.kernel_size,
             dense_width=c.dense_width, activation=c.activation,
             use_dropout=model_config.dropout_rate > 0)
