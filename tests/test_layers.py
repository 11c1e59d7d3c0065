"""The convolutional building blocks: the CPU convolution's values and gradients equal `lax`'s, the
fused block's equal its three layers', the compiled CPU epoch holds only canonical convolutions, and
other platforms keep `lax`'s."""

import re

import flax.linen as nn
import jax
from jax import export
import jax.numpy as jnp
import numpy as np
import pytest

from mlp_mnist import steps
from mlp_mnist.models import cnn
from mlp_mnist.models import layers
from mlp_mnist.models import mlp

from test_extending import _tiny_cnn

_NHWC = ('NHWC', 'HWIO', 'NHWC')


@pytest.mark.parametrize('image_shape,kernel_shape,padding,strides,dilation', [
    ((3, 28, 28, 1), (3, 3, 1, 4), 'SAME', (1, 1), (1, 1)),
    ((2, 9, 7, 3), (4, 4, 3, 5), 'SAME', (1, 1), (1, 1)),  # An even kernel: SAME pads unevenly.
    ((2, 8, 8, 2), (5, 3, 2, 3), ((1, 2), (0, 2)), (1, 1), (1, 1)),
    ((2, 9, 8, 2), (3, 3, 2, 3), 'VALID', (1, 1), (1, 1)),
    ((2, 9, 8, 2), (3, 2, 2, 3), 'SAME', (2, 3), (1, 1)),  # Odd and even sizes, strided.
    ((2, 11, 10, 2), (3, 3, 2, 4), ((3, 0), (2, 4)), (2, 1), (2, 3)),  # Dilated kernel.
])
def test_convolution_and_its_gradients_equal_lax(image_shape, kernel_shape, padding, strides,
                                                 dilation):
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  images = jax.random.normal(keys[0], image_shape)
  kernel = jax.random.normal(keys[1], kernel_shape)

  def conv(fn):
    return jax.jit(lambda x, k: fn(x, k, strides, padding, rhs_dilation=dilation,
                                   dimension_numbers=_NHWC, precision='highest'))

  want, want_vjp = jax.vjp(conv(jax.lax.conv_general_dilated), images, kernel)
  got, got_vjp = jax.vjp(conv(layers.conv_general_dilated), images, kernel)
  grad_out = jax.random.normal(keys[2], want.shape)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for g, w in zip(got_vjp(grad_out), want_vjp(grad_out)):
    assert g.shape == w.shape
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_kernel_gradient_summed_over_batch_chunks_equals_lax(monkeypatch):
  """Chunks of two examples over a batch of five (the last chunk shorter)."""
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  images = jax.random.normal(keys[0], (5, 6, 7, 3))
  kernel = jax.random.normal(keys[1], (3, 3, 3, 4))
  grad_out = jax.random.normal(keys[2], (5, 6, 7, 4))
  monkeypatch.setattr(layers, '_GRADIENT_CHUNK_BYTES', 2 * grad_out[0].nbytes)
  pads = ((1, 1), (1, 1))
  conv = lambda fn: jax.jit(lambda x, k: fn(x, k, pads))
  _, got_vjp = jax.vjp(conv(layers.conv_nhwc), images, kernel)
  _, want_vjp = jax.vjp(conv(lambda x, k, p: jax.lax.conv_general_dilated(
      x, k, (1, 1), p, dimension_numbers=_NHWC, precision='highest')), images, kernel)
  jaxpr = str(jax.make_jaxpr(got_vjp)(grad_out))
  assert jaxpr.count('conv_general_dilated') == 1 + 3  # The images' gradient; three chunks.
  for got, want in zip(got_vjp(grad_out), want_vjp(grad_out)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _parameters_equal_to(plain, modules, images):
  """`plain`'s initial parameters, once each of `modules` is checked to initialize the same."""
  params = plain.init(jax.random.PRNGKey(1), images)
  for module in modules:
    got = module.init(jax.random.PRNGKey(1), images)
    assert jax.tree.structure(got) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params)):
      np.testing.assert_array_equal(a, b)
  return params


