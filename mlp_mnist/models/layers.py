"""Building blocks for convolutional models that train fast on CPUs: `Conv` (flax's `nn.Conv` with
the convolution below), `max_pool_2x2`, and `ConvPool` (a block of both with an activation between,
fused where its input has few channels). A researcher's own model gets the fast path by using them.

On CPUs, `conv_general_dilated` takes a stride-1 2-D NHWC x HWIO convolution through `conv_nhwc`,
whose gradient is spelled in that (canonical) layout: XLA's CPU backend hands a convolution to its
fast kernels only in that layout, and inside the `lax.scan` of an epoch it leaves `lax`'s own
gradient convolutions in other layouts, run as plain loops (configs/cnn.py: 250 against 28 ms a
step, 2-core Xeon). Other strides and kernel dilations run as their patches (shifted slices of the
padded images, concatenated along the channels) times the kernel as one matrix. Measured on the
same machine, idle, one epoch of configs/cnn.py inside `scripts/train.py`: 5.7-5.8 s of training
with `conv_nhwc` against 6.2-6.3 s with patches times a matrix for every convolution (which ran a
lone step faster, 12 against 22-24 ms, but not the scanned epoch), and evaluation 0.5 against
0.8-0.9 s. On every other platform the program holds `lax`'s convolution and `nn.max_pool`'s
reduce-window, as XLA does by default: `lax.platform_dependent` chooses when the program is lowered.
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None,
                         preferred_element_type=None):
  """`lax.conv_general_dilated`; on CPUs, a 2-D NHWC x HWIO convolution without input dilation or
  feature groups runs through `conv_nhwc` (stride 1) or as patches times a matrix (the others)."""
  options = dict(window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
                 rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                 feature_group_count=feature_group_count, precision=precision,
                 preferred_element_type=preferred_element_type)
  if not _as_patches_matmul(lhs, rhs, **options):
    return lax.conv_general_dilated(lhs, rhs, **options)
  pads = tuple(map(tuple, lax.padtype_to_pads(
      lhs.shape[1:3], _dilated_window(rhs, rhs_dilation), window_strides, padding)
                        if isinstance(padding, str) else padding))
  plain = (tuple(window_strides) == (1, 1) and all(d == 1 for d in rhs_dilation or ())
           and preferred_element_type is None
           and all(lo <= k - 1 and hi <= k - 1 for (lo, hi), k in zip(pads, rhs.shape)))
  if plain:
    cpu = lambda x, k: conv_nhwc(x, k, pads, precision)
  else:
    cpu = lambda x, k: conv_as_matmul(x, k, tuple(window_strides), pads,
                                      tuple(rhs_dilation or (1, 1)), precision,
                                      preferred_element_type)
  return lax.platform_dependent(
      lhs, rhs, cpu=cpu, default=lambda x, k: lax.conv_general_dilated(x, k, **options))


# Kernel gradients (sums over the batch) are summed over chunks of the batch whose per-example
# operand takes at most this many bytes together: half a core's L2 cache here. The whole CNN step
# at batch 128 (a 2-core Xeon, 2 MB L2 per core; docs/benchmarks.md), for configs/cnn.py's second
# convolution (its output gradient, 25 KB an example): 7.60 ms in one chunk; 7.23 ms in chunks of
# 10 examples, 6.82-6.85 of 16, 6.91 of 20, 6.76 of 32, 6.78-6.79 of 41 (this value), 7.05 of 83.
# Then for the first block's window multiply (its product's gradient, 50 KB an example): 6.73 ms
# in one chunk, 6.51 in chunks of 16, 6.47 of 32, 6.81 of 64.
_GRADIENT_CHUNK_BYTES = 1 << 20


def _batch_chunks(batch: int, bytes_per_example: int) -> list[slice]:
  """Consecutive slices of a batch, each of at most `_GRADIENT_CHUNK_BYTES` (and one example)."""
  size = max(1, _GRADIENT_CHUNK_BYTES // bytes_per_example)
  return [slice(start, min(start + size, batch)) for start in range(0, batch, size)]


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
  # grad_out[b, h, w, o]: a convolution with the channels as the batch and the batch as channels,
  # summed over chunks of the batch whose output gradient fits in a core's L2 cache.
  grad_kernel = 0
  for part in _batch_chunks(images.shape[0], grad_out[0].size * grad_out.dtype.itemsize):
    channels_first = lax.optimization_barrier(images[part].transpose(3, 1, 2, 0))
    grads_as_kernel = lax.optimization_barrier(grad_out[part].transpose(1, 2, 0, 3))
    grad_kernel = grad_kernel + lax.conv_general_dilated(
        channels_first, grads_as_kernel, (1, 1), pads, dimension_numbers=_NHWC,
        precision=precision)
  return grad_images, grad_kernel.transpose(1, 2, 0, 3)


conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


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
  """2x2 max-pooling with stride 2 of NHWC `x` (an odd last row or column is dropped); the
  gradient of each window goes to its first maximum (row-major), as flax's `nn.max_pool` does.

  On CPUs, `nn.max_pool`'s forward (XLA's reduce-window) with that gradient written out (from the
  four strided slices of each window) in place of its own: there the gradient of a reduce-window
  is a select-and-scatter that made a training step of configs/cnn.py three times slower, and
  autodiff's gradient of a reshape-and-max (which also splits a window's gradient among tied
  maxima) took 2.1 ms a step against 0.7 ms for this one (28x28x16 at batch 128, one 2-core Xeon;
  docs/benchmarks.md). The forward is the reduce-window, not the maximum of the four slices:
  fused with a flatten after it (a CNN's dense head), the slices' fusion ran 0.47 against 0.06 ms
  (128x14x14x32). On every other platform, `nn.max_pool` (XLA's reduce-window), as XLA does by
  default.
  """
  b, h, w, c = x.shape
  return lax.platform_dependent(
      x[:, :h // 2 * 2, :w // 2 * 2], cpu=_max_pool_even_2x2, default=_flax_max_pool_2x2)


def _flax_max_pool_2x2(x):
  return nn.max_pool(x, (2, 2), strides=(2, 2))


def _window_corners(x):
  return [x[:, i::2, j::2] for i in (0, 1) for j in (0, 1)]


@jax.custom_vjp
def _max_pool_even_2x2(x):
  return _flax_max_pool_2x2(x)  # XLA's reduce-window; the gradient below replaces its own.


def _max_pool_fwd(x):
  pooled = _max_pool_even_2x2(x)
  return pooled, (x, pooled)


def _max_pool_bwd(residuals, grad_pooled):
  x, pooled = residuals
  grads, taken = [], jnp.zeros(pooled.shape, bool)
  for corner in _window_corners(x):
    first_max = (corner == pooled) & ~taken
    taken = taken | first_max
    grads.append(jnp.where(first_max, grad_pooled, jnp.zeros_like(grad_pooled)))
  return (_full_resolution(jnp.stack(grads, 3), x.shape[1:3]),)


def _full_resolution(by_position, size):
  """[b, h/2, w/2, 4, c] (a 2x2 window's values, row-major) -> [b, h, w, c] for `size` (h, w); an
  odd last row or column (outside every window) is zero."""
  b, rows, cols, _, c = by_position.shape
  interleaved = by_position.reshape(b, rows, cols, 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(
      b, 2 * rows, 2 * cols, c)
  return jnp.pad(interleaved, ((0, 0), (0, size[0] - 2 * rows), (0, size[1] - 2 * cols), (0, 0)))


_max_pool_even_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


# A block's window (its 2x2 pooling window's receptive field, over all input channels) at most this
# wide runs as one matrix multiply on CPUs. Measured (docs/benchmarks.md, a 2-core Xeon): 16 for
# configs/cnn.py's first block (3x3 kernel, one channel), 2.2 against 5.0 ms a training step for
# that block; 256 for its second (16 channels), where the multiply does 1.8x the convolution's
# FLOPs: 10.4 against 7.5 ms for the whole step, so it stays on `conv_nhwc`. 48 lets an RGB
# image's 3x3 first layer in (not measured).
MAX_FUSED_WINDOW = 48


def conv_act_pool(images: jax.Array, kernel: jax.Array, bias: jax.Array,
                  activation: Callable[[jax.Array], jax.Array]) -> jax.Array:
  """`max_pool_2x2(activation(SAME stride-1 convolution of NHWC images with the HWIO kernel +
  bias))`: the same values and gradients (ties to the first maximum).

  On CPUs, when the pooling window's receptive field over the input channels is at most
  `MAX_FUSED_WINDOW` wide (a first layer), as one matrix multiply of those fields by the kernel
  placed at the window's four positions, with the activation and the pooling in the same pass
  and the gradient written out: the full-resolution activations, the memory-bound passes over
  which dominated that block's step, are never stored. Elsewhere as the three layers.
  """
  kh, kw, channels, _ = kernel.shape
  layered = lambda x, k, b: max_pool_2x2(activation(
      conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=_NHWC) + b))
  if (kh + 1) * (kw + 1) * channels > MAX_FUSED_WINDOW or min(images.shape[1:3]) < 2:
    return layered(images, kernel, bias)
  return lax.platform_dependent(
      images, kernel, bias, cpu=lambda x, k, b: _window_conv_act_pool(x, k, b, activation),
      default=layered)


class ConvPool(nn.Module):
  """[Conv(features, kernel_size, 'SAME', stride 1) -> activation -> 2x2 max-pool] through
  `conv_act_pool`, with `nn.Conv`'s parameters ('kernel', 'bias'; the same initial values): a
  model that names it as it named the `Conv` before keeps its checkpoints."""

  features: int
  kernel_size: int | tuple[int, int] = (3, 3)
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  kernel_init: Any = nn.linear.default_kernel_init
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    size = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (*((size, size) if isinstance(size, int)
                                                      else size), images.shape[-1], self.features))
    bias = self.param('bias', self.bias_init, (self.features,))
    images, kernel, bias = nn.dtypes.promote_dtype(images, kernel, bias)
    return conv_act_pool(images, kernel, bias, self.activation)


def _same_pads(spatial_shape, kernel_shape) -> tuple[tuple[int, int], ...]:
  """(lo, hi) per spatial dimension of a SAME stride-1 convolution."""
  return tuple(map(tuple, lax.padtype_to_pads(spatial_shape, kernel_shape[:2], (1, 1), 'SAME')))


def _window_fields(images, kernel_shape):
  """[(kh+1)*(kw+1)*channels + 1, batch*(h//2)*(w//2)]: the receptive field of each 2x2 pooling
  window of the SAME convolution, row-major over (row, column, channel), then a row of ones (the
  bias's input)."""
  kh, kw = kernel_shape[:2]
  b, h, w, channels = images.shape
  pads = _same_pads((h, w), kernel_shape)
  padded = jnp.pad(images, ((0, 0), *pads, (0, 0)))
  rows, cols = h // 2, w // 2
  fields = [padded[:, i:i + 2 * rows - 1:2, j:j + 2 * cols - 1:2, c]
            for i in range(kh + 1) for j in range(kw + 1) for c in range(channels)]
  fields.append(jnp.ones_like(fields[0]))
  return jnp.stack(fields).reshape(len(fields), b * rows * cols)


def _window_kernel(kernel, bias):
  """[(kh+1)*(kw+1)*channels + 1, 4*features]: the kernel at the window's four positions
  (row-major), the bias below each."""
  features = kernel.shape[-1]
  return jnp.concatenate([jnp.concatenate([
      jnp.pad(kernel, ((i, 1 - i), (j, 1 - j), (0, 0), (0, 0))).reshape(-1, features),
      bias[None]]) for i in (0, 1) for j in (0, 1)], -1)


def _window_forward(images, kernel, bias, activation):
  """The pooled activations, which of the window's four positions gave each (the first of tied
  maxima; a NaN is the maximum, as in XLA's max) and that position's pre-activation.

  All three come from one reduction over the positions, which XLA's CPU backend stores. Written
  as elementwise choices, XLA recomputed them from the four pre-activations inside each of the
  backward pass's batch chunks (configs/cnn.py: 70 us a chunk instead of 130-150, the step
  5.62-5.67 ms instead of 5.76-5.89; docs/benchmarks.md)."""
  b, h, w, _ = images.shape
  fields = _window_fields(images, kernel.shape)
  preacts = (fields.T @ _window_kernel(kernel, bias)).reshape(b, h // 2, w // 2, 4, -1)
  acts = activation(preacts)

  def first_maximum(a, b):
    (a_value, a_position, a_preact), (b_value, b_position, b_preact) = a, b
    a_nan, b_nan = jnp.isnan(a_value), jnp.isnan(b_value)
    tied = (b_value == a_value) | (a_nan & b_nan)
    take_b = (b_value > a_value) | (b_nan & ~a_nan) | (tied & (b_position < a_position))
    return (lax.select(take_b, b_value, a_value), lax.select(take_b, b_position, a_position),
            lax.select(take_b, b_preact, a_preact))

  pooled, winner, winning_preact = lax.reduce(
      (acts, lax.broadcasted_iota(jnp.int32, acts.shape, 3), preacts),
      (jnp.array(-jnp.inf, acts.dtype), jnp.int32(4), jnp.zeros((), preacts.dtype)),
      first_maximum, (3,))
  return pooled, winner.astype(jnp.int8), winning_preact


def _at_winners(grad_preact, winner):
  """[b, h/2, w/2, position, features]: the pre-activations' gradient at each window's winner."""
  return jnp.stack([jnp.where(winner == p, grad_preact, jnp.zeros_like(grad_preact))
                    for p in range(4)], 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _window_conv_act_pool(images, kernel, bias, activation):
  return _window_forward(images, kernel, bias, activation)[0]


def _window_conv_act_pool_fwd(images, kernel, bias, activation):
  pooled, winner, winning_preact = _window_forward(images, kernel, bias, activation)
  return pooled, (images, kernel, bias, winner, winning_preact)


def _window_conv_act_pool_bwd(activation, residuals, grad_pooled):
  images, kernel, bias, winner, winning_preact = residuals
  b, h, w, _ = images.shape
  features = kernel.shape[-1]
  slope = jax.jvp(activation, (winning_preact,), (jnp.ones_like(winning_preact),))[1]
  grad_preact = grad_pooled * slope
  grad_window_kernel = 0
  for part in _batch_chunks(b, 4 * grad_preact[0].size * grad_preact.dtype.itemsize):
    grad_window_kernel = grad_window_kernel + _window_fields(images[part], kernel.shape) @ (
        _at_winners(grad_preact[part], winner[part]).reshape(-1, 4 * features))
  grad_kernel, grad_bias = jax.vjp(_window_kernel, kernel, bias)[1](grad_window_kernel)
  # The images' gradient (left out of the program when nothing asks for it, as for a first layer),
  # through `conv_nhwc`'s: `lax`'s would be in a layout XLA's CPU backend runs as loops in a scan.
  grad_conv = _full_resolution(_at_winners(grad_preact, winner), (h, w))
  pads = _same_pads((h, w), kernel.shape)
  grad_images, = jax.vjp(lambda x: conv_nhwc(x, kernel, pads), images)[1](grad_conv)
  return grad_images, grad_kernel, grad_bias


_window_conv_act_pool.defvjp(_window_conv_act_pool_fwd, _window_conv_act_pool_bwd)
