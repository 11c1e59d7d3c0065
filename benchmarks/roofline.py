"""The fastest an epoch could run on this machine: the training matmuls' FLOPs at the measured
peak dense matmul rate, and at the rate XLA reaches on the model's own matmul shapes."""

import time


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