def test_conv_module_equals_flax_conv():
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 5, 3))
  fast, plain = layers.Conv(4, (3, 3)), nn.Conv(4, (3, 3))
  params = _parameters_equal_to(plain, [fast], images)
  np.testing.assert_allclose(fast.apply(params, images), plain.apply(params, images),
                             rtol=1e-5, atol=1e-5)


def test_other_layouts_and_grouped_convolutions_fall_back_to_lax():
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6, 6))  # NCHW
  kernel = jax.random.normal(jax.random.PRNGKey(1), (4, 2, 3, 3))  # OIHW, two groups.
  args = ((1, 1), 'SAME')
  kwargs = dict(dimension_numbers=('NCHW', 'OIHW', 'NCHW'), feature_group_count=2)
  assert 'platform_index' not in str(jax.make_jaxpr(
      lambda x, k: layers.conv_general_dilated(x, k, *args, **kwargs))(images, kernel))
  np.testing.assert_array_equal(layers.conv_general_dilated(images, kernel, *args, **kwargs),
                                jax.lax.conv_general_dilated(images, kernel, *args, **kwargs))


@pytest.mark.parametrize('shape,dtype', [((2, 7, 6, 3), jnp.float32),  # Odd rows or columns
                                         ((3, 8, 9, 2), jnp.float32),  # are dropped.
                                         ((2, 6, 6, 3), jnp.bfloat16)])
def test_max_pool_and_its_gradient_equal_flax_max_pool(shape, dtype):
  # Small integers: many windows hold tied maxima, whose gradient goes to the first (row-major),
  # as flax's (XLA's select-and-scatter) and TensorFlow's do.
  x = jax.random.randint(jax.random.PRNGKey(0), shape, -2, 3).astype(dtype)
  weights = jax.random.normal(jax.random.PRNGKey(1), (shape[0], shape[1] // 2, shape[2] // 2,
                                                      shape[3]), dtype)
  flax_pool = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')
  np.testing.assert_array_equal(layers.max_pool_2x2(x), flax_pool(x))
  gradient = lambda pool: jax.grad(lambda x: jnp.sum(pool(x) * weights))(x)
  np.testing.assert_array_equal(gradient(layers.max_pool_2x2), gradient(flax_pool))
  assert np.count_nonzero(gradient(layers.max_pool_2x2)) == weights.size  # One per window.
  # The CPU path's gradient is written out, not the select-and-scatter of flax's it is checked
  # against; its forward is one reduce-window.
  cpu = jax.jit(jax.grad(lambda x: jnp.sum(layers.max_pool_2x2(x) * weights))).lower(x)
  assert 'select_and_scatter' not in cpu.as_text()
  assert cpu.as_text().count('stablehlo.reduce_window') == 1


def _cnn_epoch(config):
  state = steps.create_train_state(_tiny_cnn(config), jax.random.PRNGKey(0), 2, (28, 28), 10)
  images, labels = np.zeros((8, 28, 28), np.uint8), np.zeros((8,), np.int32)
  return jax.jit(steps.train_epoch), (state, images, labels, np.arange(8).reshape(2, 4))


def test_cpu_epoch_convolutions_are_canonical_and_accelerators_keep_lax(config, monkeypatch):
  """On CPUs every convolution of the CNN's scanned epoch is NHWC x HWIO (XLA's CPU backend runs
  the others as plain loops inside a scan, 9-13x slower); lowered for a GPU, it holds `lax`'s."""
  epoch, args = _cnn_epoch(config)

  def cpu_layouts():
    return re.findall(r'convolution\(.*dim_labels=([^,]+)', epoch.lower(*args).compile().as_text())

  # The second block's forward and gradients; the first block (one channel) is a matrix multiply.
  assert len(cpu_layouts()) == 3
  assert set(cpu_layouts()) == {'b01f_01io->b01f'}
  gpu = export.export(epoch, platforms=['cuda'])(*args).mlir_module()
  assert len(re.findall(r'stablehlo.convolution', gpu)) == 5  # Two forward, three gradients.
  # The pooling is XLA's too: a reduce-window forward and a select-and-scatter gradient per block.
  assert len(re.findall(r'stablehlo.reduce_window', gpu)) == 2
  assert len(re.findall(r'stablehlo.select_and_scatter', gpu)) == 2
  # On CPUs: one reduce-window (the second block's forward pooling), its gradient written out.
  cpu = epoch.lower(*args).as_text()
  assert cpu.count('stablehlo.reduce_window') == 1 and 'select_and_scatter' not in cpu
  monkeypatch.setattr(layers, 'conv_nhwc', lambda x, k, pads, precision=None: (
      jax.lax.conv_general_dilated(x, k, (1, 1), pads, dimension_numbers=_NHWC)))
  jax.clear_caches()  # The traced epoch is cached by function and arguments.
  assert set(cpu_layouts()) != {'b01f_01io->b01f'}  # The check can fail.


