"""Building blocks for convolutional models that train fast on CPUs: `Conv` (flax's `nn.Conv` with
the convolution below) and `max_pool_2x2`. A researcher's own model gets the fast path by using them.

On CPUs, `conv_general_dilated` computes a 2-D NHWC x HWIO convolution as its patches (one shifted
slice of the padded images per kernel position, concatenated along the channels) times the kernel
as one matrix: training steps run in XLA's matmul kernels, forward and backward (the gradient of a
slice is a pad, of the matmul two matmuls). Measured on a 2-core Xeon, configs/cnn.py's training
step inside the epoch's scan: 12 ms against 22-24 ms for convolutions whose gradient is spelled in
the NHWC x HWIO layout, and 1,200 ms for `lax`'s own (whose gradient's convolutions XLA's CPU
backend runs as plain loops inside a scan); whole scripts/train.py epochs on a loaded machine ran
even with the former (docs/benchmarks.md). On every other platform the program holds `lax`'s
convolution, as XLA does by default: `lax.platform_dependent` chooses when the program is lowered.
"""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None,
                         preferred_element_type=None):
  """`lax.conv_general_dilated`, as patches times a matrix on CPUs for the 2-D NHWC x HWIO
  convolutions without input dilation or feature groups (any strides, kernel dilation, padding)."""
  options = dict(window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
                 rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                 feature_group_count=feature_group_count, precision=precision,
                 preferred_element_type=preferred_element_type)
  if not _as_patches_matmul(lhs, rhs, **options):
    return lax.conv_general_dilated(lhs, rhs, **options)
  pads = (lax.padtype_to_pads(lhs.shape[1:3], _dilated_window(rhs, rhs_dilation), window_strides,
                              padding) if isinstance(padding, str) else padding)
  return lax.platform_dependent(
      lhs, rhs,
      cpu=lambda x, k: conv_as_matmul(x, k, tuple(window_strides), tuple(map(tuple, pads)),
                                      tuple(rhs_dilation or (1, 1)), precision,
                                      preferred_element_type),
      default=lambda x, k: lax.conv_general_dilated(x, k, **options))


def conv_as_matmul(images, kernel, strides, pads, kernel_dilation=(1, 1), precision=None,
                   preferred_element_type=None):
  """NHWC `images` convolved with an HWIO `kernel` as [patches] @ [kernel as a matrix]; `pads`
  (lo, hi) per spatial dimension, each >= 0. Equals `lax.conv_general_dilated`'s result."""
  kh, kw, channels, features = kernel.shape
  (sh, sw), (dh, dw) = strides, kernel_dilation
  padded = jnp.pad(images, ((0, 0), *pads, (0, 0)))
  out_h = (padded.shape[1] - (kh - 1) * dh - 1) // sh + 1
  out_w = (padded.shape[2] - (kw - 1) * dw - 1) // sw + 1
  patches = jnp.concatenate([
      padded[:, i * dh:i * dh + (out_h - 1) * sh + 1:sh, j * dw:j * dw + (out_w - 1) * sw + 1:sw]
      for i in range(kh) for j in range(kw)], axis=-1)
  return jnp.dot(patches, kernel.reshape(kh * kw * channels, features), precision=precision,
                 preferred_element_type=preferred_element_type)


def _dilated_window(rhs, rhs_dilation):
  return tuple((k - 1) * d + 1 for k, d in zip(rhs.shape[:2], rhs_dilation or (1, 1)))


def _as_patches_matmul(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                       dimension_numbers, feature_group_count, precision, preferred_element_type):
  del window_strides, rhs_dilation, precision, preferred_element_type  # All supported.
  if lhs.ndim != 4 or feature_group_count != 1 or any(d != 1 for d in lhs_dilation or ()):
    return False
  if lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != (
      lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)):
    return False
  return isinstance(padding, str) or all(lo >= 0 and hi >= 0 for lo, hi in padding)


class Conv(nn.Conv):
  """`nn.Conv` with `conv_general_dilated` above: the same parameters and results, faster on CPUs."""
  conv_general_dilated: nn.linear.ConvGeneralDilatedT | None = conv_general_dilated


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pooling with stride 2 of NHWC `x` (an odd last row or column is dropped).

  As a reshape and a max, not `nn.max_pool`: the gradient of XLA's reduce-window is a
  select-and-scatter that made a CPU training step of this model three times slower.
  """
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
