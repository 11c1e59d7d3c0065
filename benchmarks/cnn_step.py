"""The CNN's training step on this machine, without data loading or evaluation: configs/cnn.py's
scanned epoch (`steps.train_epoch`, the state from `steps.create_train_state`: dropout, Adam's
schedule and the metrics included) over random images at batch 128, compiled as training compiles
it (`compilation.compile_program`), timed over repeated calls.

    python -m benchmarks.cnn_step                      # configs/cnn.py's network
    python -m benchmarks.cnn_step --part=first_block   # its first block (+ the dense layers) alone,
                                                       # as `ConvPool` and as the three layers
    python -m benchmarks.cnn_step --part=flax_layers   # the network with `layers.ConvPool`, and
                                                       # with flax.linen's Conv and max_pool (the
                                                       # same on accelerators: the GPU check)

To compare two versions of the code, run it alternately from two checkouts (`git worktree add`);
docs/benchmarks.md lists what was measured so.
"""

import contextlib
import time
from typing import Any, Callable

from absl import app
from absl import flags
import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mlp_mnist import config_files
from mlp_mnist import steps
from mlp_mnist.devices import compilation
from mlp_mnist.models import layers

_PART = flags.DEFINE_enum('part', 'cnn', ['cnn', 'first_block', 'flax_layers'], 'What to time.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Steps in the scanned program.')
_CALLS = flags.DEFINE_integer('calls', 9, 'Calls of the program (after one to warm up).')


def cnn_config(features: tuple[int, ...] = (16, 32)) -> ml_collections.ConfigDict:
  """configs/cnn.py with the convolutional blocks' `features`."""
  config = config_files.shipped_config('cnn')
  config.model.cnn.features = features
  return config


@contextlib.contextmanager
def blocks_as_three_layers():
  """Every `ConvPool` runs as Conv -> activation -> `max_pool_2x2` in programs traced inside."""
  fused_window = layers.MAX_FUSED_WINDOW
  layers.MAX_FUSED_WINDOW = 0
  jax.clear_caches()  # Traces are cached by function and arguments, the model among them.
  try:
    yield
  finally:
    layers.MAX_FUSED_WINDOW = fused_window
    jax.clear_caches()


class FlaxConvPool(nn.Module):
  """`layers.ConvPool` as a flax.linen user writes it: `nn.Conv`, the activation, `nn.max_pool`."""

  features: int
  kernel_size: tuple[int, int] = (3, 3)
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  kernel_init: Any = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, self.kernel_size, padding='SAME', kernel_init=self.kernel_init)(
        images)
    return nn.max_pool(self.activation(x), (2, 2), (2, 2))


@contextlib.contextmanager
def blocks_as_flax_layers():
  """Every `ConvPool` built inside is a `FlaxConvPool`."""
  conv_pool = layers.ConvPool
  layers.ConvPool = FlaxConvPool
  jax.clear_caches()
  try:
    yield
  finally:
    layers.ConvPool = conv_pool
    jax.clear_caches()


def scanned_epoch(config: ml_collections.ConfigDict, steps_per_call: int):
  """The compiled training epoch of `steps_per_call` steps of `config` and its arguments."""
  batch = config.batch_size
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (steps_per_call * batch, 28, 28), np.uint8)
  labels = rng.integers(0, 10, (steps_per_call * batch,), np.int32)
  state = steps.create_train_state(config, jax.random.PRNGKey(0), steps_per_call, (28, 28), 10)
  args = (state, images, labels, np.arange(steps_per_call * batch).reshape(steps_per_call, batch))
  lowered = jax.jit(steps.train_epoch).lower(*args)
  return compilation.compile_program(lowered, jax.default_backend(), batch), args


def time_steps(config: ml_collections.ConfigDict, steps_per_call: int,
               calls: int) -> tuple[float, float]:
  """(best, median) seconds a step over `calls` calls of the scanned epoch."""
  program, args = scanned_epoch(config, steps_per_call)
  jax.block_until_ready(program(*args))
  seconds = []
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(program(*args))
    seconds.append((time.perf_counter() - start) / steps_per_call)
  seconds.sort()
  return seconds[0], seconds[len(seconds) // 2]


def main(argv):
  del argv
  if _PART.value == 'cnn':
    variants = {'configs/cnn.py network': (cnn_config(), contextlib.nullcontext)}
  elif _PART.value == 'flax_layers':
    variants = {'configs/cnn.py network, layers.ConvPool': (cnn_config(), contextlib.nullcontext),
                'configs/cnn.py network, flax.linen Conv and max_pool': (cnn_config(),
                                                                         blocks_as_flax_layers)}
  else:
    variants = {'first block, ConvPool': (cnn_config((16,)), contextlib.nullcontext),
                'first block, three layers': (cnn_config((16,)), blocks_as_three_layers)}
  for name, (config, tracing) in variants.items():
    with tracing():
      best, median = time_steps(config, _STEPS.value, _CALLS.value)
    print(f'{name}: {best * 1e3:.2f} ms a step (best), {median * 1e3:.2f} (median), batch '
          f'{config.batch_size}, {jax.default_backend()}')


if __name__ == '__main__':
  app.run(main)