def _three_layers(images, kernel, bias, activation):
  """What `layers.conv_act_pool` fuses, as three layers: `lax`'s convolution, the activation,
  `max_pool_2x2`."""
  return layers.max_pool_2x2(activation(jax.lax.conv_general_dilated(
      images, kernel, (1, 1), 'SAME', dimension_numbers=_NHWC, precision='highest') + bias))


@pytest.mark.parametrize('image_shape,kernel_shape,activation', [
    ((3, 28, 28, 1), (3, 3, 1, 16), 'relu'),  # configs/cnn.py's first block.
    ((2, 9, 7, 3), (3, 3, 3, 5), 'gelu'),  # Odd sizes (the last row dropped); not monotone.
    ((2, 8, 9, 2), (4, 2, 2, 3), 'tanh'),  # An even kernel: SAME pads unevenly.
    ((2, 7, 6, 1), (5, 5, 1, 4), 'relu'),
    ((2, 6, 6, 4), (3, 3, 4, 3), 'relu'),  # A wide window: the three layers.
])
@pytest.mark.parametrize('chunked', [False, True])  # True: the kernel's gradient summed per example.
def test_conv_act_pool_and_its_gradients_equal_the_three_layers(image_shape, kernel_shape,
                                                                activation, chunked, monkeypatch):
  # Small integers: pre-activations tie within windows (and relu's are often zero), so the
  # first-maximum rule decides where gradients go, and the values are exact.
  if chunked:
    monkeypatch.setattr(layers, '_GRADIENT_CHUNK_BYTES', 1)
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  images = jax.random.randint(keys[0], image_shape, -2, 3).astype(jnp.float32)
  kernel = jax.random.randint(keys[1], kernel_shape, -1, 2).astype(jnp.float32)
  bias = jax.random.randint(keys[2], kernel_shape[-1:], -1, 2).astype(jnp.float32)
  act = mlp.ACTIVATIONS[activation]
  fused = jax.jit(lambda x, k, b: layers.conv_act_pool(x, k, b, act))
  layered = jax.jit(lambda x, k, b: _three_layers(x, k, b, act))
  window = (kernel_shape[0] + 1) * (kernel_shape[1] + 1) * kernel_shape[2]
  assert ('_window_conv_act_pool' in str(jax.make_jaxpr(fused)(images, kernel, bias))) == (
      window <= layers.MAX_FUSED_WINDOW)
  np.testing.assert_allclose(fused(images, kernel, bias), layered(images, kernel, bias),
                             rtol=1e-6, atol=1e-6)
  weights = jax.random.normal(keys[3], layered(images, kernel, bias).shape)
  gradients = lambda fn: jax.grad(lambda *a: jnp.sum(fn(*a) * weights), (0, 1, 2))(
      images, kernel, bias)
  for got, want in zip(gradients(fused), gradients(layered)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize('kernel_shape', [(3, 3, 1, 4), (3, 3, 4, 3)])  # Fused; three layers.
def test_conv_act_pool_vectorized_over_trials_equals_each_trial(kernel_shape):
  """As a vectorized sweep runs it: parameters stacked along a trials axis under `vmap`."""
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  images = jax.random.normal(keys[0], (2, 8, 8, kernel_shape[2]))
  kernels = jax.random.normal(keys[1], (3, *kernel_shape))
  biases = jax.random.normal(keys[2], (3, kernel_shape[-1]))
  loss = lambda k, b: jnp.sum(layers.conv_act_pool(images, k, b, nn.relu) ** 2)
  values, (kernel_grads, bias_grads) = jax.jit(jax.vmap(jax.value_and_grad(loss, (0, 1))))(
      kernels, biases)
  for trial in range(3):
    value, (kernel_grad, bias_grad) = jax.value_and_grad(loss, (0, 1))(kernels[trial],
                                                                        biases[trial])
    # Sums of terms up to hundreds: rounding is relative to the largest (an element of 0.48
    # differed by 2.8e-5, a 6e-8 part of the largest, on a 2-core AMD EPYC).
    np.testing.assert_allclose(values[trial], value, rtol=1e-5)
    np.testing.assert_allclose(kernel_grads[trial], kernel_grad, rtol=1e-5,
                               atol=1e-6 * np.abs(kernel_grad).max())
    np.testing.assert_allclose(bias_grads[trial], bias_grad, rtol=1e-5,
                               atol=1e-6 * np.abs(bias_grad).max())


def test_conv_act_pool_propagates_nans_as_the_three_layers_do():
  images = jnp.zeros((1, 8, 8, 1)).at[0, 3, 4, 0].set(jnp.nan)
  kernel, bias = jnp.ones((3, 3, 1, 2)), jnp.zeros(2)
  fused = layers.conv_act_pool(images, kernel, bias, nn.relu)
  layered = _three_layers(images, kernel, bias, nn.relu)
  assert '_window_conv_act_pool' in str(jax.make_jaxpr(
      lambda x: layers.conv_act_pool(x, kernel, bias, nn.relu))(images))
  # The NaN reaches every window whose field holds it (3x3 pixels, 2x2 windows), in any position.
  assert 0 < np.isnan(layered).sum() < layered.size
  np.testing.assert_array_equal(fused, layered)


def test_fused_blocks_images_gradient_is_canonical_inside_a_scan(monkeypatch):
  """A narrow block that is not first (2 channels, a window of 32) passes its images' gradient
  through a canonical convolution inside an epoch's scan, where `lax`'s would be in another
  layout."""
  images, kernel, bias = jnp.ones((4, 8, 8, 2)), jnp.ones((3, 3, 2, 4)), jnp.zeros(4)
  images_gradient = jax.grad(lambda x: jnp.sum(layers.conv_act_pool(x, kernel, bias, nn.relu)))

  def scanned_layouts():
    scanned = lambda x: jax.lax.scan(lambda total, _: (total + images_gradient(x), None),
                                     jnp.zeros_like(x), None, length=2)[0]
    compiled = jax.jit(scanned).lower(images).compile().as_text()
    return re.findall(r'convolution\(.*dim_labels=([^,]+)', compiled)

  assert scanned_layouts() == ['b01f_01io->b01f']
  monkeypatch.setattr(layers, 'conv_nhwc', lambda x, k, pads, precision=None: (
      jax.lax.conv_general_dilated(x, k, (1, 1), pads, dimension_numbers=_NHWC)))
  assert scanned_layouts() != ['b01f_01io->b01f']  # The check can fail.


def test_conv_pool_module_has_flax_convs_parameters():
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  block, plain = layers.ConvPool(4, (3, 3)), nn.Conv(4, (3, 3))
  # Also with an int kernel size k, meaning (k, k) (`nn.Conv(4, 3)` would be one-dimensional).
  params = _parameters_equal_to(plain, [block, layers.ConvPool(4, 3)], images)
  np.testing.assert_allclose(block.apply(params, images),
                             layers.max_pool_2x2(nn.relu(plain.apply(params, images))),
                             rtol=1e-5, atol=1e-5)


def test_cnn_parameters_keep_their_names():
  """Each block's parameters stay under `Conv_i` ('kernel', 'bias'), as when the CNN held `Conv`
  layers, so checkpoints written before `ConvPool` restore."""
  params = cnn.CNN(features=(4, 8)).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28)))['params']
  assert {name: sorted(p) for name, p in params.items()} == {
      'Conv_0': ['bias', 'kernel'], 'Conv_1': ['bias', 'kernel'],
      'Dense_0': ['bias', 'kernel'], 'Dense_1': ['bias', 'kernel']}
