"""The CNN's training step on this machine, without data loading or evaluation: a `lax.scan` of
steps (cross-entropy, Adam) at batch 128 on random images, compiled as the training program is
(`compilation.compile_program`), timed over repeated calls.

    python -m benchmarks.cnn_step                      # configs/cnn.py's network
    python -m benchmarks.cnn_step --part=first_block   # its first block (+ the logits) alone,
                                                       # as `ConvPool` and as the three layers

To compare two versions of the code, run it alternately from two checkouts (`git worktree add`);
docs/benchmarks.md lists what was measured so.
"""

import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
from jax import lax
import optax

from mlp_mnist.devices import compilation
from mlp_mnist.models import cnn
from mlp_mnist.models import layers

_PART = flags.DEFINE_enum('part', 'cnn', ['cnn', 'first_block'], 'What to time.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Steps in the scanned program.')
_CALLS = flags.DEFINE_integer('calls', 9, 'Calls of the program (after one to warm up).')
_BATCH = 128


class FirstBlock(nn.Module):
  """configs/cnn.py's first block and a dense layer to logits: `ConvPool`, or the three layers."""

  fused: bool = True

  @nn.compact
  def __call__(self, images):
    x = images[..., None]
    if self.fused:
      x = layers.ConvPool(16, (3, 3), nn.relu)(x)
    else:
      x = layers.max_pool_2x2(nn.relu(layers.Conv(16, (3, 3), padding='SAME')(x)))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def scanned_steps(model: nn.Module, steps: int, batch: int = _BATCH):
  """The compiled program of `steps` training steps and its arguments."""
  images = jax.random.uniform(jax.random.PRNGKey(0), (steps, batch, 28, 28))
  labels = jax.random.randint(jax.random.PRNGKey(1), (steps, batch), 0, 10)
  params = model.init(jax.random.PRNGKey(2), images[0])
  optimizer = optax.adam(1e-3)

  def run(params, opt_state, images, labels):
    def step(carry, batch):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
          model.apply(p, batch[0]), batch[1]).mean())(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    return lax.scan(step, (params, opt_state), (images, labels))

  args = (params, optimizer.init(params), images, labels)
  lowered = jax.jit(run).lower(*args)
  return compilation.compile_program(lowered, jax.default_backend(), batch), args


def time_steps(model: nn.Module, steps: int, calls: int) -> tuple[float, float]:
  """(best, median) seconds a step over `calls` calls of the scanned program."""
  program, args = scanned_steps(model, steps)
  jax.block_until_ready(program(*args))
  seconds = []
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(program(*args))
    seconds.append((time.perf_counter() - start) / steps)
  seconds.sort()
  return seconds[0], seconds[len(seconds) // 2]


def main(argv):
  del argv
  if _PART.value == 'cnn':
    models = {'configs/cnn.py network': cnn.CNN(features=(16, 32))}
  else:
    models = {'first block, ConvPool': FirstBlock(fused=True),
              'first block, three layers': FirstBlock(fused=False)}
  for name, model in models.items():
    best, median = time_steps(model, _STEPS.value, _CALLS.value)
    print(f'{name}: {best * 1e3:.2f} ms a step (best), {median * 1e3:.2f} (median), batch {_BATCH}, '
          f'{jax.default_backend()}')


if __name__ == '__main__':
  app.run(main)
