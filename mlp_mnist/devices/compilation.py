"""Compilation with the CPU options measured to be faster: the pmapped programs ahead of time
(`compile_program`), and programs that run once (`jit_for_one_call`)."""

import functools
from typing import Any, Callable, Hashable

import jax

# XLA's YNNPACK fusions on CPUs speed up large matmuls and slow down small ones. Measured on a 2-core
# Xeon, whole epochs: 32-row steps ~20% faster without them, 128 ~8%; 256 and 512 even; 1024 ~8%
# slower without.
_CPU_YNN_MIN_ROWS = 256
_YNN_FUSION_TYPES = 'xla_cpu_experimental_ynn_fusion_type'
CPU_WITHOUT_YNN = {_YNN_FUSION_TYPES: ''}
# A convolutional model's matmuls multiply batch x positions rows, and its bias gradients are large
# reductions: YNNPACK's fusions of single dots and of reductions (not its elementwise fusions, nor
# its convolutions) made configs/cnn.py's scanned step faster at every batch size measured (a
# 2-core Xeon, jax 0.10.2; docs/benchmarks.md), against no YNNPACK and its default fusions: batch
# 32: 1.95 against 2.13 and 2.35 ms; 128: 6.01 against 6.54 and 8.19; 256: 12.5 against 13.4 and
# 15.9. Its dot fusions with their operands' elementwise ops (`LIBRARY_FUSION_TYPE_DOT`) ran as fast
# but computed NaNs for relu(convolution) reshaped into a dot (jax 0.10.2 and 0.12; the program in
# tests/test_train.py).
CPU_CONV_YNN_DOTS_AND_REDUCTIONS = {
    _YNN_FUSION_TYPES: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}
# A program run once per shape gains nothing from the CPU backend's LLVM optimizations, which took
# most of its compile time: the initialization of configs/default.py's MLP compiled in 1.2-1.7 s
# with them and 0.28 s without, configs/cnn.py's in 3.3 s and 0.63 s, into programs that give the
# same bits (2-core AMD EPYC, jax 0.10.2; docs/benchmarks.md). A first run pays that compile.
CPU_RUN_ONCE = {'xla_backend_optimization_level': 0}


def compile_program(lowered, platform: str, rows: int):
  """Compiles `lowered`, whose steps multiply `rows` examples per device (per trial in a sweep).

  On CPUs, programs with convolutions take YNNPACK's fusions of single dots and of reductions;
  others with fewer than 256 rows leave out YNNPACK's fusions.
  """
  if platform != 'cpu':
    return lowered.compile()
  if 'stablehlo.convolution' in lowered.as_text():  # 2 ms for the MLP's epoch, 9 for the CNN's.
    return compile_with_options(lowered, CPU_CONV_YNN_DOTS_AND_REDUCTIONS)
  if rows < _CPU_YNN_MIN_ROWS:
    return compile_with_options(lowered, CPU_WITHOUT_YNN)
  return lowered.compile()


def jit_for_one_call(fun: Callable, **jit_kwargs) -> Callable:
  """`jax.jit(fun, **jit_kwargs)` for a function called once per shape (an initialization): on
  CPUs compiled without the backend's optimizations (`CPU_RUN_ONCE`), elsewhere and inside another
  trace (`jax.eval_shape`, an outer `jit`) as XLA does by default."""
  optimized = jax.jit(fun, **jit_kwargs)
  unoptimized = jax.jit(fun, compiler_options=CPU_RUN_ONCE, **jit_kwargs)

  @functools.wraps(fun)
  def call(*args, **kwargs):
    if jax.default_backend() != 'cpu':
      return optimized(*args, **kwargs)
    try:
      return unoptimized(*args, **kwargs)
    except ValueError:  # Inside another trace, which takes no compiler options (or fun's own
      return optimized(*args, **kwargs)  # error, which this call raises again).

  return call


class ProgramsByShape:
  """Programs compiled ahead of time (`compile_program`) for one platform, each at the first call
  of its shape: a training function's calls of each number of steps (whole epochs, calls inside
  epochs, a resumed epoch's rest), an evaluation's splits."""

  def __init__(self, platform: str):
    self.platform = platform
    self._programs = {}

  def get(self, shape: Hashable, lower: Callable[[], Any], rows: int):
    """The program for `shape`; at its first call, `lower()` (whose steps multiply `rows` examples
    per device) compiled."""
    if shape not in self._programs:
      self._programs[shape] = compile_program(lower(), self.platform, rows)
    return self._programs[shape]

  def find(self, shape: Hashable, default):
    """The program compiled for `shape`, or `default` where none was."""
    return self._programs.get(shape, default)


def compile_with_options(lowered, options: dict[str, Any]):
  """`lowered.compile(options)`; without them where this version of XLA does not know them (or
  one of their values)."""
  try:
    return lowered.compile(options)
  except jax.errors.JaxRuntimeError as e:
    if 'No such compile option' not in str(e) and 'is not a valid enum value' not in str(e):
      raise
  return lowered.compile()
