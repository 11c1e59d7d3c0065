"""The fastest an epoch could run on this machine: the training matmuls' FLOPs at the measured
peak dense matmul rate, and at the rate XLA reaches on the model's own matmul shapes."""

import time

# configs/cnn.py's convolutions (3x3, SAME): name -> (image size, channels in, channels out).
CNN_CONVOLUTIONS = {'conv 28x28x1 -> 16': (28, 1, 16), 'conv 14x14x16 -> 32': (14, 16, 32)}


def training_flops_per_example(hidden_sizes, input_size: int = 784, classes: int = 10) -> int:
  """Matmul FLOPs of one training example: forward, weight gradients, and input gradients of
  every layer but the first (nothing needs the gradient with respect to the pixels)."""
  sizes = [input_size, *hidden_sizes, classes]
  layers = list(zip(sizes[:-1], sizes[1:]))
  return sum(2 * fan_in * fan_out * (3 if i else 2) for i, (fan_in, fan_out) in enumerate(layers))


def measure_matmul_gflops(sizes=(512, 1024, 2048), seconds_per_size: float = 1.0,
                          rounds: int = 3) -> float:
  """This machine's best float32 dense matmul rate through XLA, in GFLOP/s: the best of `rounds`
  passes over `sizes` (a busy moment must not lower the roofline)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  matmul = jax.jit(jnp.matmul)
  best = 0.0
  for _ in range(rounds):
    for n in sizes:
      a = jnp.ones((n, n), jnp.float32)
      matmul(a, a).block_until_ready()
      repeats, start = 0, time.perf_counter()
      while time.perf_counter() - start < seconds_per_size:
        matmul(a, a).block_until_ready()
        repeats += 1
      best = max(best, 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9)
  return best


def measure_training_matmul_gflops(batch_size: int, hidden_sizes=(128,),
                                   seconds: float = 1.0, steps_per_call: int = 100) -> float:
  """The rate of one training step's own matmuls (forward, weight and input gradients of each
  layer, at this batch size), `steps_per_call` steps per call as an epoch's scan runs them: the
  roofline for these shapes on this machine. On CPUs, the faster of XLA's matmul kernels with and
  without its YNNPACK fusions."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mlp_mnist.devices import compilation
  sizes = [784, *hidden_sizes, 10]
  weights = [jnp.ones((a, b), jnp.float32) for a, b in zip(sizes[:-1], sizes[1:])]
  activations = [jnp.ones((batch_size, a), jnp.float32) for a in sizes[:-1]]

  def step_matmuls(weights, activations):
    def step(carry, _):
      weights, activations = carry
      new_weights, new_activations = [], list(activations)
      for i, w in enumerate(weights):
        x = activations[i]
        h = x @ w  # Forward; it also stands in for the gradient coming back (same shape).
        new_weights.append(w - 1e-30 * (x.T @ h))  # Weight gradient.
        if i:
          new_activations[i] = x + 1e-30 * (h @ w.T)  # Input gradient.
      # Each step depends on the one before: none is hoisted out of the loop or skipped.
      return (new_weights, new_activations), None
    return jax.lax.scan(step, (weights, activations), None, length=steps_per_call)[0]

  lowered = jax.jit(step_matmuls).lower(weights, activations)
  programs = [lowered.compile()]
  if jax.default_backend() == 'cpu':
    programs.append(compilation.compile_with_options(lowered, compilation.CPU_WITHOUT_YNN))
  best = 0.0
  for program in programs:
    jax.block_until_ready(program(weights, activations))
    repeats, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
      jax.block_until_ready(program(weights, activations))
      repeats += steps_per_call
    elapsed = time.perf_counter() - start
    best = max(best, training_flops_per_example(hidden_sizes) * batch_size * repeats / elapsed / 1e9)
  return best


def conv_training_flops(size: int, channels: int, features: int, kernel: int = 3) -> int:
  """Matmul FLOPs of one example through a SAME convolution, forward and backward (the input's
  gradient only where the input is not the pixels, i.e. more than one channel)."""
  return 2 * size * size * kernel * kernel * channels * features * (3 if channels > 1 else 2)


def cnn_training_flops_per_example(dense_width: int = 128, classes: int = 10) -> int:
  """configs/cnn.py's training FLOPs per example: the convolutions and both dense layers."""
  convs = sum(conv_training_flops(*shape) for shape in CNN_CONVOLUTIONS.values())
  flattened = 7 * 7 * 32
  return convs + 2 * 3 * (flattened * dense_width + dense_width * classes)


def measure_cnn_layer_gflops(batch_size: int, seconds: float = 1.0,
                             steps_per_call: int = 20) -> dict[str, float]:
  """GFLOP/s of each of configs/cnn.py's convolutions, forward and backward, as mlp_mnist's CPU
  path runs them (`models.layers`), in a scan as an epoch runs them and compiled as the training
  program is (`compilation.compile_program`). The output's gradient is a random array scaled by
  a number that changes every step, and the forward's value feeds the next step: a plain sum's
  constant gradient let XLA hoist the first convolution's kernel gradient out of the loop and
  drop its forward (1,073 GFLOP/s "measured", several times the matmul peak). The rates are
  lower bounds: each step also multiplies and sums the output once, which for the first layer
  (one input channel, few FLOPs per output) costs about as much as the convolution."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mlp_mnist.devices import compilation  # pylint: disable=g-import-not-at-top
  from mlp_mnist.models import layers  # pylint: disable=g-import-not-at-top
  rates = {}
  for name, (size, channels, features) in CNN_CONVOLUTIONS.items():
    images = jnp.ones((batch_size, size, size, channels), jnp.float32)
    kernel = jnp.ones((3, 3, channels, features), jnp.float32)
    grad_out = jax.random.normal(jax.random.PRNGKey(0), (batch_size, size, size, features))
    argnums = (0, 1) if channels > 1 else (1,)

    def steps(images, kernel, grad_out):
      def step(carry, _):
        images, kernel = carry
        scale = 1 + 1e-30 * kernel[0, 0, 0, 0]
        def loss(x, k):
          return jnp.sum(scale * grad_out * layers.conv_general_dilated(
              x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
        value, grads = jax.value_and_grad(loss, argnums)(images, kernel)
        # Each step depends on the one before: none is hoisted out of the loop or skipped.
        kernel = kernel - 1e-30 * (grads[-1] + value)
        if channels > 1:
          images = images - 1e-30 * grads[0]
        return (images, kernel), None
      return jax.lax.scan(step, (images, kernel), None, length=steps_per_call)[0]

    program = compilation.compile_program(jax.jit(steps).lower(images, kernel, grad_out),
                                          jax.default_backend(), batch_size)
    jax.block_until_ready(program(images, kernel, grad_out))
    repeats, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
      jax.block_until_ready(program(images, kernel, grad_out))
      repeats += steps_per_call
    flops = conv_training_flops(size, channels, features) * batch_size * repeats
    rates[name] = flops / (time.perf_counter() - start) / 1e9
  return rates
